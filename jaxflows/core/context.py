"""The context of a conditional flow p(x | c): what layers receive, its checks and its errors.

Inside a flow every bijector receives the context as a float array of shape (batch, d), or None
for an unconditional model. A `Flow` turns what its user passes (class labels, or any context
vector) into that array (`Flow.context_array`); layers that depend on it (couplings, split priors,
the top prior) project it with a zero-initialised `ContextProjection`, so a conditional layer
starts as its unconditional self and learns how the context moves it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from jaxflows.core.errors import JaxflowsError

Array = jax.Array


class ContextError(JaxflowsError, ValueError):
    """A context that does not fit the flow or the batch."""


class MissingContextError(ContextError):
    """A conditional model (or layer) called without a context."""


class UnexpectedContextError(ContextError):
    """An unconditional model given a context."""


class ContextShapeError(ContextError):
    """A context of the wrong rank, dtype, width or batch size."""


class LabelRangeError(ContextError):
    """A class label outside {0, …, num_classes − 1}."""


def check_context(context: Array, x: Array, owner: str) -> None:
    """Require a float (batch, d) context whose batch matches `x`'s (static: raises under `jit`)."""
    shape = getattr(context, "shape", None)
    if shape is None or len(shape) != 2:
        raise ContextShapeError(f"{owner}: expected a context of shape (batch, features), got shape {shape}")
    if not jnp.issubdtype(context.dtype, jnp.floating):
        raise ContextShapeError(
            f"{owner}: expected a floating context inside the flow, got {context.dtype}; class labels are "
            "turned into one-hot vectors by the Flow (glow(..., num_classes=N))"
        )
    if shape[0] != x.shape[0]:
        raise ContextShapeError(
            f"{owner}: the context has {shape[0]} rows but the batch has {x.shape[0]} examples"
        )


class ContextProjection(nn.Module):
    """W c + b from a (batch, d) context to (batch, 1, 1, features), broadcast over pixels.

    Zero-initialised: a conditional layer starts as the unconditional one. Created only when a
    layer receives a context, so unconditional models have no such parameters; a layer that has
    them but is called without a context raises `MissingContextError` (`require_context`).

    Attributes:
      features: output channels.
      dtype: computation dtype (None: promoted from the context and parameters).
      param_dtype: dtype of W and b at init.
      precision: of the product W c (None: JAX's default); a network's, so the network policy's.
    """

    features: int
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(self, context: Array) -> Array:
        dense = nn.Dense(
            self.features,
            kernel_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            name="dense",
        )
        return dense(context)[:, None, None, :]


def add_context(
    module: nn.Module,
    h: Array,
    x: Array,
    context: Array | None,
    dtype: DTypeLike | None = None,
    precision: lax.Precision | None = None,
) -> Array:
    """h + W c: the projection of the context (a `ContextProjection` named "context" of `module`,
    with `module.param_dtype` and the network policy's `dtype` and `precision`) added to h per
    channel, broadcast over the pixels of an image x (none on a (batch, d) x); h unchanged without
    a context. Raises `MissingContextError` if `module` has that projection but got no context."""
    owner = type(module).__name__
    require_context(module, "context", context, owner)
    if context is None:
        return h
    check_context(context, x, owner)
    projection = ContextProjection(h.shape[-1], dtype, module.param_dtype, precision, name="context")
    projected = projection(context)
    return h + projected.reshape(projected.shape[0], *(1,) * (x.ndim - 2), projected.shape[-1])


def require_context(module: nn.Module, name: str, context: Array | None, owner: str) -> None:
    """Raise `MissingContextError` if `module` holds a context projection `name` but got no context."""
    if context is None and module.has_variable("params", name):
        raise MissingContextError(
            f"{owner} was initialised with a context (it has '{name}' parameters) but was called without one"
        )
