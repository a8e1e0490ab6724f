"""Element-wise bijectors as layers, each named by its forward (data → latent) map: `Logit` for data
in (0, 1) (the logit preprocessing of RealNVP, Dinh et al. 2017, and of MAF, Papamakarios et al.
2017), `Tanh`, `Sigmoid` (= `Invert(Logit())`) and a learned per-entry `ElementwiseAffine`.

They take any batch (batch, ...) and act entry by entry; log_det is the per-example sum of the
entries' log-slopes.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.bijectors.elementwise import ScalarAffine
from jaxflows.core.bijector import Array, Bijector, Invert, sum_except_batch
from jaxflows.core.errors import InputDtypeError, InvalidArgumentError, ShapeError
from jaxflows.ops import bijection_dtype


def check_batch(x: Array, owner: str) -> None:
    """Require a floating batch of examples (rank ≥ 2: batch first)."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
        raise ShapeError(f"{owner}: expected a batch (batch, ...) of rank ≥ 2, got shape {shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputDtypeError(f"{owner}: expected a floating input, got {x.dtype}")


def squashed_logit_log_slope(log_u: Array, log_one_minus_u: Array, alpha: float) -> Array:
    """log d/dx logit(α + (1 − 2α)x) = log(1 − 2α) − log u − log(1 − u), u = α + (1 − 2α)x."""
    return math.log1p(-2 * alpha) - log_u - log_one_minus_u


class Logit(Bijector):
    """y = logit(α + (1 − 2α)x), (0, 1) → ℝ, entry by entry (RealNVP's and MAF's preprocessing).

    The squash keeps x = 0 and x = 1 finite (dequantised pixels lie in [0, 1)).
    Forward: u = α + (1 − 2α)x, y = log u − log(1 − u), log_det = Σ log(1 − 2α) − log u − log(1 − u).
    Inverse: u = sigmoid(y), x = (u − α)/(1 − 2α), log_det = −Σ of the same at u.

    Attributes:
      alpha: α in [0, 1/2); 0 is the plain logit on (0, 1).
    """

    alpha: float = 1e-6

    def __post_init__(self) -> None:
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha < 0.5:
            raise InvalidArgumentError(f"Logit: alpha must be a number in [0, 0.5), got {alpha!r}")
        super().__post_init__()

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_batch(x, "Logit")
        u = self.alpha + (1 - 2 * self.alpha) * x
        log_u, log_one_minus_u = jnp.log(u), jnp.log1p(-u)
        return log_u - log_one_minus_u, sum_except_batch(
            squashed_logit_log_slope(log_u, log_one_minus_u, self.alpha)
        )

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_batch(y, "Logit")
        log_u, log_one_minus_u = jax.nn.log_sigmoid(y), jax.nn.log_sigmoid(-y)
        x = (jax.nn.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)
        return x, -sum_except_batch(squashed_logit_log_slope(log_u, log_one_minus_u, self.alpha))


def Sigmoid(alpha: float = 1e-6) -> Invert:
    """x ↦ (sigmoid(x) − α)/(1 − 2α), ℝ → (0, 1): `Invert(Logit(alpha))` (the same layer, not a copy)."""
    return Invert(Logit(alpha))


def tanh_log_slope(x: Array) -> Array:
    """log(1 − tanh² x) = 2(log 2 − x − softplus(−2x)), exact for large |x|."""
    return 2 * (math.log(2.0) - x - jax.nn.softplus(-2 * x))


class Tanh(Bijector):
    """y = tanh(x), ℝ → (−1, 1), entry by entry; `Invert(Tanh())` maps data in (−1, 1) to ℝ.

    Forward: y = tanh x, log_det = Σ log(1 − tanh² x) = Σ 2(log 2 − x − softplus(−2x)).
    Inverse: x = atanh y, log_det = −Σ log(1 − y²) = −Σ (log1p(−y) + log1p(y)).

    Attributes:
      none: the map has no parameters.
    """

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_batch(x, "Tanh")
        return jnp.tanh(x), sum_except_batch(tanh_log_slope(x))

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_batch(y, "Tanh")
        return jnp.arctanh(y), -sum_except_batch(jnp.log1p(-y) + jnp.log1p(y))


class ElementwiseAffine(Bijector):
    """y = x·exp(s) + b with a learned (s, b) per entry of an example (x.shape[1:]), zero at init:
    the identity at init (`ScalarAffine`).

    Forward: y = x·e^s + b, log_det = Σ s. Inverse: x = (y − b)·e^{−s}, log_det = −Σ s.

    Attributes:
      dtype: computation dtype (None: promoted from the input and parameters, at least float32).
      param_dtype: dtype of s and b.
    """

    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32

    @nn.compact
    def affine(self, x: Array) -> ScalarAffine:
        shift = self.param("shift", nn.initializers.zeros, x.shape[1:], self.param_dtype)
        log_scale = self.param("log_scale", nn.initializers.zeros, x.shape[1:], self.param_dtype)
        dtype = bijection_dtype(self.dtype, x, shift, log_scale)
        return ScalarAffine(shift.astype(dtype), log_scale.astype(dtype))

    def _log_det(self, x: Array, log_scale: Array) -> Array:
        return jnp.broadcast_to(jnp.sum(log_scale), (x.shape[0],))

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_batch(x, "ElementwiseAffine")
        affine = self.affine(x)
        return affine.forward_and_log_det(x)[0], self._log_det(x, affine.log_scale)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_batch(y, "ElementwiseAffine")
        affine = self.affine(y)
        return affine.inverse_and_log_det(y)[0], -self._log_det(y, affine.log_scale)
