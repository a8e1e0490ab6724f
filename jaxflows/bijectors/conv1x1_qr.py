"""QR-parametrised invertible 1x1 convolution (Hoogeboom et al. 2019, Sec 3.4)."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from jaxflows.bijectors.conv1x1 import InvertibleConv1x1, factor_variables, random_rotation, signed_triangular
from jaxflows.core.bijector import Array
from jaxflows.ops.precision import BIJECTION_PRECISION


def householder_product(vectors: Array) -> Array:
    """Q = Q₁ Q₂ … Q_n with Q_i = I − 2 v_i v_iᵀ / v_iᵀv_i (paper Eq. 11), v_i = vectors[i]."""

    def multiply(q, v):
        return q - (2.0 / jnp.dot(v, v, precision=BIJECTION_PRECISION)) * jnp.outer(
            jnp.dot(q, v, precision=BIJECTION_PRECISION), v
        ), None

    q, _ = lax.scan(multiply, jnp.eye(vectors.shape[-1], dtype=vectors.dtype), vectors)
    return q


class QRFactors(NamedTuple):
    """W = Q R: Q orthogonal, R upper triangular with diagonal sign · exp(log_r)."""

    q: Array
    r: Array
    log_abs_det: Array  # log|det W| = Σ log_r


class Conv1x1QR(InvertibleConv1x1):
    """W = Q R (Hoogeboom et al. 2019, Eq. 10–11): Q a product of c learnable Householder
    reflections, R upper triangular with diagonal sign · exp(log_r).

    Forward: y = W x = Q R x; |det Q| = 1, so log|det W| = Σ log_r (O(c)).
    Inverse: x = W⁻¹ y with W⁻¹ = R⁻¹ Qᵀ by one triangular solve (no general inverse);
    log|det W⁻¹| = −Σ log_r.
    sign is a constant: Householder QR of Glow's random rotation, which is W at init.

    Attributes:
      dtype, param_dtype: as `InvertibleConv1x1`.
    """

    @nn.compact
    def factors(self, x: Array) -> QRFactors:
        """Q and R in the computation dtype, and log|det W|."""
        v = factor_variables(self, x, _qr_of_random_rotation, ("sign",), ("householder", "upper", "log_r"))
        r = signed_triangular(v["upper"], v["sign"], v["log_r"])
        return QRFactors(householder_product(v["householder"]), r, jnp.sum(v["log_r"]))

    def matrix(self, x: Array) -> tuple[Array, Array]:
        q, r, log_abs_det = self.factors(x)
        return jnp.matmul(q, r, precision=BIJECTION_PRECISION), log_abs_det

    def inverse_matrix(self, y: Array) -> tuple[Array, Array]:
        q, r, log_abs_det = self.factors(y)
        return jax.scipy.linalg.solve_triangular(r, q.T, lower=False), -log_abs_det


def _qr_of_random_rotation(key: Array, channels: int, dtype: DTypeLike) -> dict[str, Array]:
    """Householder QR of a random rotation, split into parameters (then Q R is that rotation)."""

    def reflect(k, carry):
        a, vectors = carry
        below = jnp.arange(channels) >= k
        column = jnp.where(below, a[:, k], 0.0)
        pivot_sign = jnp.where(column[k] >= 0, 1.0, -1.0)
        # v = x + sign(x_k)‖x‖ e_k maps column k onto −sign(x_k)‖x‖ e_k (no cancellation)
        v = column.at[k].add(pivot_sign * jnp.linalg.norm(column))
        a = a - (2.0 / jnp.dot(v, v, precision=BIJECTION_PRECISION)) * jnp.outer(
            v, jnp.dot(v, a, precision=BIJECTION_PRECISION)
        )
        return a, vectors.at[k].set(v)

    rotation = random_rotation(key, channels, dtype)
    r, vectors = lax.fori_loop(0, channels, reflect, (rotation, jnp.zeros_like(rotation)))
    diag = jnp.diag(r)
    return {
        "householder": vectors,
        "sign": jnp.sign(diag),
        "upper": jnp.triu(r, 1),
        "log_r": jnp.log(jnp.abs(diag)),
    }
