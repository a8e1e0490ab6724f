"""Invertible 1x1 convolutions (Glow, Kingma & Dhariwal 2018, Sec 3.2).

Every 1x1 convolution applies one c×c matrix W at each pixel: y_ij = W x_ij, with
log|det J| = h·w·log|det W|. Subclasses say only how W, W⁻¹ and log|det W| are built from their
parameters; applying the matrix and scaling the log-det is shared in `InvertibleConv1x1`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.validation import check_image


def apply_1x1(x: Array, matrix: Array) -> Array:
    """y[..., i] = Σ_j matrix[i, j] x[..., j] at every pixel."""
    return jnp.einsum("...j,ij->...i", x, matrix)


def random_rotation(key: Array, channels: int, dtype=jnp.float32) -> Array:
    """A uniformly random orthogonal matrix with det +1 (Glow's initialisation)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (channels, channels), dtype))
    q = q * jnp.sign(jnp.diag(r))[None, :]
    return q.at[:, 0].multiply(jnp.sign(jnp.linalg.det(q)))


class InvertibleConv1x1(Bijector):
    """Base class: a subclass implements `matrix(channels, inverse)`.

    `matrix` returns (M, log|det W|) where M is W for the forward direction and W⁻¹ for the
    inverse one; both directions then share `apply_1x1`.
    """

    def matrix(self, channels: int, inverse: bool) -> tuple[Array, Array]:
        raise NotImplementedError

    def transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        check_image(x)
        matrix, log_abs_det = self.matrix(x.shape[-1], inverse)
        pixels = x.shape[1] * x.shape[2]
        sign = -1.0 if inverse else 1.0
        log_det = jnp.full(x.shape[0], sign * pixels * log_abs_det, x.dtype)
        return apply_1x1(x, matrix.astype(x.dtype)), log_det


class Conv1x1(InvertibleConv1x1):
    """Unconstrained W, initialised as a random rotation; log|det W| by LU (O(c³))."""

    @nn.compact
    def matrix(self, channels: int, inverse: bool) -> tuple[Array, Array]:
        weight = self.param("kernel", lambda key: random_rotation(key, channels))
        log_abs_det = jnp.linalg.slogdet(weight)[1]
        return (jnp.linalg.inv(weight) if inverse else weight), log_abs_det


class Conv1x1LU(InvertibleConv1x1):
    """W = P L (U + diag(sign · exp(log_s))) (Glow Sec 3.2, LU decomposition).

    P (a fixed permutation, P[i, permutation[i]] = 1) and sign(s) are constants from the LU
    decomposition of a random rotation; L is unit lower triangular, U strictly upper triangular.
    log|det W| = Σ log_s, O(c).
    W⁻¹ = (U + diag s)⁻¹ L⁻¹ Pᵀ by two triangular solves of c×c matrices.
    """

    @nn.compact
    def matrix(self, channels: int, inverse: bool) -> tuple[Array, Array]:
        init = None
        # Flax evaluates param initialisers abstractly at apply time too (a shape check), so every
        # initialiser derives from one key: the params RNG at init, a placeholder afterwards.
        key = self.make_rng("params") if self.is_initializing() else jax.random.key(0)
        init = lambda name: lambda *_: _lu_of_random_rotation(key, channels)[name]
        perm = self.variable("constants", "permutation", init("permutation")).value
        sign = self.variable("constants", "sign", init("sign")).value
        lower = self.param("lower", init("lower"))
        upper = self.param("upper", init("upper"))
        log_s = self.param("log_s", init("log_s"))

        eye = jnp.eye(channels, dtype=lower.dtype)
        l_mat = jnp.tril(lower, -1) + eye
        u_mat = jnp.triu(upper, 1) + jnp.diag(sign * jnp.exp(log_s))
        log_abs_det = jnp.sum(log_s)
        if not inverse:
            return (l_mat @ u_mat)[perm], log_abs_det  # P m = m[perm]
        l_inv = jax.scipy.linalg.solve_triangular(l_mat, eye, lower=True, unit_diagonal=True)
        lu_inv = jax.scipy.linalg.solve_triangular(u_mat, l_inv, lower=False)
        return lu_inv[:, perm], log_abs_det  # m Pᵀ = m[:, perm]


def _lu_of_random_rotation(key: Array, channels: int) -> dict[str, Array]:
    """Glow's LU initialisation: W = P L U of a random rotation, split into parameters."""
    p, lower, upper = jax.scipy.linalg.lu(random_rotation(key, channels))
    diag = jnp.diag(upper)
    return {
        "permutation": jnp.argmax(p, axis=1),  # row i of P has its 1 in column permutation[i]
        "sign": jnp.sign(diag),
        "lower": jnp.tril(lower, -1),
        "upper": jnp.triu(upper, 1),
        "log_s": jnp.log(jnp.abs(diag)),
    }
