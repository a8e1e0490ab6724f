"""Rescale: a fixed affine map of every entry, e.g. from the data's range to a model's input range
(Jet, Kolesnikov et al. 2024, models images in [−1, 1])."""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.errors import InvalidArgumentError


class Rescale(Bijector):
    """y = scale · x + shift, entry by entry, with constants fixed when the layer is built.

    Forward: y = a x + b, log_det = D log|a| (D entries per example).
    Inverse: x = (y − b) / a, log_det = −D log|a|.

    Attributes:
      scale: a, a nonzero finite number.
      shift: b.
    """

    scale: float
    shift: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale != 0 and math.isfinite(self.shift)):
            raise InvalidArgumentError(
                f"Rescale: scale must be finite and nonzero and shift finite, got scale={self.scale!r}, "
                f"shift={self.shift!r}"
            )
        super().__post_init__()

    @classmethod
    def between(cls, source: tuple[float, float], target: tuple[float, float]) -> Rescale:
        """The increasing map of the interval `source` onto `target`."""
        (lo, hi), (new_lo, new_hi) = source, target
        if not hi > lo or not new_hi > new_lo:
            raise InvalidArgumentError(f"Rescale.between: need low < high, got {source} and {target}")
        scale = (new_hi - new_lo) / (hi - lo)
        return cls(scale=scale, shift=new_lo - scale * lo)

    def _log_det(self, x: Array) -> Array:
        entries = math.prod(x.shape[1:])
        return jnp.full(x.shape[0], entries * math.log(abs(self.scale)), x.dtype)

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return x * self.scale + self.shift, self._log_det(x)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return (y - self.shift) / self.scale, -self._log_det(y)
