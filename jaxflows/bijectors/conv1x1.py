"""Invertible 1x1 convolutions (Glow, Kingma & Dhariwal 2018, Sec 3.2).

Every 1x1 convolution applies one c×c matrix W at each pixel:

    forward: y_ij = W x_ij,     log_det = h·w·log|det W|
    inverse: x_ij = W⁻¹ y_ij,   log_det = h·w·log|det W⁻¹| = −h·w·log|det W|

Subclasses say only how W and W⁻¹ (with their log|det|) are built from their parameters, each
in its own method over one shared helper that reads the parameters; applying the matrix and
scaling the log-det is shared in `InvertibleConv1x1`.

On a batch of vectors (batch, d) the same layers are invertible linear maps y = W x of each vector
(one "pixel"): `Conv1x1LU` is then the LU-parameterised linear layer of vector flows (`LULinear` is
its name there), with the same maths and parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.core.bijector import Array, Bijector, per_example
from jaxflows.core.validation import check_image_or_vectors
from jaxflows.ops.precision import BIJECTION_PRECISION, bijection_dtype


def apply_1x1(x: Array, matrix: Array) -> Array:
    """y[..., i] = Σ_j matrix[i, j] x[..., j] at every pixel."""
    return jnp.einsum("...j,ij->...i", x, matrix, precision=BIJECTION_PRECISION)


def init_from_one_draw(
    module: nn.Module,
    draw: Callable[[Array], dict[str, Array]],
    constants: tuple[str, ...],
    params: tuple[str, ...],
) -> dict[str, Array]:
    """A layer's variables, every one an entry of one random draw (e.g. the LU factors of one random
    rotation): `constants` in the "constants" collection (never trained), `params` as parameters.

    Flax evaluates initialisers abstractly at apply time too (a shape check), so every initialiser
    derives from one key: the params RNG at init, a placeholder afterwards. Call it from a compact
    method of `module`."""
    key = module.make_rng("params") if module.is_initializing() else jax.random.key(0)
    init = lambda name: lambda *_: draw(key)[name]
    values = {name: module.variable("constants", name, init(name)).value for name in constants}
    values.update({name: module.param(name, init(name)) for name in params})
    return values


def factor_variables(
    layer: nn.Module,
    x: Array,
    factorise: Callable[[Array, int, DTypeLike], dict[str, Array]],
    constants: tuple[str, ...],
    params: tuple[str, ...],
) -> dict[str, Array]:
    """The variables of a factorised 1x1 conv: one draw of `factorise(key, channels, param_dtype)`
    (`init_from_one_draw`), with the parameters and `sign` in the computation dtype."""
    draw = lambda key: factorise(key, x.shape[-1], layer.param_dtype)
    v = init_from_one_draw(layer, draw, constants, params)
    dtype = bijection_dtype(layer.dtype, x, *(v[name] for name in params))
    return {name: a.astype(dtype) if name in (*params, "sign") else a for name, a in v.items()}


def signed_triangular(upper: Array, sign: Array, log_diagonal: Array) -> Array:
    """triu(upper, 1) + diag(sign · exp(log_diagonal)): an upper triangular factor whose
    log|det| is Σ log_diagonal."""
    return jnp.triu(upper, 1) + jnp.diag(sign * jnp.exp(log_diagonal))


def random_rotation(key: Array, channels: int, dtype: DTypeLike = jnp.float32) -> Array:
    """A uniformly random orthogonal matrix with det +1 (Glow's initialisation)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (channels, channels), dtype))
    q = q * jnp.sign(jnp.diag(r))[None, :]
    return q.at[:, 0].multiply(jnp.sign(jnp.linalg.det(q)))


class InvertibleConv1x1(Bijector):
    """Base class: y_ij = W x_ij at every pixel; log_det = h·w·log|det W| (Glow Table 1). On
    vectors (batch, d): y = W x, log_det = log|det W|.

    A subclass implements `matrix(x)` → (W, log|det W|) and `inverse_matrix(y)` →
    (W⁻¹, log|det W⁻¹|), both in the computation dtype for inputs like x; `forward` applies the
    first, `inverse` the second, through the same `apply_1x1`.

    Attributes:
      dtype: computation dtype of W, W⁻¹ and the output (None: promoted from the input and
        parameters, so float64 inputs get a float64 W⁻¹ from float32 parameters).
      param_dtype: dtype of the parameters at init.
    """

    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32

    def matrix(self, x: Array) -> tuple[Array, Array]:
        """(W, log|det W|) for inputs like x (its channels and dtype)."""
        raise NotImplementedError

    def inverse_matrix(self, y: Array) -> tuple[Array, Array]:
        """(W⁻¹, log|det W⁻¹|) for inputs like y (its channels and dtype)."""
        raise NotImplementedError

    def _multiply(self, x: Array, matrix: Array, log_abs_det: Array) -> tuple[Array, Array]:
        pixels = math.prod(x.shape[1:-1])  # h·w for images, 1 for vectors
        return apply_1x1(x.astype(matrix.dtype), matrix), per_example(pixels * log_abs_det, x)

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_image_or_vectors(x)
        return self._multiply(x, *self.matrix(x))

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_image_or_vectors(y)
        return self._multiply(y, *self.inverse_matrix(y))


class Conv1x1(InvertibleConv1x1):
    """Unconstrained W (Glow Sec 3.2), initialised as a random rotation.

    Forward: y = W x, log|det W| by LU (O(c³)). Inverse: x = W⁻¹ y with W⁻¹ = inv(W),
    log|det W⁻¹| = −log|det W|.

    Attributes:
      dtype, param_dtype: as `InvertibleConv1x1`.
    """

    @nn.compact
    def weight(self, x: Array) -> Array:
        """W in the computation dtype."""
        weight = self.param("kernel", lambda key: random_rotation(key, x.shape[-1], self.param_dtype))
        return weight.astype(bijection_dtype(self.dtype, x, weight))

    def matrix(self, x: Array) -> tuple[Array, Array]:
        weight = self.weight(x)
        return weight, jnp.linalg.slogdet(weight)[1]

    def inverse_matrix(self, y: Array) -> tuple[Array, Array]:
        weight = self.weight(y)
        return jnp.linalg.inv(weight), -jnp.linalg.slogdet(weight)[1]


class LUFactors(NamedTuple):
    """W = P L U: P as a row permutation (P m = m[permutation]), L unit lower, U upper triangular."""

    permutation: Array
    lower: Array
    upper: Array
    log_abs_det: Array  # log|det W| = Σ log_s


class Conv1x1LU(InvertibleConv1x1):
    """W = P L (U + diag(sign · exp(log_s))) (Glow Sec 3.2, LU decomposition).

    Forward: y = W x, log|det W| = Σ log_s (O(c)).
    Inverse: x = W⁻¹ y with W⁻¹ = (U + diag s)⁻¹ L⁻¹ Pᵀ by two triangular solves of c×c
    matrices; log|det W⁻¹| = −Σ log_s.
    P (a fixed permutation, P[i, permutation[i]] = 1) and sign(s) are constants from the LU
    decomposition of a random rotation; L is unit lower triangular, U strictly upper triangular.

    Attributes:
      dtype, param_dtype: as `InvertibleConv1x1`.
    """

    @nn.compact
    def factors(self, x: Array) -> LUFactors:
        """P, L and U + diag(s) in the computation dtype, and log|det W|."""
        v = factor_variables(
            self, x, _lu_of_random_rotation, ("permutation", "sign"), ("lower", "upper", "log_s")
        )
        lower = jnp.tril(v["lower"], -1) + jnp.eye(x.shape[-1], dtype=v["lower"].dtype)
        upper = signed_triangular(v["upper"], v["sign"], v["log_s"])
        return LUFactors(v["permutation"], lower, upper, jnp.sum(v["log_s"]))

    def matrix(self, x: Array) -> tuple[Array, Array]:
        perm, lower, upper, log_abs_det = self.factors(x)
        return jnp.matmul(lower, upper, precision=BIJECTION_PRECISION)[perm], log_abs_det  # P m = m[perm]

    def inverse_matrix(self, y: Array) -> tuple[Array, Array]:
        perm, lower, upper, log_abs_det = self.factors(y)
        eye = jnp.eye(lower.shape[-1], dtype=lower.dtype)
        l_inv = jax.scipy.linalg.solve_triangular(lower, eye, lower=True, unit_diagonal=True)
        lu_inv = jax.scipy.linalg.solve_triangular(upper, l_inv, lower=False)
        return lu_inv[:, perm], -log_abs_det  # m Pᵀ = m[:, perm]


class LULinear(Conv1x1LU):
    """An invertible linear map of vectors (batch, d), W = P L (U + diag(sign · exp(log_s))): the
    maths and parameters of `Conv1x1LU` (Glow Sec 3.2) under the name vector flows use for it
    (between couplings as in Durkan et al. 2019's RQ-NSF).

    Forward: y = W x, log|det W| = Σ log_s. Inverse: x = W⁻¹ y by two triangular solves,
    log|det W⁻¹| = −Σ log_s.

    Attributes:
      dtype, param_dtype: as `InvertibleConv1x1`.
    """


def _lu_of_random_rotation(key: Array, channels: int, dtype: DTypeLike) -> dict[str, Array]:
    """Glow's LU initialisation: W = P L U of a random rotation, split into parameters."""
    p, lower, upper = jax.scipy.linalg.lu(random_rotation(key, channels, dtype))
    diag = jnp.diag(upper)
    return {
        "permutation": jnp.argmax(p, axis=1),  # row i of P has its 1 in column permutation[i]
        "sign": jnp.sign(diag),
        "lower": jnp.tril(lower, -1),
        "upper": jnp.triu(upper, 1),
        "log_s": jnp.log(jnp.abs(diag)),
    }
