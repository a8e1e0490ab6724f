"""Host-side checks of pixel batches, run before anything reaches the device."""

from __future__ import annotations

import numpy as np

from jaxflows.core.errors import InputDtypeError, InvalidInputError, ShapeError
from jaxflows.core.validation import check_finite, check_range


def validate_batch(
    pixels: np.ndarray, num_bins: int, event_shape: tuple[int, ...] | None = None, name: str = "batch"
) -> np.ndarray:
    """Require an NHWC batch of integer intensities in {0, …, num_bins − 1}; returns it unchanged.

    Raises ValueError on a wrong rank or example shape, non-finite values, non-integer floats or
    out-of-range pixels, naming what was wrong.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 4:
        raise ShapeError(
            f"{name}: expected an NHWC batch of rank 4 (batch, height, width, channels), "
            f"got shape {pixels.shape}"
        )
    if event_shape is not None and tuple(pixels.shape[1:]) != tuple(event_shape):
        raise ShapeError(f"{name}: expected examples of shape {tuple(event_shape)}, got {pixels.shape[1:]}")
    if np.issubdtype(pixels.dtype, np.floating):
        check_finite(pixels, name)
        if not np.all(pixels == np.round(pixels)):
            raise InvalidInputError(f"{name}: expected integer intensities, got non-integer floats")
    elif not np.issubdtype(pixels.dtype, np.integer):
        raise InputDtypeError(f"{name}: expected integer or float pixels, got dtype {pixels.dtype}")
    check_range(pixels, 0, num_bins - 1, name)
    return pixels
