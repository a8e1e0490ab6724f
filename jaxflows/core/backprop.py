"""How gradients flow through a sequence of bijectors: stored activations, remat, or inversion.

A sequence y = f_n ∘ … ∘ f_1 (x), log_det = Σ_i ld_i, is run in one of three gradient modes:

- ``"standard"``: reverse-mode autodiff stores every intermediate activation of every step.
- ``"remat"``: each step is wrapped in `jax.checkpoint`; the backward pass stores only the
  step inputs and recomputes each step's internals (memory grows with depth by one tensor a step).
- ``"invertible"``: a `jax.custom_vjp` stores only the sequence's output. The backward pass walks
  the steps in reverse, rebuilds each step's input from its output with the step's inverse, and
  pulls the cotangents back through that step alone (Gomez et al. 2017, "The reversible residual
  network", Sec. 4, applied here to whole flow steps). Activation memory is constant in depth;
  each step's forward runs twice and its inverse once. Reverse mode only: `jax.jvp`/`jacfwd`
  through an invertible sequence raise.

A step is a pure function ``step(variables, x, context, inverse) -> (y, log_det)`` where
``variables`` is a dict of variable collections and ``context`` the conditional flow's context
(an array or None, the same for every step; its gradient flows back through every step). Steps
come either as a Python list (`run_sequence`, heterogeneous layers, one trace each) or as one
function over variables stacked along axis 0 (`run_scan`, one `lax.scan`: a single trace whatever
the depth).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxflows.core.errors import InvalidArgumentError

Array = jax.Array
Step = Callable[[Any, Array, Any, bool], tuple[Array, Array]]

GRADIENT_MODES = ("standard", "remat", "invertible")

_SCAN_UNROLL: contextvars.ContextVar[int | bool] = contextvars.ContextVar("scan_unroll", default=1)


@contextlib.contextmanager
def scan_unroll(unroll: int | bool) -> Iterator[None]:
    """Trace every `Repeat` (`run_scan`, and Flax's scan when rng streams or mutable collections
    pass) with `unroll=unroll` inside this block.

    `True` unrolls fully: compile time grows with depth again, but XLA's cost analysis, which
    counts a loop body once, then sees every step (benchmarks/train_step.py counts FLOPs so).
    """
    token = _SCAN_UNROLL.set(unroll)
    try:
        yield
    finally:
        _SCAN_UNROLL.reset(token)


def check_gradient_mode(mode: str, owner: str) -> None:
    if mode not in GRADIENT_MODES:
        raise InvalidArgumentError(f"{owner}: gradient must be one of {GRADIENT_MODES}, got {mode!r}")


def _split_differentiable(tree: Any) -> tuple[Any, Any]:
    """(floating leaves, other leaves) of a pytree, each with `None` where the other has a leaf."""
    is_float = lambda a: jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact)
    floats = jax.tree_util.tree_map(lambda a: a if is_float(a) else None, tree)
    others = jax.tree_util.tree_map(lambda a: None if is_float(a) else a, tree)
    return floats, others


def _merge(floats: Any, others: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a, b: b if a is None else a, floats, others, is_leaf=lambda a: a is None
    )


def _step_pullback(
    step: Step, variables: Any, y: Array, context: Any, cotangents: tuple[Array, Array], inverse: bool
):
    """Rebuild a step's input from its output `y`; return (input, d input, d float variables,
    d float context leaves)."""
    x, _ = step(variables, y, context, not inverse)
    floats, others = _split_differentiable(variables)
    context_floats, context_others = _split_differentiable(context)

    def run(f, a, c):
        return step(_merge(f, others), a, _merge(c, context_others), inverse)

    _, pullback = jax.vjp(run, floats, x, context_floats)
    d_floats, d_x, d_context = pullback(cotangents)
    return x, d_x, d_floats, d_context


def _add(a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda u, v: None if u is None else u + v, a, b, is_leaf=lambda t: t is None
    )


def _zero_float_cotangents(tree: Any) -> Any:
    """Zero cotangents of a pytree's floating leaves (None elsewhere), to accumulate into."""
    return _split_differentiable(_zero_cotangents(tree))[0]


def _zero_cotangents(tree: Any) -> Any:
    """Cotangents of a variables pytree that receives none: zeros, float0 for integer leaves."""
    return jax.tree_util.tree_map(
        lambda a: (
            jnp.zeros_like(a)
            if jnp.issubdtype(a.dtype, jnp.inexact)
            else jnp.zeros(a.shape, jax.dtypes.float0)
        ),
        tree,
    )


def _with_float0(d_floats: Any, variables: Any) -> Any:
    zeros = _zero_cotangents(variables)
    return jax.tree_util.tree_map(
        lambda d, z: z if d is None else d, d_floats, zeros, is_leaf=lambda a: a is None
    )


def run_sequence(
    steps: Sequence[Step], variables: Sequence[Any], x: Array, context: Any, inverse: bool, gradient: str
) -> tuple[Array, Array]:
    """Apply `steps` in order (in reverse order when `inverse`), each with its own variables."""
    check_gradient_mode(gradient, "run_sequence")
    order = list(reversed(range(len(steps)))) if inverse else list(range(len(steps)))

    def run(all_variables, h, c):
        total = jnp.zeros(h.shape[0], h.dtype)
        for i in order:
            fn = jax.checkpoint(steps[i], static_argnums=(3,)) if gradient == "remat" else steps[i]
            h, ld = fn(all_variables[i], h, c, inverse)
            total = total + ld
        return h, total

    if gradient != "invertible":
        return run(list(variables), x, context)

    @jax.custom_vjp
    def invertible(all_variables, h, c):
        return run(all_variables, h, c)

    def fwd(all_variables, h, c):
        y, total = run(all_variables, h, c)
        return (y, total), (all_variables, y, c)

    def bwd(residuals, cotangents):
        all_variables, y, c = residuals
        d_y, d_log_det = cotangents
        d_variables = [None] * len(steps)
        d_context = _zero_float_cotangents(c)
        for i in reversed(order):
            y, d_y, d_floats, d_c = _step_pullback(
                steps[i], all_variables[i], y, c, (d_y, d_log_det), inverse
            )
            d_variables[i] = _with_float0(d_floats, all_variables[i])
            d_context = _add(d_context, d_c)
        return d_variables, d_y, _with_float0(d_context, c)

    invertible.defvjp(fwd, bwd)
    return invertible(list(variables), x, context)


def run_scan(
    step: Step, stacked: Any, x: Array, context: Any, inverse: bool, gradient: str
) -> tuple[Array, Array]:
    """Apply `step` once per slice of `stacked` (variables with a leading depth axis) in one `lax.scan`,
    every step with the same `context`.

    Forward runs the slices in order 0, 1, …; `inverse` runs them in reverse order.
    """
    check_gradient_mode(gradient, "run_scan")
    body_step = jax.checkpoint(step, static_argnums=(3,), prevent_cse=False) if gradient == "remat" else step

    def run(variables, h, c):
        def body(carry, v):
            h, total = carry
            h, ld = body_step(v, h, c, inverse)
            return (h, total + ld), None

        init = (h, jnp.zeros(h.shape[0], h.dtype))
        (h, total), _ = jax.lax.scan(body, init, variables, reverse=inverse, unroll=_SCAN_UNROLL.get())
        return h, total

    if gradient != "invertible":
        return run(stacked, x, context)

    @jax.custom_vjp
    def invertible(variables, h, c):
        return run(variables, h, c)

    def fwd(variables, h, c):
        out = run(variables, h, c)
        return out, (variables, out[0], c)

    def bwd(residuals, cotangents):
        variables, y, c = residuals
        d_y, d_log_det = cotangents

        def body(carry, v):
            y, d_y, d_context = carry
            x, d_x, d_floats, d_c = _step_pullback(step, v, y, c, (d_y, d_log_det), inverse)
            return (x, d_x, _add(d_context, d_c)), d_floats

        # The backward sweep visits the steps in the opposite order to the primal one.
        start = (y, d_y, _zero_float_cotangents(c))
        (_, d_x, d_context), d_floats = jax.lax.scan(
            body, start, variables, reverse=not inverse, unroll=_SCAN_UNROLL.get()
        )
        return _with_float0(d_floats, variables), d_x, _with_float0(d_context, c)

    invertible.defvjp(fwd, bwd)
    return invertible(stacked, x, context)
