"""Patchify: p×p space-to-depth into a grid of patch tokens (ViT, Dosovitskiy et al. 2021; Jet and
TarFlow read images this way)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.errors import ShapeError
from jaxflows.core.validation import check_count, check_image


def patchify(x: Array, patch_size: int) -> Array:
    """(b, h, w, c) -> (b, h/p, w/p, p·p·c); token value (di·p + dj)·c + k holds x[p·i+di, p·j+dj, k]
    (Jet's "b (h hp) (w wp) c -> b h w (hp wp c)")."""
    check_image(x)
    b, h, w, c = x.shape
    p = patch_size
    if h % p or w % p:
        raise ShapeError(
            f"Patchify: height and width must be multiples of the patch size {p}, got {h}x{w}; "
            "pad the images or pick another patch size"
        )
    x = x.reshape(b, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // p, w // p, p * p * c)


def unpatchify(y: Array, patch_size: int) -> Array:
    """Inverse of `patchify`: (b, h, w, p·p·c) -> (b, p·h, p·w, c)."""
    check_image(y)
    b, h, w, values = y.shape
    p = patch_size
    if values % (p * p):
        raise ShapeError(f"Unpatchify: token values must be a multiple of p² = {p * p}, got {values}")
    y = y.reshape(b, h, w, p, p, values // (p * p))
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, values // (p * p))


class Patchify(Bijector):
    """p×p space-to-depth: an image becomes its grid of patch tokens, each token the p·p·c values of
    one patch (`patchify`). Squeeze is the same move for p = 2 with another order of the values.

    Forward: (b, h, w, c) → (b, h/p, w/p, p²c). Inverse: (b, h, w, p²c) → (b, ph, pw, c).
    A permutation of the entries, so log_det = 0 both ways.

    Attributes:
      patch_size: p ≥ 1.
    """

    patch_size: int

    def __post_init__(self) -> None:
        check_count(self.patch_size, "patch_size", "Patchify")
        super().__post_init__()

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return patchify(x, self.patch_size), jnp.zeros(x.shape[0], x.dtype)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return unpatchify(y, self.patch_size), jnp.zeros(y.shape[0], y.dtype)
