"""The bijector protocol, composition, inversion and the functional view.

A bijector is a `flax.linen` module on batches (NHWC images, or (batch, d) vectors) with three
methods:

    forward(x, context=None) -> (y, log_det)    log_det = log|det dy/dx|, shape (batch,)
    inverse(y, context=None) -> (x, log_det)    log_det = log|det dx/dy|, shape (batch,)
    log_det(x, context=None) -> log|det dy/dx|

`context` conditions the map (a conditional flow p(x | c), `jaxflows.core.context`): a float
(batch, d) array, or None. Every layer accepts it; layers that do not depend on it ignore it, and
with context=None every layer is exactly its unconditional self.

Each layer writes `forward` and `inverse` beside each other, each returning its own direction's
log-det, with the maths they share written once (Distrax's convention). Variables come from
`module.init(key, x)`, which runs `forward` and with it any data-dependent initialisation (ActNorm)
on `x`. Methods are called as `module.apply(variables, x, method="inverse")`.

Layers with parameters follow Flax's `dtype` / `param_dtype` convention: parameters are created in
`param_dtype` (float32), and everything derived from them (matrices, inverses, log-dets) is
computed in `dtype`, by default the promoted dtype of the input and the parameters, so float64
inputs give float64-exact results from float32 parameters. A map's own maths never runs below
float32 and its products run at `lax.Precision.HIGHEST`; conditioner networks have their own
`network_dtype` and `network_precision` (`jaxflows.ops.precision`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.core.backprop import check_gradient_mode, run_sequence
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.core.variables import check_variables

Array = jax.Array


def sum_except_batch(x: Array) -> Array:
    """Sum every axis but the first: per-example totals of element-wise terms."""
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def per_example(log_det: Array, x: Array) -> Array:
    """A log-det that is the same for every example of the batch `x`, shape (batch,)."""
    return jnp.broadcast_to(log_det, (x.shape[0],))


class Bijector(nn.Module):
    """Base class: a subclass implements `forward(x, context)` and `inverse(y, context)`, each
    returning the output and the log|det| of its own map (the inverse's is log|det ∂x/∂y|)."""

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        raise NotImplementedError(f"{type(self).__name__} must implement inverse")

    def log_det(self, x: Array, context: Array | None = None) -> Array:
        return self.forward(x, context)[1]

    def __call__(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self.forward(x, context)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def hashable_sequences(module: nn.Module, *fields: str) -> None:
    """Store a module's sequence fields as tuples, so the module hashes (jit and caches key on it)."""
    for field in fields:
        value = getattr(module, field)
        if value is not None and not isinstance(value, tuple):
            object.__setattr__(module, field, tuple(value))


class Chain(Bijector):
    """Composition f = f_n ∘ … ∘ f_1 of `layers` = (f_1, …, f_n).

    Forward: y = f_n(… f_1(x)), log_det = Σ_i log|det ∂f_i|. Inverse: x = f_1⁻¹(… f_n⁻¹(y)), the
    layers' inverses in reverse order, log_det = Σ_i of the inverses' log-dets.

    Attributes:
      layers: the bijectors f_1, …, f_n, in forward order (stored as a tuple, so the chain hashes).
      names: the layers' variable scopes (e.g. "actnorm", "coupling"); None: the snake-case class
        name and position ("act_norm_0").
      gradient: "standard", "remat" or "invertible" (rebuild each layer's input with its inverse in
        the backward pass; see `jaxflows.core.backprop`).
    """

    layers: Sequence[Bijector]
    names: Sequence[str] | None = None
    gradient: str = "standard"

    def __post_init__(self) -> None:
        hashable_sequences(self, "layers", "names")
        super().__post_init__()

    def setup(self):
        check_gradient_mode(self.gradient, "Chain")
        names = self.names or [f"{_snake(type(b).__name__)}_{i}" for i, b in enumerate(self.layers)]
        if len(names) != len(self.layers):
            raise InvalidArgumentError(f"Chain: {len(self.layers)} layers but {len(names)} names")
        self.layer_names = tuple(names)
        self.links = tuple(b.clone(parent=self, name=n) for b, n in zip(self.layers, names, strict=True))

    def unrolled_steps(self) -> list[tuple[str, Bijector, Any]]:
        """(name, unbound layer, variables) of every layer in forward order."""
        variables = dict(self.variables)
        return [
            (name, layer.clone(parent=None), {c: t[name] for c, t in variables.items() if name in t})
            for name, layer in zip(self.layer_names, self.layers, strict=True)
        ]

    def _run(self, x: Array, context: Array | None, inverse: bool) -> tuple[Array, Array]:
        if self.gradient == "standard" or self.is_initializing():
            total = jnp.zeros(x.shape[0], x.dtype)
            for layer in reversed(self.links) if inverse else self.links:
                x, ld = layer.inverse(x, context) if inverse else layer.forward(x, context)
                total = total + ld
            return x, total
        _, templates, variables = zip(*self.unrolled_steps(), strict=True)
        steps = [
            lambda v, h, c, step_inverse, t=t: t.apply(
                v, h, c, method="inverse" if step_inverse else "forward"
            )
            for t in templates
        ]
        return run_sequence(steps, variables, x, context, inverse, self.gradient)

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._run(x, context, inverse=False)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._run(y, context, inverse=True)


class Invert(Bijector):
    """f⁻¹ as a bijector: forward is `bijector.inverse` and inverse is `bijector.forward`.

    Attributes:
      bijector: the bijector f whose directions are swapped (its variables live in its scope).
    """

    bijector: Bijector

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self.bijector.inverse(x, context)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self.bijector.forward(y, context)


class _Directions(NamedTuple):
    forward: Callable[..., tuple[Array, Array]]
    inverse: Callable[..., tuple[Array, Array]]
    log_det: Callable[..., Array]


class Functional(_Directions):
    """Pure functions of arrays, closed over a module's variables; each takes an optional context
    (a conditional flow's labels or context array) as its second argument.

    It unpacks as the three directions, `forward, inverse, log_det = functional(...)`; a `Flow`
    also gets `log_prob(x, context=None)` and `sample(key, n, context=None, temperature=1.0)`
    (None for other modules)."""

    def __new__(
        cls,
        forward: Callable[..., tuple[Array, Array]],
        inverse: Callable[..., tuple[Array, Array]],
        log_det: Callable[..., Array],
        log_prob: Callable[..., Array] | None = None,
        sample: Callable[..., Array] | None = None,
    ) -> Functional:
        self = super().__new__(cls, forward, inverse, log_det)
        self.log_prob, self.sample = log_prob, sample
        return self


def functional(module: nn.Module, variables: Any) -> Functional:
    """Bind `module` to `variables` as plain functions usable under jit, grad, jacfwd and vmap.

    The variables are checked against the ones `module.init` creates (paths, shapes, collections,
    integer constants), as `Flow.apply` does: once per input shape and dtype. For gradients with
    respect to the parameters, rebuild the functions inside the loss:

    >>> f = functional(flow, variables)
    >>> z, ld = jax.jit(f.forward)(x)
    >>> z, ld = f.forward(x, labels)  # a conditional flow
    >>> log_p = f.log_prob(x)  # a Flow: log p(x), nats per example
    >>> x = f.sample(jax.random.key(0), 16)  # a Flow: 16 draws
    >>> loss = lambda p: -functional(flow, {**variables, "params": p}).log_prob(x).mean()
    >>> grads = jax.grad(loss)(variables["params"])
    """
    checked: set = set()

    def check(x: Array) -> None:
        signature = (jnp.shape(x), jnp.result_type(x))
        if signature not in checked and not hasattr(module, "variable_specs"):  # Flow.apply checks itself
            check_variables(module, variables, x)
        checked.add(signature)

    def method(name: str):
        def call(x, context=None):
            check(x)
            return module.apply(variables, x, context, method=name)

        return call

    if not (callable(getattr(module, "log_prob", None)) and callable(getattr(module, "sample", None))):
        return Functional(method("forward"), method("inverse"), method("log_det"))

    def sample(key: Array, n: int, context=None, temperature: float = 1.0) -> Array:
        return module.apply(variables, key, n, temperature, context, method="sample")

    return Functional(method("forward"), method("inverse"), method("log_det"), method("log_prob"), sample)
