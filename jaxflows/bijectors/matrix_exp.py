"""Matrix Exponential Flows (Xiao & Liu 2020, "Generative Flows with Matrix Exponential").

exp(W) is invertible for every square W, with exp(W)⁻¹ = exp(−W) and log|det exp(W)| = tr W
(Eq. 2–3), so neither layer ever computes a determinant or a matrix inverse.

- `MatrixExpConv1x1` (Sec. 4.3): a 1x1 convolution with weight exp(W), W learned.
- `MatrixExpCoupling` (Sec. 4.2, Eq. 8): y_b = exp(S(x_a)) x_b + b(x_a) at every pixel, with S a
  full c×c matrix per pixel or low rank S = A₁A₂, as the official code chooses (full when c ≤ 24).

Both use the series of adaptive length of the official code (`jaxflows.linalg.expm_adaptive`):
terms are added until the next one's norm falls below `tolerance`.
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
from jaxflows.linalg import expm_adaptive, phi_adaptive


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

    Attributes:
      init_scale: std of the Gaussian behind the skew-symmetric initial W.
      tolerance: the exp series stops after its last term with norm above this (None: 1e-8 in
        float32, 1e-16 in float64).
    """

    init_scale: float = 0.1
    tolerance: float | None = None

    @nn.compact
    def matrix(self, channels: int, inverse: bool) -> tuple[Array, Array]:
        weight = self.param("weight", skew_symmetric_init(self.init_scale), (channels, channels))
        sign = -1.0 if inverse else 1.0
        exp, _ = expm_adaptive(sign * weight, tolerance=series_tolerance(self.tolerance, weight.dtype))
        return exp, jnp.trace(weight)

    def series_terms(self, x: Array) -> Array:
        """m, the power of the last series term exp(W) used (MEF Table 6); a scalar."""
        weight = self.variables["params"]["weight"]
        return expm_adaptive(weight, tolerance=series_tolerance(self.tolerance, weight.dtype))[1]


def series_tolerance(tolerance: float | None, dtype) -> float:
    """The series' stopping tolerance: as given, else 1e-8 (the official code's) or 1e-16 in float64."""
    if tolerance is not None:
        return tolerance
    return 1e-16 if jnp.dtype(dtype).itemsize >= 8 else 1e-8


def _a2_offset(rank: int, channels: int) -> np.ndarray:
    """DCT-IV rows cos(π(k+½)(j+½)/c): a fixed offset inside A₂'s tanh so A₂ ≠ 0 at init.

    The network's last convolution starts at zero; were A₁ and A₂ both zero, S = A₁A₂ would have
    zero gradient in both factors forever (a saddle). With A₂ ≠ 0 and A₁ = 0 the layer still starts
    as the identity and A₁ gets gradients. The network's learned bias moves the offset freely.
    """
    k = np.arange(rank)[:, None] + 0.5
    j = np.arange(channels)[None, :] + 0.5
    return np.cos(np.pi * k * j / channels)


class BoundedEntries(nn.Module):
    """rescale · tanh(scale · s + shift) + reshift, with four learned scalars (the official MEF code).

    Starts at scale 1/8, shift 0, rescale 1/c (c active channels), reshift 0: entries within ±1/c,
    so ‖S‖∞ ≤ 1 at initialisation, while training may widen the range.
    """

    channels: int

    @nn.compact
    def __call__(self, s: Array) -> Array:
        scale = self.param("scale", nn.initializers.constant(1 / 8), ())
        shift = self.param("shift", nn.initializers.zeros, ())
        rescale = self.param("rescale", nn.initializers.constant(1 / self.channels), ())
        reshift = self.param("reshift", nn.initializers.zeros, ())
        return rescale * jnp.tanh(scale * s + shift) + reshift


FORMS = ("auto", "full", "low_rank")


class MatrixExpCoupling(Coupling):
    """y_b = exp(S) x_b + b per pixel, S from the network (Xiao & Liu 2020, Eq. 8–9).

    Forward: y_b = exp(S) x_b + b. Inverse: x_b = exp(−S)(y_b − b). log_det = Σ_pixels tr S (forward),
    its negative (inverse). The network reads x_a and gives per pixel b (c values) and S:

    - "full": S = B(h_S), a c×c matrix, applied as exp(S) formed by scaling and squaring around
      a series of adaptive length (`expm_adaptive`).
    - "low_rank": S = A₁A₂ with A₁ = B(h₁) (c×t), A₂ = B(h₂ + offset) (t×c), applied to vectors as
      exp(A₁A₂) v = v + A₁ φ(A₂A₁) A₂ v with φ a t×t series (`phi_adaptive`); tr S = tr(A₂A₁).
      The fixed offset (DCT rows) keeps A₂ ≠ 0 when the zero-initialised network outputs 0: with
      both factors 0 (the official code adds only 1e-8) S would sit at a saddle of zero gradient.
    - "auto" (default): "full" when c ≤ `max_full_channels` (24), else "low_rank", the official rule.

    B is `BoundedEntries`, rescale·tanh(scale·s + shift) + reshift with learned scalars. Only the
    channel mask is supported: S mixes the active channels of one pixel.

    Attributes:
      hidden, mask, parity: as `Coupling` (mask must be "channel").
      form: "auto" | "full" | "low_rank".
      rank: t of the low-rank form (3 in the official code).
      max_full_channels: the largest c for which "auto" uses the full form.
      tolerance: the series stops after its last term with norm above this (None: 1e-8 in float32,
        1e-16 in float64).
      max_squarings: cap on the squarings (‖S‖∞ up to 2^(max_squarings − 1) is scaled exactly;
        beyond, exp(±S) would amplify rounding by more than e^16 and the layer is useless anyway).
    """

    form: str = "auto"
    rank: int = 3
    max_full_channels: int = 24
    tolerance: float | None = None
    max_squarings: int = 5

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"MatrixExpCoupling: form must be one of {FORMS}, got {self.form!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"MatrixExpCoupling: rank must be an integer ≥ 1, got {self.rank!r}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise ValueError(f"MatrixExpCoupling: tolerance must be positive, got {self.tolerance!r}")
        if self.mask != "channel":
            raise ValueError(
                f"MatrixExpCoupling mixes the active channels of each pixel and needs mask='channel', "
                f"got mask={self.mask!r}"
            )
        super().__post_init__()

    def is_full(self, channels: int) -> bool:
        """Whether S is a full matrix for `channels` active channels."""
        return self.form == "full" or (self.form == "auto" and channels <= self.max_full_channels)

    def num_params(self, active_channels: int) -> int:
        c = active_channels
        return c * (c + 1) if self.is_full(c) else c * (2 * self.rank + 1)

    @nn.compact
    def factors(self, h: Array, channels: int) -> tuple[Array, ...]:
        """(b, S) for the full form, (b, A₁, A₂) for the low-rank one, from the network output h."""
        c, t, lead = channels, self.rank, h.shape[:-1]
        bounded = BoundedEntries(c, name="bound")
        shift = h[..., :c]
        if self.is_full(c):
            return shift, bounded(h[..., c:].reshape(*lead, c, c))
        raw_a1 = h[..., c : c + c * t].reshape(*lead, c, t)
        raw_a2 = h[..., c + c * t :].reshape(*lead, t, c)
        return shift, bounded(raw_a1), bounded(raw_a2 + jnp.asarray(_a2_offset(t, c), h.dtype))

    def _exp_times(self, factors: tuple[Array, ...], v: Array, sign: float) -> tuple[Array, Array]:
        """(exp(sign·S) v, m) per pixel, and the power m of the last series term used."""
        tolerance = series_tolerance(self.tolerance, v.dtype)
        if len(factors) == 1:
            squarings = self.max_squarings
            exp, terms = expm_adaptive(sign * factors[0], tolerance=tolerance, max_squarings=squarings)
            return jnp.einsum("...ij,...j->...i", exp, v), terms
        a1, a2 = factors
        phi, terms = phi_adaptive(sign * (a2 @ a1), tolerance=tolerance, max_squarings=self.max_squarings)
        projected = jnp.einsum("...ij,...j->...i", phi, jnp.einsum("...ij,...j->...i", a2, v))
        return v + sign * jnp.einsum("...ij,...j->...i", a1, projected), terms

    def couple(self, active: Array, h: Array, inverse: bool) -> tuple[Array, Array]:
        shift, *s_factors = self.factors(h, active.shape[-1])
        # Forward exp(S) x + b and inverse exp(−S)(y − b): one product with S → −S.
        if inverse:
            out, _ = self._exp_times(s_factors, active - shift, -1.0)
        else:
            out, _ = self._exp_times(s_factors, active, 1.0)
            out = out + shift
        trace = (
            jnp.trace(s_factors[0], axis1=-2, axis2=-1)
            if len(s_factors) == 1
            else (jnp.einsum("...ij,...ji->...", s_factors[0], s_factors[1]))
        )
        return out, trace[..., None]

    def series_terms(self, x: Array) -> Array:
        """m per pixel: the power of the last series term of exp(S) (or φ) used (MEF Table 6)."""
        _, active, h = self.conditioned(x)
        _, *s_factors = self.factors(h, active.shape[-1])
        return self._exp_times(s_factors, active, 1.0)[1]
