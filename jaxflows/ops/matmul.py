"""Batched products of small matrices (..., n, k) @ (..., k, m) whose gradients stay fast on CPU.

Reverse mode of `a @ b` needs aᵀ·g, a batched product contracting the *first* matrix axis of its
left operand. XLA:CPU folds the transpose into the dot and then runs that contraction 10–20×
slower than a plain batched product (1568 8×8 matrices: 2.5 ms against 0.15 ms; the gradient of a
matrix-exponential series was 8× its forward pass, `python -m benchmarks.small_matmul`).
`batched_matmul` is a bilinear primitive whose transposes first write the transposed operand to
memory (an optimisation barrier stops XLA folding it back), so both gradients are plain batched
products. XLA:CPU is also 10–15× slower on products with a contraction of 4–7 and both other
sides 2–7 (1568 4×4 products: 2.1 ms; as a broadcast multiply and sum: 0.15 ms), the sizes of
MEF's per-pixel matrices; on CPU those run as the broadcast sum. Other backends keep `jnp.matmul`
and its usual transposes. Forward mode, reverse mode and `vmap` all work. Every product, the
transposes' included, runs at `precision` (default `BIJECTION_PRECISION`: the series and squarings
of the matrix exponentials are the bijection's own maths, exact on GPU and TPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxflows.core.errors import ShapeError
from jaxflows.ops.precision import BIJECTION_PRECISION, Precision

Array = jax.Array

batched_matmul_p = Primitive("batched_matmul")


def _swap(x: Array) -> Array:
    return jnp.swapaxes(x, -1, -2)


def _slow_on_cpu(n: int, k: int, m: int) -> bool:
    """Sizes (measured, XLA:CPU in jax 0.10) at which the broadcast sum beats the batched dot."""
    return 4 <= k <= 7 and 2 <= n <= 7 and 2 <= m <= 7


def _product(a: Array, b: Array, *, precision: Precision) -> Array:
    return jnp.matmul(a, b, precision=precision)


def _cpu_product(a: Array, b: Array, *, precision: Precision) -> Array:
    if _slow_on_cpu(a.shape[-2], a.shape[-1], b.shape[-1]):
        return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)
    return _product(a, b, precision=precision)


def _transposed_in_memory(x: Array) -> Array:
    """xᵀ over the last two axes, materialised on CPU so that a following product is a plain one."""
    return lax.platform_dependent(x, cpu=lambda t: lax.optimization_barrier(_swap(t)), default=_swap)


def batched_matmul(a: Array, b: Array, precision: Precision = BIJECTION_PRECISION) -> Array:
    """a @ b over the last two axes, with the same leading (batch) shape on both operands."""
    if a.ndim < 2 or b.ndim != a.ndim or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ShapeError(
            f"batched_matmul: expected (..., n, k) and (..., k, m) with the same leading shape, "
            f"got {a.shape} and {b.shape}"
        )
    return batched_matmul_p.bind(a, b, precision=precision)


def _abstract_eval(a, b, *, precision):
    return jax.core.ShapedArray((*a.shape[:-1], b.shape[-1]), jnp.result_type(a.dtype, b.dtype))


def _left_transpose(g, a, b, *, precision):
    return batched_matmul(g, _transposed_in_memory(b), precision)


def _right_transpose(g, a, b, *, precision):
    return batched_matmul(_transposed_in_memory(a), g, precision)


def _batch(args, dims, *, precision):
    a, b = args
    size = next(x.shape[d] for x, d in zip(args, dims, strict=True) if d is not None)
    a, b = (
        jnp.broadcast_to(x[None], (size, *x.shape)) if d is None else jnp.moveaxis(x, d, 0)
        for x, d in zip((a, b), dims, strict=True)
    )
    return batched_matmul(a, b, precision), 0


batched_matmul_p.def_impl(_product)
batched_matmul_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(batched_matmul_p, mlir.lower_fun(_product, multiple_results=False))
mlir.register_lowering(batched_matmul_p, mlir.lower_fun(_cpu_product, multiple_results=False), platform="cpu")
ad.defbilinear(batched_matmul_p, _left_transpose, _right_transpose)
batching.primitive_batchers[batched_matmul_p] = _batch
