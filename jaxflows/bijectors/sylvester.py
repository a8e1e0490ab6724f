"""Sylvester flow, orthogonal-triangular form (van den Berg et al. 2018, Sec 3), on (batch, d) vectors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxflows.bijectors.planar import (
    RootFindingBijector,
    check_vectors,
    slope_margin,
    solve_scalar,
    tanh_log_det_factor,
)
from jaxflows.core.bijector import Array
from jaxflows.core.errors import ShapeError
from jaxflows.core.validation import check_count
from jaxflows.ops.precision import BIJECTION_PRECISION, bijection_dtype

DEFAULT_MAX_HIDDEN = 8


def _matmul(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=BIJECTION_PRECISION)


class Sylvester(RootFindingBijector):
    """z' = z + Q R tanh(R̃ Qᵀ z + b) (van den Berg et al. 2018, Eq. 13), Q with M orthonormal
    columns (the Q factor of a free d×M matrix), R and R̃ upper triangular M×M.

    Forward: log|det| = log det(I_M + diag(h'(a)) R̃ R) = Σ_i log(1 + h'(a_i) r̃_ii r_ii), a = R̃ Qᵀz + b
    (Sylvester's determinant identity, Eq. 14). Invertibility: r_ii = exp(ρ_i) and
    r̃_ii = m(σ_i)/r_ii with m(σ) = −1 + softplus(σ + log(e − 1)) (+1e-6, `slope_margin`), so
    r_ii r̃_ii > −1 = −1/sup tanh', and ≈ 0 at initialisation (σ_i ≈ 0): unit slope.
    Inverse: the component of z orthogonal to Q is unchanged; v = Qᵀz solves the upper triangular
    system v + R tanh(R̃ v + b) = Qᵀz', one monotone scalar equation per coordinate from the last to
    the first (`solve_scalar`), then z = z' − Q R tanh(R̃ v + b). `inverse_residual` reports the
    achieved residual.

    Attributes:
      num_hidden: M ≤ d; None: min(d, 8).
      tolerance, max_iterations, dtype, param_dtype: as `RootFindingBijector`.
    """

    num_hidden: int | None = None

    def __post_init__(self) -> None:
        if self.num_hidden is not None:
            check_count(self.num_hidden, "num_hidden", "Sylvester")
        super().__post_init__()

    @nn.compact
    def _variables(self, x: Array):
        d = x.shape[-1]
        m = self.num_hidden or min(d, DEFAULT_MAX_HIDDEN)
        if m > d:
            raise ShapeError(f"Sylvester: num_hidden = {m} must be at most the input's d = {d}")
        normal = lambda scale: lambda key, shape: scale * jax.random.normal(key, shape, self.param_dtype)
        zeros = lambda key, shape: jnp.zeros(shape, self.param_dtype)
        raw = {
            "q": self.param("q", normal(1.0), (d, m)),
            "r": self.param("r", normal(0.1), (m, m)),
            "r_tilde": self.param("r_tilde", normal(0.1), (m, m)),
            "log_r_diag": self.param("log_r_diag", zeros, (m,)),
            "product_diag": self.param("product_diag", normal(0.1), (m,)),
            "b": self.param("b", zeros, (m,)),
        }
        dtype = bijection_dtype(self.dtype, x, *raw.values())
        p = {k: v.astype(dtype) for k, v in raw.items()}
        q, upper = jnp.linalg.qr(p["q"])
        q = q * jnp.where(jnp.diag(upper) < 0, -1, 1).astype(dtype)  # continuous in the free matrix
        margin = slope_margin(p["product_diag"])  # 1 + r_ii r̃_ii
        r = jnp.triu(p["r"], 1) + jnp.diag(jnp.exp(p["log_r_diag"]))
        r_tilde = jnp.triu(p["r_tilde"], 1) + jnp.diag((margin - 1) * jnp.exp(-p["log_r_diag"]))
        return q, r, r_tilde, p["b"], margin, dtype

    def _shift(self, v: Array, q: Array, r: Array, r_tilde: Array, b: Array, margin: Array):
        """Q R tanh(a) and the forward log-det, a = R̃ v + b, for rotated coordinates v = Qᵀz."""
        pre = _matmul(v, r_tilde.T) + b
        shift = _matmul(_matmul(jnp.tanh(pre), r.T), q.T)
        return shift, jnp.sum(tanh_log_det_factor(pre, margin), axis=-1)

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_vectors(x, "Sylvester")
        q, r, r_tilde, b, margin, dtype = self._variables(x)
        x = x.astype(dtype)
        shift, log_det = self._shift(_matmul(x, q), q, r, r_tilde, b, margin)
        return x + shift, log_det

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_vectors(y, "Sylvester")
        q, r, r_tilde, b, margin, dtype = self._variables(y)
        y = y.astype(dtype)
        target = _matmul(y, q)
        v = self._back_substitute(*(lax.stop_gradient(a) for a in (target, r, r_tilde, b, margin)))
        v = self._newton_step(v, target, r, r_tilde, b)
        shift, log_det = self._shift(v, q, r, r_tilde, b, margin)
        return y - shift, -log_det

    def _back_substitute(self, target, r, r_tilde, b, margin) -> Array:
        """v with v + R tanh(R̃ v + b) = target, coordinates solved from the last to the first."""
        m = r.shape[0]
        tol = self.solver_tolerance(target.dtype)

        def solve_coordinate(v, i):
            pre = _matmul(v, r_tilde.T) + b  # rows j > i are final; row i lacks r̃_ii v_i (v_i = 0)
            later = jnp.arange(m) > i
            rhs = target[:, i] - _matmul(jnp.where(later, jnp.tanh(pre), 0), r[i])
            v_i = solve_scalar(rhs, r[i, i], r_tilde[i, i], pre[:, i], margin[i], tol, self.max_iterations)
            return v.at[:, i].set(v_i), None

        v, _ = lax.scan(solve_coordinate, jnp.zeros_like(target), jnp.arange(m)[::-1])
        return lax.stop_gradient(v)

    @staticmethod
    def _newton_step(v, target, r, r_tilde, b) -> Array:
        """One Newton step on the whole triangular system at the solution `v`: no change in value,
        and derivatives of the implicit solution, (I + R diag(h') R̃)⁻¹."""
        pre = _matmul(v, r_tilde.T) + b
        t = jnp.tanh(pre)
        residual = v + _matmul(t, r.T) - target
        eye = jnp.eye(r.shape[0], dtype=r.dtype)
        jacobian = eye + _matmul(r * (1 - t * t)[:, None, :], r_tilde)
        solve = lambda a, rhs: jax.scipy.linalg.solve_triangular(a, rhs, lower=False)
        return v - jax.vmap(solve)(jacobian, residual)
