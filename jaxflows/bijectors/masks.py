"""Coupling masks (RealNVP, Dinh et al. 2017, Sec 3.4): which entries a coupling transforms.

A mask splits x into the active part x_a (transformed) and the conditioning part x_b (read by the
network), merges a transformed active part back, says how many channels it needs, and sums the
coupling's log|det| terms over the entries that were actually transformed. Masks take NHWC images
or (batch, d) vectors, whose coordinates play the role of channels (the stripe masks take images
only). The spatial masks (`BoardMask`: the checkerboard, Jet's vertical and horizontal stripes)
differ only in their board.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from jaxflows.core.bijector import Array, sum_except_batch
from jaxflows.core.errors import ShapeError


def _batch_zeros(x: Array) -> Array:
    """Zeros of shape (batch, 1, 1, 1): broadcast per-pixel or scalar terms to one per example."""
    return jnp.zeros((x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)


@dataclasses.dataclass(frozen=True)
class ChannelMask:
    """Split along channels (RealNVP's channel-wise mask, Glow's split()): the last axis, so on a
    (batch, d) vector the two halves of the coordinates.

    With cut = ⌊c/2⌋: parity 0 transforms x[..., cut:] conditioned on x[..., :cut]; parity 1 the
    reverse. Every entry of the active part is transformed.

    Attributes:
      parity: 0 or 1, which half is active.
      min_channels: (class constant) the fewest channels it can split, 2.
      family: (class constant) the name transformers list in their `masks` for it, "channel".
    """

    parity: int = 0
    min_channels: ClassVar[int] = 2
    family: ClassVar[str] = "channel"

    def _cut(self, channels: int) -> int:
        return channels // 2

    def active_channels(self, channels: int) -> int:
        cut = self._cut(channels)
        return channels - cut if self.parity == 0 else cut

    def split(self, x: Array) -> tuple[Array, Array]:
        """(active part, conditioning part)."""
        first, second = x[..., : self._cut(x.shape[-1])], x[..., self._cut(x.shape[-1]) :]
        return (second, first) if self.parity == 0 else (first, second)

    def merge(self, active: Array, x: Array) -> Array:
        """x with its active part replaced by `active`."""
        cut = self._cut(x.shape[-1])
        if self.parity == 0:
            return jnp.concatenate([x[..., :cut], active], axis=-1)
        return jnp.concatenate([active, x[..., cut:]], axis=-1)

    def sum_active(self, terms: Array, x: Array) -> Array:
        """Per-example sum of log|det| terms broadcastable to the active part of x."""
        return sum_except_batch(terms + _batch_zeros(x))


@dataclasses.dataclass(frozen=True)
class BoardMask:
    """Base of the spatial masks: a board b over the pixels, 1 on the conditioning pixels and 0 on
    the active ones, given by the colour (0 or 1) of each pixel (`colour`); pixels whose colour
    plus `parity` is even condition the others.

    The network reads b ⊙ x; the map acts on every pixel and is kept only where b = 0, so only the
    terms there count in the log-det. Every channel of an active pixel is transformed, so a
    transformer that works with the checkerboard works with every board (`family`).

    Attributes:
      parity: 0 or 1, which colour of the board is active.
      min_channels: (class constant) the fewest channels it can split, 1.
      family: (class constant) the name transformers list in their `masks` for every board mask.
    """

    parity: int = 0
    min_channels: ClassVar[int] = 1
    family: ClassVar[str] = "checkerboard"

    def colour(self, index: Array, x: Array) -> Array:
        """0 or 1 per pixel of an image x (coordinate of a vector x) from `index`, the pixels'
        (row, column) indices stacked, shape (2, h, w) (a vector's (1, d))."""
        raise NotImplementedError

    def board(self, x: Array) -> Array:
        """1 on the conditioning pixels (coordinates), 0 on the active ones; shape (1, h, w, 1) for
        images, (1, d) for vectors."""
        image = x.ndim == 4
        index = jnp.indices(x.shape[1:3] if image else x.shape[1:])
        board = ((self.colour(index, x) + self.parity) % 2 == 0).astype(x.dtype)[None]
        return board[..., None] if image else board

    def active_channels(self, channels: int) -> int:
        return channels

    def split(self, x: Array) -> tuple[Array, Array]:
        """(active part: all of x, conditioning part: b ⊙ x)."""
        return x, x * self.board(x)

    def merge(self, active: Array, x: Array) -> Array:
        b = self.board(x)
        return b * x + (1 - b) * active

    def sum_active(self, terms: Array, x: Array) -> Array:
        return sum_except_batch(terms * (1 - self.board(x)) + _batch_zeros(x))


@dataclasses.dataclass(frozen=True)
class CheckerboardMask(BoardMask):
    """RealNVP's spatial checkerboard: pixels with (i + j + parity) even condition the others.
    On (batch, d) vectors the board alternates along the coordinates: those with (i + parity) even
    condition the others. The network reads b ⊙ x (`BoardMask`).

    Attributes:
      parity: 0 or 1, which colour of the board is active.
    """

    def colour(self, index: Array, x: Array) -> Array:
        return index.sum(axis=0) % 2


def _stripe_colour(mask: BoardMask, index: Array, x: Array, axis: int) -> Array:
    """The parity of the row (axis 0) or column (axis 1) index; images only."""
    if x.ndim != 4:
        raise ShapeError(
            f"{type(mask).__name__}: stripes run over the rows or columns of NHWC images, got shape {x.shape}"
        )
    return index[axis] % 2


@dataclasses.dataclass(frozen=True)
class VerticalStripeMask(BoardMask):
    """Vertical stripes (Jet, Kolesnikov et al. 2024, "vstripes"): the pixels of the columns j with
    (j + parity) even condition the other columns. NHWC images only.

    Attributes:
      parity: 0 or 1, which set of columns is active.
    """

    def colour(self, index: Array, x: Array) -> Array:
        return _stripe_colour(self, index, x, axis=1)


@dataclasses.dataclass(frozen=True)
class HorizontalStripeMask(BoardMask):
    """Horizontal stripes (Jet, Kolesnikov et al. 2024, "hstripes"): the pixels of the rows i with
    (i + parity) even condition the other rows. NHWC images only.

    Attributes:
      parity: 0 or 1, which set of rows is active.
    """

    def colour(self, index: Array, x: Array) -> Array:
        return _stripe_colour(self, index, x, axis=0)


Mask = ChannelMask | BoardMask
MASKS: dict[str, type[Mask]] = {
    "channel": ChannelMask,
    "checkerboard": CheckerboardMask,
    "vertical_stripes": VerticalStripeMask,
    "horizontal_stripes": HorizontalStripeMask,
}
