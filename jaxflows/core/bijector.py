"""The bijector protocol, composition, inversion and the functional view.

A bijector is a `flax.linen` module on NHWC batches with three methods:

    forward(x) -> (y, log_det)    log_det = log|det dy/dx|, shape (batch,)
    inverse(y) -> (x, log_det)    log_det = log|det dx/dy|, shape (batch,)
    log_det(x) -> log|det dy/dx|

Variables come from `module.init(key, x)`, which runs `forward` and with it any data-dependent
initialisation (ActNorm) on `x`. Methods are called as `module.apply(variables, x, method="inverse")`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def sum_except_batch(x: Array) -> Array:
    """Sum every axis but the first: per-example totals of element-wise terms."""
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


class Bijector(nn.Module):
    """Base class: subclasses implement `forward` and `inverse`, or one `transform(x, inverse)`.

    `transform` is for layers whose two directions are one piece of maths with a direction flag;
    it returns the output and the log-det of the map it applied.
    """

    def transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        raise NotImplementedError(
            f"{type(self).__name__} must implement transform(x, inverse) or forward and inverse"
        )

    def forward(self, x: Array) -> tuple[Array, Array]:
        return self.transform(x, inverse=False)

    def inverse(self, y: Array) -> tuple[Array, Array]:
        return self.transform(y, inverse=True)

    def log_det(self, x: Array) -> Array:
        return self.forward(x)[1]

    def __call__(self, x: Array) -> tuple[Array, Array]:
        return self.forward(x)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Chain(Bijector):
    """Composition `layers[-1] ∘ … ∘ layers[0]`: forward runs the layers in order; log-dets add.

    `names` names the layers' variable scopes (e.g. "actnorm", "coupling"); by default the snake-case
    class name and position.
    """

    layers: Sequence[Bijector]
    names: Sequence[str] | None = None

    def setup(self):
        names = self.names or [f"{_snake(type(b).__name__)}_{i}" for i, b in enumerate(self.layers)]
        if len(names) != len(self.layers):
            raise ValueError(f"Chain: {len(self.layers)} layers but {len(names)} names")
        self.steps = tuple(b.clone(parent=self, name=n) for b, n in zip(self.layers, names, strict=True))

    def forward(self, x: Array) -> tuple[Array, Array]:
        total = jnp.zeros(x.shape[0], x.dtype)
        for layer in self.steps:
            x, ld = layer.forward(x)
            total = total + ld
        return x, total

    def inverse(self, y: Array) -> tuple[Array, Array]:
        total = jnp.zeros(y.shape[0], y.dtype)
        for layer in reversed(self.steps):
            y, ld = layer.inverse(y)
            total = total + ld
        return y, total


class Invert(Bijector):
    """Swaps directions: forward is `bijector.inverse` and inverse is `bijector.forward`."""

    bijector: Bijector

    def forward(self, x: Array) -> tuple[Array, Array]:
        return self.bijector.inverse(x)

    def inverse(self, y: Array) -> tuple[Array, Array]:
        return self.bijector.forward(y)


class Functional(NamedTuple):
    """Three pure functions of arrays, closed over a module's variables."""

    forward: Callable[[Array], tuple[Array, Array]]
    inverse: Callable[[Array], tuple[Array, Array]]
    log_det: Callable[[Array], Array]


def functional(module: nn.Module, variables: Any) -> Functional:
    """Bind `module` to `variables` as plain functions usable under jit, grad, jacfwd and vmap.

    >>> f = functional(flow, variables)
    >>> z, ld = jax.jit(f.forward)(x)
    """

    def method(name: str):
        return lambda x: module.apply(variables, x, method=name)

    return Functional(method("forward"), method("inverse"), method("log_det"))
