"""Input checks for the public boundary.

Shape and dtype checks are static, so they run at trace time and raise under `jit` too. Value checks
(finite, in range) need concrete arrays: they raise on concrete inputs and are skipped while tracing;
the training pipeline runs them on host batches before anything reaches the device.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.core.errors import InputDtypeError, InvalidArgumentError, InvalidInputError, ShapeError


def is_concrete(x) -> bool:
    """True when `x` holds values (not a tracer inside jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def check_image(x, name: str = "x") -> None:
    """Require a floating NHWC batch: rank 4, float dtype."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        raise ShapeError(
            f"{name}: expected an NHWC batch of rank 4 (batch, height, width, channels), got shape {shape}"
        )
    _check_floating(x, name)


def check_image_or_vectors(x, name: str = "x") -> None:
    """Require a floating batch of NHWC images (rank 4) or of vectors (batch, d), for layers that
    act on the last axis of either."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) not in (2, 4):
        raise ShapeError(
            f"{name}: expected an NHWC batch of rank 4 (batch, height, width, channels) or a batch of "
            f"vectors (batch, d), got shape {shape}"
        )
    _check_floating(x, name)


def _check_floating(x, name: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputDtypeError(
            f"{name}: expected a floating dtype, got {x.dtype}; integer pixels must be "
            "dequantized first (jaxflows.dequantize)"
        )


def check_nonempty(x, name: str = "x") -> None:
    """Require at least one example along the batch axis (static: raises under `jit` too)."""
    if x.shape[0] == 0:
        raise ShapeError(f"{name}: empty batch (shape {tuple(x.shape)}); expected at least one example")


def check_count(value, name: str, owner: str) -> int:
    """Require a static integer ≥ 1 (sizes, depths, sample counts): not a bool, float or tracer."""
    try:
        count = None if isinstance(value, bool) else operator.index(value)
    except TypeError:  # floats, and tracers (jax.errors.TracerIntegerConversionError)
        count = None
    if count is None or count < 1:
        raise InvalidArgumentError(f"{owner}: {name} must be an integer ≥ 1, got {value!r}")
    return count


def check_finite(x, name: str = "x") -> None:
    """Raise if a concrete array holds NaN or infinity."""
    if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise InvalidInputError(f"{name}: expected finite values, found NaN or infinity")


def check_range(x, low: float, high: float, name: str = "x", hint: str = "") -> None:
    """Raise if a concrete array has values outside [low, high] (`hint` ends the message)."""
    if not is_concrete(x):
        return
    arr = np.asarray(x)
    lo, hi = arr.min(initial=low), arr.max(initial=high)
    if lo < low or hi > high:
        raise InvalidInputError(
            f"{name}: expected values in [{low}, {high}], got min {lo} and max {hi}{hint}"
        )


def check_channels(channels: int, minimum: int, layer: str) -> None:
    if channels < minimum:
        raise ShapeError(
            f"{layer}: cannot split {channels} channel(s); expected at least {minimum}. "
            "Squeeze first (2x2 space-to-depth multiplies channels by 4)."
        )
