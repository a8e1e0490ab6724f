"""Matrix Exponential Flows (Xiao & Liu 2020, "Generative Flows with Matrix Exponential").

exp(W) is invertible for every square W, with exp(W)⁻¹ = exp(−W) and log|det exp(W)| = tr W
(Eq. 2–3), so neither layer ever computes a determinant or a matrix inverse.

- `MatrixExpConv1x1` (Sec. 4.3): a 1x1 convolution with weight exp(W), W learned.
- `MatrixExpCoupling` (Sec. 4.2, Eq. 8): y_b = exp(S(x_a)) x_b + b(x_a) at every pixel, with a
  bounded low-rank S = A₁A₂ applied through exp(A₁A₂) = I + A₁ φ(A₂A₁) A₂ (never a c×c exponential).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bijectors.conv1x1 import InvertibleConv1x1
from jaxflows.bijectors.coupling import Coupling
from jaxflows.core.bijector import Array
from jaxflows.linalg import expm, low_rank_expm_multiply, series_terms


def skew_symmetric_init(scale: float):
    """W = (G − Gᵀ)/√2 with G ~ N(0, scale²): exp(W) is a rotation, close to I for small scale."""

    def init(key: Array, shape: tuple[int, int], dtype=jnp.float32) -> Array:
        gaussian = scale * jax.random.normal(key, shape, dtype)
        return (gaussian - gaussian.T) / math.sqrt(2.0)

    return init


class MatrixExpConv1x1(InvertibleConv1x1):
    """1x1 convolution with weight exp(W) (Xiao & Liu 2020, Sec. 4.3, Table 1).

    log|det exp(W)| = tr W; the inverse weight is exp(−W). W starts skew-symmetric with entries of
    std `init_scale` (the paper initialises W skew-symmetric, so exp(W) starts as a rotation).
    """

    init_scale: float = 0.1

    @nn.compact
    def matrix(self, channels: int, inverse: bool) -> tuple[Array, Array]:
        weight = self.param("weight", skew_symmetric_init(self.init_scale), (channels, channels))
        sign = -1.0 if inverse else 1.0
        return expm(sign * weight), jnp.trace(weight)


def _a2_offset(rank: int, channels: int) -> np.ndarray:
    """DCT-IV rows cos(π(k+½)(j+½)/c): a fixed offset inside A₂'s tanh so A₂ ≠ 0 at init.

    The network's last convolution starts at zero; were A₁ and A₂ both zero, S = A₁A₂ would have
    zero gradient in both factors forever (a saddle). With A₂ ≠ 0 and A₁ = 0 the layer still starts
    as the identity and A₁ gets gradients. The network's learned bias moves the offset freely.
    """
    k = np.arange(rank)[:, None] + 0.5
    j = np.arange(channels)[None, :] + 0.5
    return np.cos(np.pi * k * j / channels)


class MatrixExpCoupling(Coupling):
    """y_b = exp(S) x_b + b, S = A₁A₂ low rank, per pixel (Xiao & Liu 2020, Eq. 8–9).

    The network reads x_a and gives per pixel b (c values), A₁ (c×t) and A₂ (t×c), t = `rank`.
    log_det = Σ_pixels tr S = Σ_pixels tr(A₂A₁). Inverse: x_b = exp(−S)(y_b − b).

    Stability (the paper bounds S): A₁ = β tanh(h₁), A₂ = β tanh(h₂ + offset) with
    β = √(bound / (c t)), so ‖A₁A₂‖_∞ ≤ ‖A₁‖_∞‖A₂‖_∞ ≤ bound and likewise ‖A₂A₁‖_∞ ≤ bound. Then
    ‖exp(±S)‖_∞ ≤ e^bound in both directions (no exploding scales, like Glow's sigmoid scale), and
    the φ series needs a fixed, small number of terms (`series_terms(bound)`) to reach rounding.
    Only the channel mask is supported: S mixes the active channels of one pixel.
    """

    rank: int = 2
    bound: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"MatrixExpCoupling: rank must be an integer ≥ 1, got {self.rank!r}")
        if not self.bound > 0:
            raise ValueError(f"MatrixExpCoupling: bound must be positive, got {self.bound!r}")
        if self.mask != "channel":
            raise ValueError(
                f"MatrixExpCoupling mixes the active channels of each pixel and needs mask='channel', "
                f"got mask={self.mask!r}"
            )
        super().__post_init__()

    def num_params(self, active_channels: int) -> int:
        return active_channels * (2 * self.rank + 1)

    def factors(self, h: Array, channels: int) -> tuple[Array, Array, Array]:
        """Shift b (..., c), A₁ (..., c, t) and A₂ (..., t, c) from the network output h."""
        t = self.rank
        scale = math.sqrt(self.bound / (channels * t))
        shift = h[..., :channels]
        raw_a1 = h[..., channels : channels + channels * t].reshape(*h.shape[:-1], channels, t)
        raw_a2 = h[..., channels + channels * t :].reshape(*h.shape[:-1], t, channels)
        offset = jnp.asarray(_a2_offset(t, channels), h.dtype)
        return shift, scale * jnp.tanh(raw_a1), scale * jnp.tanh(raw_a2 + offset)

    def couple(self, active: Array, h: Array, inverse: bool) -> tuple[Array, Array]:
        shift, a1, a2 = self.factors(h, active.shape[-1])
        terms = series_terms(self.bound, active.dtype)
        # Forward exp(S) x + b and inverse exp(−S)(y − b) are the same product with A₁ → −A₁.
        sign = -1.0 if inverse else 1.0
        source = active - shift if inverse else active
        out = low_rank_expm_multiply(sign * a1, a2, source, terms=terms)
        out = out if inverse else out + shift
        trace = jnp.einsum("...ij,...ji->...", a1, a2)
        return out, trace[..., None]
