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

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jaxflows.bijectors.conv1x1 import InvertibleConv1x1
from jaxflows.bijectors.coupling import Coupling
from jaxflows.core.bijector import Array
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.core.validation import check_count
from jaxflows.linalg import expm_adaptive, phi_adaptive
from jaxflows.ops.matmul import batched_matmul
from jaxflows.ops.precision import BIJECTION_PRECISION, bijection_dtype


def skew_symmetric_init(scale: float):
    """W = (G − Gᵀ)/√2 with G ~ N(0, scale²): exp(W) is a rotation, close to I for small scale."""

    def init(key: Array, shape: tuple[int, int], dtype=jnp.float32) -> Array:
        gaussian = scale * jax.random.normal(key, shape, dtype)
        return (gaussian - gaussian.T) / math.sqrt(2.0)

    return init


class MatrixExpConv1x1(InvertibleConv1x1):
    """1x1 convolution with weight exp(W) (Xiao & Liu 2020, Sec. 4.3, Table 1).

    Forward: y = exp(W) x, log|det exp(W)| = tr W.
    Inverse: x = exp(−W) y, log|det exp(−W)| = tr(−W): the forward maths with −W, so no inverse
    or determinant is ever computed. W starts skew-symmetric with entries of std `init_scale` (the
    paper initialises W skew-symmetric, so exp(W) starts as a rotation).

    Attributes:
      init_scale: std of the Gaussian behind the skew-symmetric initial W.
      tolerance: the exp series stops after its last term with norm above this (None: 1e-8 in
        float32, 1e-16 in float64, by the computation dtype).
      dtype, param_dtype: as `InvertibleConv1x1`.
    """

    init_scale: float = 0.1
    tolerance: float | None = None

    @nn.compact
    def exponent(self, x: Array) -> Array:
        """W in the computation dtype."""
        init = skew_symmetric_init(self.init_scale)
        weight = self.param("weight", init, (x.shape[-1],) * 2, self.param_dtype)
        return weight.astype(bijection_dtype(self.dtype, x, weight))

    def _exp(self, w: Array) -> tuple[Array, Array]:
        """(exp(W), m) with m the power of the last series term used."""
        return expm_adaptive(w, tolerance=self.tolerance)

    def matrix(self, x: Array) -> tuple[Array, Array]:
        w = self.exponent(x)
        return self._exp(w)[0], jnp.trace(w)

    def inverse_matrix(self, y: Array) -> tuple[Array, Array]:
        w = -self.exponent(y)
        return self._exp(w)[0], jnp.trace(w)

    def series_terms(self, x: Array, context: Array | None = None) -> Array:
        """m, the power of the last series term exp(W) used (MEF Table 6); a scalar."""
        return self._exp(self.exponent(x))[1]


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

    Attributes:
      channels: c, the active channels (sets the initial rescale 1/c).
      param_dtype: dtype of the four scalars at init.
    """

    channels: int
    param_dtype: DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, s: Array) -> Array:
        scalar = lambda name, init: self.param(name, init, (), self.param_dtype)
        scale = scalar("scale", nn.initializers.constant(1 / 8))
        shift = scalar("shift", nn.initializers.zeros)
        rescale = scalar("rescale", nn.initializers.constant(1 / self.channels))
        reshift = scalar("reshift", nn.initializers.zeros)
        return rescale * jnp.tanh(scale * s + shift) + reshift


@dataclasses.dataclass(frozen=True)
class PixelExponential:
    """exp(S) at every pixel, with S = factors[0] (full, (..., c, c)) or S = A₁A₂ (low rank,
    factors = (A₁ (..., c, t), A₂ (..., t, c))), applied to vectors.

    Full: exp(S) by scaling and squaring around an adaptive series (`expm_adaptive`). Low rank:
    exp(A₁A₂) v = v + A₁ φ(A₂A₁) A₂ v with φ a t×t series (`phi_adaptive`); tr S = tr(A₂A₁).

    Attributes:
      factors: (S,) or (A₁, A₂).
      tolerance: the series stops after its last term with norm above this (None: by the dtype,
        `jaxflows.linalg.default_tolerance`).
      max_squarings: cap on the squarings.
    """

    factors: tuple[Array, ...]
    tolerance: float | None
    max_squarings: int

    def negated(self) -> PixelExponential:
        """exp(−S): the factors of −S, (−S,) or (−A₁, A₂)."""
        return dataclasses.replace(self, factors=(-self.factors[0], *self.factors[1:]))

    def times(self, v: Array) -> tuple[Array, Array]:
        """(exp(S) v per pixel, m: the power of the last series term used, per pixel)."""
        options = dict(tolerance=self.tolerance, max_squarings=self.max_squarings)
        if len(self.factors) == 1:
            exp, terms = expm_adaptive(self.factors[0], **options)
            return _matvec(exp, v), terms
        a1, a2 = self.factors
        phi, terms = phi_adaptive(batched_matmul(a2, a1), **options)
        return v + _matvec(a1, _matvec(phi, _matvec(a2, v))), terms

    def trace(self) -> Array:
        """tr S per pixel."""
        if len(self.factors) == 1:
            return jnp.trace(self.factors[0], axis1=-2, axis2=-1)
        return jnp.einsum("...ij,...ji->...", *self.factors, precision=BIJECTION_PRECISION)

    def matrix(self) -> Array:
        """S as a dense (..., c, c) matrix."""
        return self.factors[0] if len(self.factors) == 1 else batched_matmul(*self.factors)


def _matvec(m: Array, v: Array) -> Array:
    return batched_matmul(m, v[..., None])[..., 0]


@dataclasses.dataclass(frozen=True)
class MatrixExpAffine:
    """y = exp(S) x + b at every pixel (Xiao & Liu 2020, Eq. 8), the matrix-exp coupling's map.

    Forward: y = exp(S) x + b, log_det = tr S per pixel.
    Inverse: x = exp(−S)(y − b), log_det = tr(−S) per pixel: the same product with −S.

    Attributes:
      shift: b, (..., c).
      exponential: exp(S) per pixel.
    """

    shift: Array
    exponential: PixelExponential

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        y, _ = self.exponential.times(x)
        return y + self.shift, self.exponential.trace()[..., None]

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        inverse = self.exponential.negated()
        x, _ = inverse.times(y - self.shift)
        return x, inverse.trace()[..., None]


FORMS = ("auto", "full", "low_rank")


@dataclasses.dataclass(frozen=True)
class MatrixExpTransformer:
    """The matrix-exponential coupling law (Xiao & Liu 2020, Eq. 8): from h per pixel, b (c values)
    and S, then y = exp(S) x + b (`MatrixExpAffine`). Channel masks only: S mixes the active
    channels of one pixel.

    - "full": S = B(h_S), a c×c matrix, applied as exp(S) formed by scaling and squaring around
      a series of adaptive length (`expm_adaptive`).
    - "low_rank": S = A₁A₂ with A₁ = B(h₁) (c×t), A₂ = B(h₂ + offset) (t×c), applied to vectors as
      exp(A₁A₂) v = v + A₁ φ(A₂A₁) A₂ v with φ a t×t series (`phi_adaptive`); tr S = tr(A₂A₁).
      The fixed offset (DCT rows) keeps A₂ ≠ 0 when the zero-initialised network outputs 0: with
      both factors 0 (the official code adds only 1e-8) S would sit at a saddle of zero gradient.
    - "auto" (default): "full" when c ≤ `max_full_channels` (24), else "low_rank", the official rule.

    B is `BoundedEntries` (learned scalars, created in the coupling's scope as "bound").

    Attributes:
      form, rank, max_full_channels, tolerance, max_squarings: as `MatrixExpCoupling`'s.
    """

    masks: ClassVar[tuple[str, ...]] = ("channel",)
    entrywise: ClassVar[bool] = False  # exp(S) mixes the channels of a pixel
    form: str = "auto"
    rank: int = 3
    max_full_channels: int = 24
    tolerance: float | None = None
    max_squarings: int = 5

    def is_full(self, channels: int) -> bool:
        """Whether S is a full matrix for `channels` active channels."""
        return self.form == "full" or (self.form == "auto" and channels <= self.max_full_channels)

    def num_params(self, channels: int) -> int:
        c = channels
        return c * (c + 1) if self.is_full(c) else c * (2 * self.rank + 1)

    def __call__(self, h: Array, channels: int, *, param_dtype: DTypeLike = jnp.float32) -> MatrixExpAffine:
        c, t, lead = channels, self.rank, h.shape[:-1]
        bounded = BoundedEntries(c, param_dtype=param_dtype, name="bound")
        shift = h[..., :c]
        if self.is_full(c):
            factors = (bounded(h[..., c:].reshape(*lead, c, c)),)
        else:
            raw_a1 = h[..., c : c + c * t].reshape(*lead, c, t)
            raw_a2 = h[..., c + c * t :].reshape(*lead, t, c)
            factors = (bounded(raw_a1), bounded(raw_a2 + jnp.asarray(_a2_offset(t, c), h.dtype)))
        return MatrixExpAffine(shift, PixelExponential(factors, self.tolerance, self.max_squarings))


class MatrixExpCoupling(Coupling):
    """Matrix-exponential coupling (Xiao & Liu 2020, Eq. 8–9): `Coupling` with
    `MatrixExpTransformer`, (b, S) from the network of x_a.

    Forward: y_b = exp(S) x_b + b, log_det = Σ_pixels tr S.
    Inverse: x_b = exp(−S)(y_b − b), log_det = Σ_pixels tr(−S).
    Both directions are `MatrixExpAffine`, the inverse being the same product with −S; the forms of
    S are `MatrixExpTransformer`'s ("auto": full S per pixel for c ≤ 24, rank-3 S = A₁A₂ above).
    Only the channel mask is supported: S mixes the active channels of one pixel.

    Attributes:
      hidden, mask, parity, conditioner, dtype, param_dtype, network_dtype, network_precision: as
        `Coupling` (mask must be "channel"); `transformer` is built from the fields below.
      form: "auto" | "full" | "low_rank".
      rank: t of the low-rank form (3 in the official code).
      max_full_channels: the largest c for which "auto" uses the full form.
      tolerance: the series stops after its last term with norm above this (None: 1e-8 in float32,
        1e-16 in float64, by the computation dtype).
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
            raise InvalidArgumentError(f"MatrixExpCoupling: form must be one of {FORMS}, got {self.form!r}")
        check_count(self.rank, "rank", "MatrixExpCoupling")
        if self.tolerance is not None and not self.tolerance > 0:
            raise InvalidArgumentError(
                f"MatrixExpCoupling: tolerance must be positive, got {self.tolerance!r}"
            )
        super().__post_init__()

    def elementwise(self) -> MatrixExpTransformer:
        fields = ("form", "rank", "max_full_channels", "tolerance", "max_squarings")
        return MatrixExpTransformer(**{name: getattr(self, name) for name in fields})

    def is_full(self, channels: int) -> bool:
        """Whether S is a full matrix for `channels` active channels."""
        return self.elementwise().is_full(channels)

    def series_terms(self, x: Array, context: Array | None = None) -> Array:
        """m per pixel: the power of the last series term of exp(S) (or φ) used (MEF Table 6)."""
        _, active, h = self.conditioned(x, context)
        return self.inner_bijector(h, active.shape[-1]).exponential.times(active)[1]
