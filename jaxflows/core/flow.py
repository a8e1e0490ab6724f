"""A flow: a bijector from data to latent joined with a base distribution on the latent."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.context import (
    ContextShapeError,
    LabelRangeError,
    MissingContextError,
    UnexpectedContextError,
)
from jaxflows.core.errors import InputDtypeError, InvalidArgumentError, ShapeError
from jaxflows.core.objective import check_pixels, dequantize, discrete_log_prob_offset
from jaxflows.core.validation import (
    check_count,
    check_finite,
    check_nonempty,
    check_range,
    is_concrete,
)
from jaxflows.core.variables import Specs, abstract_init, check_variables

_SHAPES_CACHE = "_jaxflows_variable_specs"


class EventShapeError(ShapeError):
    """A flow's bijector does not map `event_shape` to `event_shape`."""


class Flow(Bijector):
    """A normalising flow: log p(x) = log p_base(f(x)) + log|det df/dx|; samples are f⁻¹(z), z ~ base.

    Forward: z = f(x) with f's log-det (data → latent). Inverse: x = f⁻¹(z) with f⁻¹'s log-det.
    The flow is itself a bijector (its forward is the bijector's), so every tool that takes a
    bijector takes a flow. `apply` first checks that the variables fit this flow
    (`jaxflows.core.check_variables`): variables from another model raise `UnusedVariablesError`
    or `VariablesMismatchError` instead of running silently.

    Attributes:
      bijector: f, from data to latent.
      base: the latent distribution (`log_prob`, `sample`), e.g. `StandardNormal()`.
      event_shape: the shape of one example: (height, width, channels) for images, (d,) for vectors.
      data_range: the documented domain of `log_prob`'s input (dequantised pixels lie in [0, 1));
        concrete inputs outside it are rejected, None turns the check off (unbounded data).
        "auto" (the default): [0, 1] for examples of rank ≥ 2 (images), unbounded for vectors
        (event shape (d,)); `domain` gives the resolved range.
      dequantizer: q(u | x), called as dequantizer(key, pixels, bins) -> (u, log q), for
        `discrete_log_prob`; None: uniform dequantisation.
      num_classes: N for a class-conditional flow p(x | y): every method then takes `context`,
        integer labels (batch,) in {0, …, N−1} (or a float (batch, N) of class weights, e.g.
        one-hot), which the layers receive as one-hot vectors.
      context_features: d for a flow conditioned on any context vector: `context` is a float
        (batch, d) array. At most one of `num_classes` and `context_features` is set; with
        neither the flow is unconditional and takes no context.
    """

    bijector: Bijector
    base: nn.Module
    event_shape: tuple[int, ...]
    data_range: tuple[float, float] | str | None = "auto"
    dequantizer: nn.Module | None = None
    num_classes: int | None = None
    context_features: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_classes", "context_features"):
            value = getattr(self, name)
            if value is not None:
                check_count(value, name, "Flow")
        if isinstance(self.data_range, str) and self.data_range != "auto":
            raise InvalidArgumentError(
                f'Flow: data_range must be (low, high), None (unbounded) or "auto", got {self.data_range!r}'
            )
        if self.num_classes is not None and self.context_features is not None:
            raise InvalidArgumentError(
                "Flow: set num_classes (class labels) or context_features (vectors), not both"
            )
        super().__post_init__()

    @property
    def domain(self) -> tuple[float, float] | None:
        """The range `log_prob` checks its input against (`data_range` with "auto" resolved)."""
        if isinstance(self.data_range, str):
            return (0.0, 1.0) if len(self.event_shape) >= 2 else None
        return None if self.data_range is None else tuple(self.data_range)

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None or self.context_features is not None

    @nn.nowrap
    def context_width(self) -> int | None:
        """d, the width of the context the layers receive (None: unconditional)."""
        return self.num_classes if self.num_classes is not None else self.context_features

    @nn.nowrap
    def example_context(self, batch: int) -> Array | None:
        """A valid context for `batch` examples (class 0, or zeros), None for an unconditional flow."""
        if self.num_classes is not None:
            return jnp.zeros((batch,), jnp.int32)
        if self.context_features is not None:
            return jnp.zeros((batch, self.context_features), jnp.float32)
        return None

    @nn.nowrap
    def context_array(self, context, batch: int, dtype) -> Array | None:
        """What the layers receive: labels as one-hot (batch, N), vectors as (batch, d), in `dtype`.

        Raises the named `ContextError`s: `MissingContextError` (a conditional flow without
        context), `UnexpectedContextError` (an unconditional flow given one), `ContextShapeError`
        (wrong rank, dtype, width or batch size) and `LabelRangeError` (a concrete label outside
        {0, …, N−1}; labels are not checked while traced under `jit`).
        """
        if not self.conditional:
            if context is not None:
                raise UnexpectedContextError(
                    "this flow is unconditional (built without num_classes or context_features) but was "
                    "given a context"
                )
            return None
        if context is None:
            what = f"class labels in 0…{self.num_classes - 1}" if self.num_classes else "a context array"
            raise MissingContextError(f"this flow is conditional and needs a context ({what}); got None")
        context = jnp.asarray(context)
        width = self.context_width()
        if self.num_classes is not None and jnp.issubdtype(context.dtype, jnp.integer):
            if context.ndim == 0:
                context = jnp.broadcast_to(context, (batch,))
            self._check_batch(context, batch, "labels", f"({batch},)")
            if is_concrete(context):
                labels = np.asarray(context)
                bad = labels[(labels < 0) | (labels >= self.num_classes)]
                if bad.size:
                    raise LabelRangeError(
                        f"class labels must lie in 0…{self.num_classes - 1}; got {sorted(set(bad.tolist()))}"
                    )
            return jax.nn.one_hot(context, self.num_classes, dtype=dtype)
        if not jnp.issubdtype(context.dtype, jnp.floating):
            raise ContextShapeError(
                f"expected a floating context array (batch, {width}), got {context.dtype}"
            )
        self._check_batch(context, batch, "context", f"({batch}, {width})")
        if context.ndim != 2 or context.shape[1] != width:
            raise ContextShapeError(
                f"expected a context of shape ({batch}, {width}), got {tuple(context.shape)}"
            )
        return context.astype(dtype)

    @staticmethod
    def _check_batch(context: Array, batch: int, what: str, expected: str) -> None:
        if context.ndim == 0 or context.shape[0] != batch:
            raise ContextShapeError(
                f"{what} of shape {tuple(context.shape)} do not match a batch of {batch} examples; "
                f"expected {expected}"
            )

    @nn.nowrap
    def variable_specs(self) -> Specs:
        """Path -> shape and dtype of every variable `init` creates, computed abstractly once per flow: the
        event shape fixes them, and the flow is initialised through `discrete_log_prob`, so its
        dequantizer's variables count as its own."""
        cached = self.__dict__.get(_SHAPES_CACHE)
        if cached is None:
            pixels = jax.ShapeDtypeStruct((1, *self.event_shape), jnp.int32)
            key = lambda seed: jax.random.key(seed)  # made inside the trace, never in the caller's
            context = self.example_context(1)
            init = lambda p: self.init(key(0), p, key(1), 2, context, method="discrete_log_prob")
            cached = abstract_init(init, pixels)
            object.__setattr__(self, _SHAPES_CACHE, cached)  # modules are frozen dataclasses: a private cache
        return cached

    @nn.nowrap
    def apply(self, variables, *args, **kwargs):
        """`flax.linen.Module.apply`, after checking the variables' paths and shapes against the
        ones `init` creates (at trace time under `jit`; the reference is computed once per flow)."""
        check_variables(self, variables)
        return super().apply(variables, *args, **kwargs)

    @nn.nowrap
    def _as_batch(self, x: Array, context=None) -> tuple[Array, Any, bool]:
        """One rank rule for every method: an input of rank len(event_shape) is one example (given a
        batch axis of 1 here, so `jax.vmap` over single examples works), one more axis is a batch."""
        rank, ndim = len(self.event_shape), jnp.ndim(x)
        if ndim == rank:
            return x[None], None if context is None else jnp.asarray(context)[None], True
        if ndim != rank + 1:
            raise ShapeError(
                f"expected one example of shape {tuple(self.event_shape)} or a batch (batch, "
                f"*{tuple(self.event_shape)}), got shape {tuple(jnp.shape(x))}"
            )
        return x, context, False

    def _check(self, x: Array) -> None:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise InputDtypeError(
                f"x: expected a floating dtype, got {x.dtype}; integer pixels must be dequantized first "
                "(jaxflows.dequantize, or Flow.discrete_log_prob)"
            )
        check_nonempty(x)
        check_finite(x)
        if tuple(x.shape[1:]) != tuple(self.event_shape):
            raise ShapeError(
                f"expected examples of shape {tuple(self.event_shape)}, got {tuple(x.shape[1:])}"
            )

    @nn.nowrap
    def range_hint(self) -> str:
        return (
            "; this flow's data_range is "
            f"{self.domain}: build it with data_range=None for unbounded data (e.g. Flow(..., "
            "data_range=None) or a builder's data_range=None), or rescale the data"
        )

    def _check_output(self, out: Array, direction: str) -> None:
        """The bijector must map `event_shape` to `event_shape`: the base distribution is over it."""
        if tuple(out.shape[1:]) != tuple(self.event_shape):
            raise EventShapeError(
                f"Flow: the bijector's {direction} maps examples of shape {tuple(self.event_shape)} to "
                f"{tuple(out.shape[1:])}, but a flow's bijector must keep event_shape "
                f"{tuple(self.event_shape)} (the base distribution is over it). End the chain with the "
                "inverse of every reshaping layer (e.g. Invert(Squeeze()) after each Squeeze), use "
                "MultiScaleFlow, or set event_shape to the latent's shape."
            )

    def forward(self, x: Array, context=None) -> tuple[Array, Array]:
        x, context, single = self._as_batch(x, context)
        self._check(x)
        z, log_det = self.bijector.forward(x, self.context_array(context, x.shape[0], x.dtype))
        self._check_output(z, "forward")
        return (z[0], log_det[0]) if single else (z, log_det)

    def inverse(self, z: Array, context=None) -> tuple[Array, Array]:
        z, context, single = self._as_batch(z, context)
        self._check(z)
        x, log_det = self.bijector.inverse(z, self.context_array(context, z.shape[0], z.dtype))
        self._check_output(x, "inverse")
        return (x[0], log_det[0]) if single else (x, log_det)

    def log_prob(self, x: Array, context=None) -> Array:
        """log p(x) (log p(x | context) for a conditional flow), nats per example (a scalar for one
        example of rank len(event_shape))."""
        if self.domain is not None:
            check_range(x, *self.domain, hint=self.range_hint())
        x, context, single = self._as_batch(x, context)
        z, log_det = self.forward(x, context)
        log_p = self.base.log_prob(z) + log_det
        return log_p[0] if single else log_p

    def discrete_log_prob(self, pixels: Array, key: Array, bins: int, context=None) -> Array:
        """One draw of the lower bound on log P(pixels) (nats) for integer pixels in {0, …, bins−1}:
        log p((x + u)/K) − D log K − log q(u | x), u from `dequantizer` (uniform when None, log q = 0).
        """
        pixels, context, single = self._as_batch(pixels, context)
        check_nonempty(pixels, "pixels")
        if self.dequantizer is None:
            x, log_q = dequantize(key, pixels, bins), 0.0
        else:
            check_pixels(pixels, bins)
            u, log_q = self.dequantizer(key, pixels, bins)
            x = (pixels.astype(u.dtype) + u) / bins
        offset = discrete_log_prob_offset(math.prod(self.event_shape), bins)
        log_mass = self.log_prob(x, context) + offset - log_q
        return log_mass[0] if single else log_mass

    def sample(self, key: Array, num_samples: int, temperature: float = 1.0, context=None) -> Array:
        """`num_samples` draws with the base standard deviation scaled by `temperature`; a
        conditional flow draws from p(x | context), one context row (or label) per sample, or one
        integer label for all of them."""
        num_samples = check_count(num_samples, "num_samples", "Flow.sample")
        z = self.base.sample(key, (num_samples, *self.event_shape), temperature)
        return self.inverse(z, context)[0]

    def sample_and_log_prob(
        self, key: Array, num_samples: int, temperature: float = 1.0, context=None
    ) -> tuple[Array, Array]:
        """`sample` and the log-density of each draw under the flow."""
        num_samples = check_count(num_samples, "num_samples", "Flow.sample_and_log_prob")
        z = self.base.sample(key, (num_samples, *self.event_shape), temperature)
        x, log_det = self.inverse(z, context)
        return x, self.base.log_prob(z) - log_det

    def __call__(self, x: Array, context=None) -> Array:
        return self.log_prob(x, context)
