"""Matrix exponentials for flows (Xiao & Liu 2020, "Generative Flows with Matrix Exponential", Eq. 1).

exp(W) = Σ_k W^k / k! is computed as a truncated Taylor series with scaling and squaring
(Moler & Van Loan 2003, method 3): exp(W) = exp(W / 2^s)^(2^s) with s chosen from ‖W‖₁ so the
scaled series converges fast. Everything is jit-friendly: the number of series terms and the
maximum number of squarings are static, s itself is computed inside the compiled function and
the squarings beyond s are masked, so new values never retrace, and forward- and reverse-mode
autodiff go straight through the loops (no custom rule needed; see the tests and the benchmark).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxflows.core.validation import check_count
from jaxflows.ops.precision import BIJECTION_PRECISION

Array = jax.Array

# After scaling, ‖W / 2^s‖₁ ≤ _THETA; the Taylor remainder is then below _THETA^(m+1) / (m+1)!:
# 4e-10 for float32 (m = 16), 2e-18 for float64 (m = 24). A larger _THETA with more terms needs
# fewer squarings, and each squaring doubles the rounding error (measured: θ = 0.5 with 10 terms
# is 4x less accurate at ‖W‖₁ = 10 than θ = 2 with 16 terms).
_THETA = 2.0
# ‖W‖₁ up to _THETA · 2^12 ≈ 8e3 is scaled correctly (exp of a normal matrix that large overflows).
_DEFAULT_MAX_SQUARINGS = 12
# expm_multiply: each of at most `max_steps` steps applies exp(W / steps) with ‖W / steps‖₁ ≤ 2.
_STEP_NORM = _THETA
_DEFAULT_MAX_STEPS = 8
# Series terms by the dtype's itemsize, for `expm` and `expm_multiply` alike: both sum the series
# of a matrix with ‖·‖₁ ≤ 2 (after scaling, or per step).
_DEFAULT_TERMS = {4: 16, 8: 24}


def _float_dtype(x: Array) -> jnp.dtype:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.result_type(float)
    return x.dtype


def _default_terms(dtype: jnp.dtype) -> int:
    return _DEFAULT_TERMS.get(jnp.dtype(dtype).itemsize, _DEFAULT_TERMS[4])


def _check_square(w: Array, name: str) -> None:
    if w.ndim < 2 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"{name}: expected a square matrix or a batch of them (..., n, n), got {w.shape}")


def _one_norm(w: Array) -> Array:
    """‖W‖₁ = max column sum of |W| per matrix; it bounds the spectral radius."""
    return jnp.max(jnp.sum(jnp.abs(w), axis=-2), axis=-1)


def _taylor(w: Array, terms: int) -> Array:
    """Σ_{k≤terms} W^k / k! by Horner's rule, R ← I + W R / k for k = terms … 1, in a scan."""
    eye = jnp.broadcast_to(jnp.eye(w.shape[-1], dtype=w.dtype), w.shape)

    def horner(acc, k):
        return eye + jnp.matmul(w, acc, precision=BIJECTION_PRECISION) / k, None

    ks = jnp.arange(terms, 0, -1).astype(w.dtype)
    return jax.lax.scan(horner, eye, ks)[0]


def expm(w: Array, *, terms: int | None = None, max_squarings: int = _DEFAULT_MAX_SQUARINGS) -> Array:
    """exp(W) of a square matrix or a batch (..., n, n) by Taylor series with scaling and squaring.

    s = ⌈log₂(‖W‖₁ / 2)⌉ clipped to [0, max_squarings], per matrix, computed on device: the
    series runs on W / 2^s, then `max_squarings` squarings are applied of which those past s are
    masked (X ← X · where(i < s, X, I), exact when masked). `terms` defaults to 16 in float32 and
    24 in float64. Accurate to rounding times the squaring growth for ‖W‖₁ ≤ 2^(max_squarings+1).
    """
    w = jnp.asarray(w)
    _check_square(w, "expm")
    if int(max_squarings) != max_squarings or max_squarings < 0:
        raise ValueError(f"max_squarings must be a non-negative integer, got {max_squarings!r}")
    w = w.astype(_float_dtype(w))
    terms = terms if terms is not None else _default_terms(w.dtype)
    check_count(terms, "terms", "expm")

    return _expm(w, terms, max_squarings)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _expm(w: Array, terms: int, max_squarings: int) -> Array:
    norm = _one_norm(w)
    squarings = jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-30) / _THETA))
    squarings = jnp.clip(squarings, 0, max_squarings)
    scaled = w * jnp.exp2(-squarings)[..., None, None]
    result = _taylor(scaled, terms)
    if max_squarings == 0:
        return result

    eye = jnp.eye(w.shape[-1], dtype=w.dtype)
    active = squarings[..., None, None]

    def square(acc, i):
        return jnp.matmul(acc, jnp.where(i < active, acc, eye), precision=BIJECTION_PRECISION), None

    return jax.lax.scan(square, result, jnp.arange(max_squarings, dtype=w.dtype))[0]


def expm_multiply(
    w: Array, v: Array, *, terms: int | None = None, max_steps: int = _DEFAULT_MAX_STEPS
) -> Array:
    """exp(W) v for v of shape (..., n) without forming exp(W); batch dims of W and v broadcast.

    exp(W) v = exp(W / m)^m v: m = ⌈‖W‖₁ / 2⌉ clipped to [1, max_steps] steps (per matrix, on device)
    each apply a `terms`-term Taylor series on vectors (only matrix–vector products), steps past m
    are masked. Repeated steps rather than squaring keep everything matrix–vector; the step count
    grows linearly with ‖W‖₁, so this suits moderate norms: ‖W‖₁ ≤ 2·max_steps is accurate to
    rounding, beyond it accuracy degrades (use `expm(W) @ v`). `terms` defaults to 16 in float32
    and 24 in float64.
    """
    w, v = jnp.asarray(w), jnp.asarray(v)
    _check_square(w, "expm_multiply")
    if v.ndim < 1 or v.shape[-1] != w.shape[-1]:
        raise ValueError(
            f"expm_multiply: v must have shape (..., {w.shape[-1]}) to match W {w.shape}, got {v.shape}"
        )
    check_count(max_steps, "max_steps", "expm_multiply")
    dtype = jnp.result_type(_float_dtype(w), _float_dtype(v))
    w, v = w.astype(dtype), v.astype(dtype)
    terms = terms if terms is not None else _default_terms(dtype)
    check_count(terms, "terms", "expm_multiply")

    return _expm_multiply(w, v, terms, max_steps)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _expm_multiply(w: Array, v: Array, terms: int, max_steps: int) -> Array:
    steps = jnp.clip(jnp.ceil(_one_norm(w) / _STEP_NORM), 1, max_steps)
    scaled = w / steps[..., None, None]
    batch = jnp.broadcast_shapes(w.shape[:-2], v.shape[:-1])
    v = jnp.broadcast_to(v, (*batch, v.shape[-1]))
    active = jnp.broadcast_to(steps, batch)[..., None]

    def matvec(u: Array) -> Array:
        return jnp.einsum("...ij,...j->...i", scaled, u, precision=BIJECTION_PRECISION)

    def step(u, i):
        def horner(acc, k):
            return u + matvec(acc) / k, None

        stepped = jax.lax.scan(horner, u, jnp.arange(terms, 0, -1).astype(u.dtype))[0]
        return jnp.where(i < active, stepped, u), None

    return jax.lax.scan(step, v, jnp.arange(max_steps, dtype=v.dtype))[0]


def series_terms(norm_bound: float, dtype: jnp.dtype = jnp.float32) -> int:
    """Fewest terms m with ‖M‖^(m+1) / (m+2)! below the dtype's rounding (1e-9 float32, 1e-17 float64).

    That is the remainder of the φ series (and, up to a factor, of the exp series) for ‖M‖ ≤
    `norm_bound`; a static count for a statically bounded norm.
    """
    if not norm_bound > 0:
        raise ValueError(f"norm_bound must be positive, got {norm_bound!r}")
    tolerance = 1e-17 if jnp.dtype(dtype).itemsize >= 8 else 1e-9
    terms = 1
    while (terms + 1) * math.log(norm_bound) - math.lgamma(terms + 3) > math.log(tolerance):
        terms += 1
    return terms


def phi_multiply(m: Array, u: Array, terms: int) -> Array:
    """φ(M) u with φ(M) = Σ_{k=0}^{terms} M^k / (k+1)! = (exp(M) − I) M⁻¹ (for invertible M).

    Horner: r ← u + M r / (k+1) for k = terms … 1, starting from r = u. Remainder ≤
    ‖M‖^(terms+1) / (terms+2)! · ‖u‖; callers keep ‖M‖ bounded.
    """
    check_count(terms, "terms", "phi_multiply")
    return _phi_multiply(m, u, terms)


@functools.partial(jax.jit, static_argnums=2)
def _phi_multiply(m: Array, u: Array, terms: int) -> Array:

    def horner(acc, k):
        return u + jnp.einsum("...ij,...j->...i", m, acc, precision=BIJECTION_PRECISION) / (k + 1), None

    ks = jnp.arange(terms, 0, -1).astype(u.dtype)
    return jax.lax.scan(horner, u, ks)[0]


def low_rank_expm_multiply(a: Array, b: Array, v: Array, *, terms: int) -> Array:
    """exp(A B) v = v + A φ(B A) (B v) for A (..., n, t), B (..., t, n), v (..., n).

    Since (A B)^k = A (B A)^(k−1) B (Xiao & Liu 2020, Sec. 4.2 low-rank S), only the t×t matrix
    B A enters the series: O(t² · terms + n t) per vector instead of O(n³). The series has a fixed
    number of terms, accurate when ‖B A‖ is bounded (remainder ≤ ‖A‖‖B‖‖BA‖^terms / (terms+1)!).
    """
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2] or a.shape[-2] != b.shape[-1]:
        raise ValueError(
            f"low_rank_expm_multiply: need A (..., n, t) and B (..., t, n), got {a.shape}, {b.shape}"
        )
    if v.shape[-1] != a.shape[-2]:
        raise ValueError(f"low_rank_expm_multiply: v must end in {a.shape[-2]}, got {v.shape}")
    check_count(terms, "terms", "low_rank_expm_multiply")
    return _low_rank_expm_multiply(a, b, v, terms)


@functools.partial(jax.jit, static_argnums=3)
def _low_rank_expm_multiply(a: Array, b: Array, v: Array, terms: int) -> Array:
    small = jnp.matmul(b, a, precision=BIJECTION_PRECISION)
    projected = jnp.einsum("...ij,...j->...i", b, v, precision=BIJECTION_PRECISION)
    return v + jnp.einsum(
        "...ij,...j->...i", a, _phi_multiply(small, projected, terms), precision=BIJECTION_PRECISION
    )
