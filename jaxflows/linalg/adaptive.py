"""The matrix exponential of the layers: a series whose number of terms adapts to the data, as the
official MEF code runs it, inside scaling and squaring (Xiao & Liu 2020, Eq. 1; Moler & Van Loan
2003, method 3).

Xiao & Liu (2020) add Taylor terms until the next term's norm falls below a tolerance (1e-8 in
their code), after scaling W so that its norm is at most 1/2. A Python `while` loop cannot be
compiled with a data-dependent length, and `lax.while_loop` has no reverse-mode derivative, so
the series here is a scan over `max_terms` steps in which each matrix stops adding terms at its
own m: term k is added while ‖term_k‖ > tolerance and every earlier term was added (a mask, so the
sum is exactly the truncated series of that matrix, and gradients flow through it). New values
never retrace; m is returned per matrix (MEF's Table 6 reports its statistics over training).

Norms are ‖·‖∞ (largest absolute row sum), the norm the official code uses.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_count
from jaxflows.ops.matmul import batched_matmul

Array = jax.Array

DEFAULT_TOLERANCES = {4: 1e-8, 8: 1e-16}  # by the dtype's itemsize; 1e-8 is the official code's
# After scaling ‖W‖∞ ≤ 1/2, ‖term_k‖∞ ≤ 2^-k / k! is below 1e-8 from k = 9 and below 1e-16 from
# k = 15: the caps never cut the series short at those tolerances, and every term past them
# costs a batched matrix product on every call (masked, not skipped).
DEFAULT_EXPM_MAX_TERMS = {4: 10, 8: 16}  # by the dtype's itemsize
DEFAULT_MAX_SQUARINGS = 12  # ‖W‖∞ up to 2^11 is scaled to 1/2; exp of more overflows float32 anyway


def inf_norm(w: Array) -> Array:
    """‖W‖∞ = max_i Σ_j |W_ij| per matrix of a batch (..., n, n)."""
    return jnp.max(jnp.sum(jnp.abs(w), axis=-1), axis=-1)


def default_tolerance(dtype: jnp.dtype) -> float:
    """The series' stopping tolerance in `dtype`: 1e-8 (the official code's) in float32, 1e-16 in
    float64."""
    return DEFAULT_TOLERANCES.get(jnp.dtype(dtype).itemsize, DEFAULT_TOLERANCES[4])


def _check_square(w: Array, name: str) -> None:
    if w.ndim < 2 or w.shape[-1] != w.shape[-2]:
        raise ShapeError(f"{name}: expected a square matrix or a batch of them (..., n, n), got {w.shape}")


def _series(w: Array, offset: int, tolerance: float, max_terms: int) -> tuple[Array, Array]:
    """Σ_{k=0}^{m} c_k W^k with term_k = W term_(k−1) / (k + offset), term_0 = I; m adaptive.

    offset 0 gives exp's coefficients 1/k!, offset 1 gives φ's 1/(k+1)!.
    """
    eye = jnp.broadcast_to(jnp.eye(w.shape[-1], dtype=w.dtype), w.shape)

    def add_term(carry, k):
        total, term, adding = carry
        term = batched_matmul(w, term) / (k + offset)
        adding = adding & (inf_norm(term) > tolerance)
        total = total + jnp.where(adding[..., None, None], term, jnp.zeros_like(term))
        return (total, term, adding), adding

    start = (eye, eye, jnp.ones(w.shape[:-2], bool))
    ks = jnp.arange(1, max_terms + 1, dtype=w.dtype)
    (total, _, _), added = jax.lax.scan(add_term, start, ks)
    return total, jnp.sum(added, axis=0, dtype=jnp.int32)


def expm_adaptive(
    w: Array,
    *,
    tolerance: float | None = None,
    max_terms: int | None = None,
    max_squarings: int = DEFAULT_MAX_SQUARINGS,
) -> tuple[Array, Array]:
    """(exp(W), m) of a square matrix or a batch (..., n, n): scaling and squaring around a Taylor
    series of adaptive length.

    Per matrix, s = ⌈log₂ max(‖W‖∞, 1/2)⌉ + 1 (clipped to `max_squarings`), so ‖W / 2^s‖∞ ≤ 1/2; the
    series of W / 2^s stops after its last term with norm above `tolerance` (m is that term's
    power); then the result is squared s times (squarings past s masked, so new values never
    retrace). `tolerance` defaults to `default_tolerance(W.dtype)`, `max_terms` to 10 in float32
    and 16 in float64.
    """
    w = jnp.asarray(w)
    w = w.astype(jnp.result_type(w, float))  # integer matrices are exponentiated as floats
    _check_square(w, "expm_adaptive")
    if tolerance is None:
        tolerance = default_tolerance(w.dtype)
    if not tolerance > 0:
        raise InvalidArgumentError(f"expm_adaptive: tolerance must be positive, got {tolerance!r}")
    if max_terms is None:
        max_terms = DEFAULT_EXPM_MAX_TERMS.get(jnp.dtype(w.dtype).itemsize, 16)
    check_count(max_terms, "max_terms", "expm_adaptive")
    if int(max_squarings) != max_squarings or max_squarings < 0:
        raise InvalidArgumentError(f"max_squarings must be a non-negative integer, got {max_squarings!r}")
    return _expm_adaptive(w, float(tolerance), int(max_terms), int(max_squarings))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _expm_adaptive(w: Array, tolerance: float, max_terms: int, max_squarings: int):
    squarings = jnp.ceil(jnp.log2(jnp.maximum(inf_norm(w), 0.5))) + 1
    squarings = jnp.clip(squarings, 0, max_squarings)
    result, terms = _series(w * jnp.exp2(-squarings)[..., None, None], 0, tolerance, max_terms)
    eye = jnp.eye(w.shape[-1], dtype=w.dtype)
    active = squarings[..., None, None]

    def square(acc, i):
        return batched_matmul(acc, jnp.where(i < active, acc, eye)), None

    result = jax.lax.scan(square, result, jnp.arange(max_squarings, dtype=w.dtype))[0]
    return result, terms


def phi_adaptive(m: Array, **series: Any) -> tuple[Array, Array]:
    """(φ(M), m) with φ(M) = Σ_k M^k / (k+1)! = M⁻¹(exp(M) − I), through one exponential;
    `series` are `expm_adaptive`'s keyword arguments (tolerance, max_terms, max_squarings).

    exp([[M, I], [0, 0]]) = [[exp(M), φ(M)], [0, I]], so φ inherits `expm_adaptive`'s scaling and
    squaring and stays accurate for any ‖M‖ (an unscaled φ series loses float32 accuracy past
    ‖M‖ ≈ 5). For low-rank exponentials exp(A B) = I + A φ(B A) B (MEF Sec. 4.2), B A is t×t, so
    this is cheap and exp(A B) is then applied to vectors without forming an n×n matrix.
    """
    m = jnp.asarray(m)
    _check_square(m, "phi_adaptive")
    t = m.shape[-1]
    top = jnp.concatenate([m, jnp.broadcast_to(jnp.eye(t, dtype=m.dtype), m.shape)], axis=-1)
    block = jnp.concatenate([top, jnp.zeros_like(top)], axis=-2)
    exp, terms = expm_adaptive(block, **series)
    return exp[..., :t, t:], terms
