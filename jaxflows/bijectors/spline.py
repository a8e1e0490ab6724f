"""Rational-quadratic spline couplings (Durkan et al. 2019, "Neural Spline Flows", Sec. 3.1 and
App. A; the monotone segments of Gregory & Delbourgo 1982).

On [−B, B] the map is a monotone spline of K rational-quadratic segments through knots
(x⁰, y⁰), …, (x^K, y^K) with derivatives δ⁰, …, δ^K at the knots; outside, it is the identity
(linear tails: x⁰ = y⁰ = −B, x^K = y^K = B and δ⁰ = δ^K = 1, so the map and its derivative are
continuous). In bin k, with ξ = (x − x^k)/w_k ∈ [0, 1], w_k = x^{k+1} − x^k, h_k = y^{k+1} − y^k,
s_k = h_k / w_k (Eq. 4):

    y − y^k = P(ξ) / Q(ξ),   P(ξ) = h_k (s_k ξ² + δ^k ξ(1 − ξ)),   Q(ξ) = s_k + κ_k ξ(1 − ξ),
    κ_k = δ^{k+1} + δ^k − 2 s_k.

The forward map evaluates P/Q. The inverse solves P(ξ) − (y − y^k) Q(ξ) = 0, a quadratic in ξ
(App. A, Eq. 6–8), by its root 2c / (−b − √(b² − 4ac)), which does not cancel. Both log-dets are
log dy/dx at ξ (Eq. 5), with opposite signs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.core.bijector import Array
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.core.validation import check_count


@dataclasses.dataclass(frozen=True)
class Segment:
    """The rational-quadratic segment of the bin each entry lies in (arrays of the input's shape).

    Attributes:
      x0, y0: the bin's left knot (x^k, y^k).
      width, height: w_k and h_k.
      d0, d1: the knot derivatives δ^k and δ^{k+1}.
    """

    x0: Array
    y0: Array
    width: Array
    height: Array
    d0: Array
    d1: Array

    @property
    def slope(self) -> Array:
        return self.height / self.width

    @property
    def curvature(self) -> Array:
        """κ = δ^{k+1} + δ^k − 2s: zero where the segment is a straight line."""
        return self.d1 + self.d0 - 2 * self.slope

    def numerator(self, xi: Array) -> Array:
        """P(ξ) = h (s ξ² + δ^k ξ(1 − ξ))."""
        return self.height * (self.slope * xi**2 + self.d0 * xi * (1 - xi))

    def denominator(self, xi: Array) -> Array:
        """Q(ξ) = s + κ ξ(1 − ξ), positive for a monotone segment."""
        return self.slope + self.curvature * xi * (1 - xi)

    def root(self, rise: Array) -> Array:
        """ξ ∈ [0, 1] with P(ξ) = rise · Q(ξ), rise = y − y^k: the root of aξ² + bξ + c = 0 with
        a = h(s − δ^k) + rise·κ, b = h δ^k − rise·κ, c = −s·rise (NSF App. A, Eq. 6–8).

        With q = −(b + sign(b)√(b² − 4ac))/2, that root is c/q = 2c/(−b − √(b² − 4ac)) for b ≥ 0
        (NSF Eq. 8) and q/a = (−b + √(b² − 4ac))/(2a) for b < 0: the same root, with no
        cancellation either way. Since c ≤ 0 ≤ a + b + c = s(h − rise), b < 0 forces a > |b|, and
        q ≠ 0 on a monotone segment."""
        a = self.height * (self.slope - self.d0) + rise * self.curvature
        b = self.height * self.d0 - rise * self.curvature
        c = -self.slope * rise
        positive = b >= 0
        root_discriminant = jnp.sqrt(jnp.maximum(b**2 - 4 * a * c, 0))
        q = -(b + jnp.where(positive, root_discriminant, -root_discriminant)) / 2
        return jnp.where(positive, c / q, q / jnp.where(positive, 1, a))

    def log_slope(self, xi: Array) -> Array:
        """log dy/dx = log(s² (δ^{k+1} ξ² + 2s ξ(1 − ξ) + δ^k (1 − ξ)²)) − 2 log Q(ξ) (NSF Eq. 5)."""
        s = self.slope
        derivative = self.d1 * xi**2 + 2 * s * xi * (1 - xi) + self.d0 * (1 - xi) ** 2
        return 2 * jnp.log(s) + jnp.log(derivative) - 2 * jnp.log(self.denominator(xi))


def _gather(values: Array, index: Array) -> Array:
    """values[..., index] entry by entry: values (..., K+1), index (...)."""
    return jnp.take_along_axis(values, index[..., None], axis=-1)[..., 0]


@dataclasses.dataclass(frozen=True)
class RationalQuadraticMap:
    """The monotone rational-quadratic spline through given knots, identity outside [−B, B]
    (Durkan et al. 2019, Eq. 4–5; see the module doc). An `ElementwiseBijector`.

    Forward: in the bin of x, ξ = (x − x^k)/w_k, y = y^k + P(ξ)/Q(ξ), log_det = log dy/dx.
    Inverse: in the bin of y, ξ the root of P(ξ) = (y − y^k) Q(ξ), x = x^k + ξ w_k,
    log_det = −log dy/dx at ξ. Outside [−B, B]: y = x, log_det = 0.

    Attributes:
      x_knots, y_knots: (..., K+1), increasing from −B to B, per entry of the input.
      derivatives: (..., K+1), positive, 1 at both ends.
      bound: B.
    """

    x_knots: Array
    y_knots: Array
    derivatives: Array
    bound: float

    def segment(self, value: Array, knots: Array) -> tuple[Segment, Array, Array]:
        """(the segment of the bin of `value` among `knots`, the x or y knots; `value` clipped to
        [−B, B]; whether `value` lies in [−B, B])."""
        inside = jnp.abs(value) <= self.bound
        clipped = jnp.where(inside, value, jnp.sign(value) * self.bound)
        index = jnp.sum(clipped[..., None] >= knots[..., 1:-1], axis=-1)
        x0, x1 = _gather(self.x_knots, index), _gather(self.x_knots, index + 1)
        y0, y1 = _gather(self.y_knots, index), _gather(self.y_knots, index + 1)
        d0, d1 = _gather(self.derivatives, index), _gather(self.derivatives, index + 1)
        return Segment(x0, y0, x1 - x0, y1 - y0, d0, d1), clipped, inside

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        segment, clipped, inside = self.segment(x, self.x_knots)
        xi = (clipped - segment.x0) / segment.width
        y = segment.y0 + segment.numerator(xi) / segment.denominator(xi)
        return jnp.where(inside, y, x), jnp.where(inside, segment.log_slope(xi), 0)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        segment, clipped, inside = self.segment(y, self.y_knots)
        xi = segment.root(clipped - segment.y0)
        x = segment.x0 + xi * segment.width
        return jnp.where(inside, x, y), jnp.where(inside, -segment.log_slope(xi), 0)


def spline_knots(raw: Array, bound: float, minimum: float) -> Array:
    """Knots −B = z⁰ < … < z^K = B from K unconstrained values: bin sizes 2B·(m + (1 − Km)·softmax(raw)),
    each at least 2B·m (NSF Sec. 3.1)."""
    bins = raw.shape[-1]
    fractions = minimum + (1 - bins * minimum) * jax.nn.softmax(raw, axis=-1)
    inner = -bound + 2 * bound * jnp.cumsum(fractions[..., :-1], axis=-1)
    ends = jnp.full((*raw.shape[:-1], 1), bound, raw.dtype)
    return jnp.concatenate([-ends, inner, ends], axis=-1)


def knot_derivatives(raw: Array, minimum: float) -> Array:
    """δ⁰ = 1, δ^k = m + softplus(raw + o) for the K − 1 interior knots, δ^K = 1, with the offset
    o = log(e^{1−m} − 1) so that raw = 0 gives δ = 1: zero network outputs make the identity."""
    offset = math.log(math.expm1(1 - minimum))
    ends = jnp.ones((*raw.shape[:-1], 1), raw.dtype)
    return jnp.concatenate([ends, minimum + jax.nn.softplus(raw + offset), ends], axis=-1)


def _check_fraction(value, name: str, upper: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < upper:
        raise InvalidArgumentError(
            f"RationalQuadraticSpline: {name} must be a number in [0, {upper:g}), got {value!r}"
        )
    return float(value)


@dataclasses.dataclass(frozen=True)
class RationalQuadraticSpline:
    """The rational-quadratic spline coupling law (Durkan et al. 2019, RQ-NSF (C)): from 3K − 1
    network outputs per active entry, K bin widths and K heights (softmax, at least the minimums)
    and K − 1 interior knot derivatives (softplus, at least `min_derivative`) of a monotone spline
    on [−B, B], identity outside (`RationalQuadraticMap`).

    Zero network outputs give equal bins and unit derivatives: the identity. Defaults follow
    Durkan et al.: K = 8 bins, B = 3 (inputs to a coupling are roughly unit-scaled after ActNorm,
    so [−3, 3] holds nearly all of them; the tails handle the rest exactly), minimums 1e-3.

    Attributes:
      bins: K ≥ 2.
      bound: B > 0.
      min_bin_width, min_bin_height: the least bin size as a fraction of 2B; K × each < 1.
      min_derivative: the least knot derivative, in [0, 1).
    """

    masks: ClassVar[tuple[str, ...]] = ("channel", "checkerboard")
    entrywise: ClassVar[bool] = True
    bins: int = 8
    bound: float = 3.0
    min_bin_width: float = 1e-3
    min_bin_height: float = 1e-3
    min_derivative: float = 1e-3

    def __post_init__(self) -> None:
        if check_count(self.bins, "bins", "RationalQuadraticSpline") < 2:
            raise InvalidArgumentError(f"RationalQuadraticSpline: bins must be at least 2, got {self.bins}")
        bound = self.bound
        if isinstance(bound, bool) or not isinstance(bound, int | float) or not 0 < bound < math.inf:
            raise InvalidArgumentError(
                f"RationalQuadraticSpline: bound must be a finite number > 0, got {bound!r}"
            )
        _check_fraction(self.min_bin_width, "min_bin_width", 1 / self.bins)
        _check_fraction(self.min_bin_height, "min_bin_height", 1 / self.bins)
        _check_fraction(self.min_derivative, "min_derivative", 1.0)

    def num_params(self, channels: int) -> int:
        return (3 * self.bins - 1) * channels

    def __call__(
        self, h: Array, channels: int, *, param_dtype: DTypeLike = jnp.float32
    ) -> RationalQuadraticMap:
        """T_h from h (..., channels · (3K − 1)), each channel's 3K − 1 values contiguous:
        K widths, K heights, K − 1 interior derivatives."""
        k = self.bins
        raw = h.reshape(*h.shape[:-1], channels, 3 * k - 1)
        return RationalQuadraticMap(
            x_knots=spline_knots(raw[..., :k], self.bound, self.min_bin_width),
            y_knots=spline_knots(raw[..., k : 2 * k], self.bound, self.min_bin_height),
            derivatives=knot_derivatives(raw[..., 2 * k :], self.min_derivative),
            bound=float(self.bound),
        )
