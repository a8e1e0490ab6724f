"""Host-side checks of batches, run before anything reaches the device."""

from __future__ import annotations

import numpy as np

from jaxflows.core.errors import InputDtypeError, InvalidInputError, ShapeError
from jaxflows.core.validation import check_finite, check_range


def _check_shape(x: np.ndarray, event_shape: tuple[int, ...] | None, name: str) -> None:
    if x.ndim < 2:
        raise ShapeError(f"{name}: expected a batch (batch, *event_shape) of rank ≥ 2, got shape {x.shape}")
    if event_shape is not None and tuple(x.shape[1:]) != tuple(event_shape):
        raise ShapeError(f"{name}: expected examples of shape {tuple(event_shape)}, got {x.shape[1:]}")


def validate_batch(
    pixels: np.ndarray, num_bins: int | None, event_shape: tuple[int, ...] | None = None, name: str = "batch"
) -> np.ndarray:
    """Require a batch of examples and return it unchanged: with `num_bins`, integer values in
    {0, …, num_bins − 1} (pixels of any event shape: NHWC images, flattened vectors); with
    `num_bins` None (continuous data), finite floats. `event_shape` checks the examples' shape.

    Raises ValueError on a wrong rank or example shape, non-finite values, non-integer floats or
    out-of-range pixels, naming what was wrong.
    """
    pixels = np.asarray(pixels)
    _check_shape(pixels, event_shape, name)
    if num_bins is None:
        if not np.issubdtype(pixels.dtype, np.floating):
            raise InputDtypeError(
                f"{name}: continuous data must be floating point, got dtype {pixels.dtype}; integer "
                "data with L levels is discrete: pass its number of levels (e.g. (train, held_out, L))"
            )
        check_finite(pixels, name)
        return pixels
    if np.issubdtype(pixels.dtype, np.floating):
        check_finite(pixels, name)
        if not np.all(pixels == np.round(pixels)):
            raise InvalidInputError(f"{name}: expected integer intensities, got non-integer floats")
    elif not np.issubdtype(pixels.dtype, np.integer):
        raise InputDtypeError(f"{name}: expected integer or float pixels, got dtype {pixels.dtype}")
    check_range(pixels, 0, num_bins - 1, name)
    return pixels
