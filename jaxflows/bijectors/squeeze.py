"""Squeeze: 2x2 space-to-depth (RealNVP Sec 3.6, Glow Sec 3)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.errors import ShapeError
from jaxflows.core.validation import check_image


def squeeze2d(x: Array) -> Array:
    """(b, h, w, c) -> (b, h/2, w/2, 4c); output channel k·4 + 2·di + dj holds x[2i+di, 2j+dj, k]."""
    check_image(x)
    b, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ShapeError(
            f"Squeeze: height and width must be even to squeeze 2x2, got {h}x{w}; "
            "use fewer levels or pad the images"
        )
    x = x.reshape(b, h // 2, 2, w // 2, 2, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze2d(y: Array) -> Array:
    """Inverse of `squeeze2d`: (b, h, w, 4c) -> (b, 2h, 2w, c)."""
    check_image(y)
    b, h, w, c4 = y.shape
    if c4 % 4:
        raise ShapeError(f"Unsqueeze: channels must be a multiple of 4, got {c4}")
    y = y.reshape(b, h, w, c4 // 4, 2, 2)
    return y.transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, c4 // 4)


class Squeeze(Bijector):
    """2x2 space-to-depth (RealNVP Sec 3.6): trades spatial size for channels.

    Forward: (b, h, w, c) → (b, h/2, w/2, 4c) (`squeeze2d`). Inverse: (b, h, w, 4c) → (b, 2h, 2w, c)
    (`unsqueeze2d`). A permutation of the entries, so log_det = 0 both ways.

    Attributes:
      (none: the layer has no fields or parameters.)
    """

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return squeeze2d(x), jnp.zeros(x.shape[0], x.dtype)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return unsqueeze2d(y), jnp.zeros(y.shape[0], y.dtype)
