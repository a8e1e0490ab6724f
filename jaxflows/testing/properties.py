"""The properties every bijector must have, as checks a user runs on their own layer.

    from jaxflows.testing import check_bijector
    check_bijector(lambda: MyLayer(), shape=(2, 4, 4, 2))   # raises PropertyCheckError on failure

Each check takes a `BijectorCase` (how to build the layer, the input shape, the tolerances).
Parameters are perturbed after `init` so zero-initialised layers (couplings, priors) are not the
identity and every check can fail. A conditional case gives `context`, a function
(key, batch) -> context, passed fixed to init and every call (the jacobian is that of x ↦ f(x, c)).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.core import gaussian_log_prob, sum_except_batch
from jaxflows.testing.assertions import assert_close, require


@dataclasses.dataclass(frozen=True)
class BijectorCase:
    """A layer under test: `make()` builds it; inputs have `shape` (batch first; small, since the
    float64 jacobian is D×D for D the size of one example).

    Attributes:
      perturb: std of the noise added to every float parameter after init.
      data: "normal" (1.5·N(0, 1) + 0.3) or "unit" (uniform in [0, 1)).
      round_trip_atol: tolerance of inverse(forward(x)) against x (float32).
      jit_atol: tolerance of jit against eager (XLA may fuse and reorder float32 arithmetic).
      jacobian: "jacfwd", or "jacrev" for reverse-mode-only layers.
      context: (key, batch) -> context, for conditional layers and flows.
      jacobian_rtol: tolerance of log_det against slogdet(jacobian) in float64 (None: 1e-7, and
        1e-10 with float32 parameters); looser only where the dense jacobian is itself inexact.
      gradient_rtol: tolerance of reverse-mode directional derivatives against central finite
        differences in float64 (relative to the derivative's scale).
      finite_differences: False only where the float64 map rounds through a lower precision
        (bfloat16 networks): finite differences of a rounded function are not its derivative, and
        `check_gradients_match_finite_differences` then checks nothing.
    """

    name: str
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]
    perturb: float = 0.05
    data: str = "normal"
    round_trip_atol: float = 1e-4
    jit_atol: float = 1e-5
    seed: int = 0
    jacobian: str = "jacfwd"
    context: Callable | None = None
    jacobian_rtol: float | None = None
    gradient_rtol: float = 1e-6
    finite_differences: bool = True

    def __str__(self) -> str:
        return self.name


def sample_input(case: BijectorCase, key, batch: int | None = None):
    shape = (batch or case.shape[0], *case.shape[1:])
    if case.data == "unit":
        return jax.random.uniform(key, shape)
    return 1.5 * jax.random.normal(key, shape) + 0.3


def perturb_params(variables, scale: float, key):
    """Add N(0, scale²) noise to every float parameter, drawn by NumPy from the words of the JAX
    `key` (deterministic in the key; no program compiled per parameter tree)."""
    words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    rng = np.random.default_rng(np.asarray(words, np.uint32).ravel())

    def noisy(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        leaf = np.asarray(leaf)
        return leaf + np.asarray(scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return {**variables, "params": jax.device_put(jax.tree_util.tree_map(noisy, variables["params"]))}


def case_context(case: BijectorCase, batch: int | None = None):
    """The case's fixed context for `batch` examples (None for an unconditional case)."""
    if case.context is None:
        return None
    return case.context(jax.random.key(case.seed + 1000), batch or case.shape[0])


@functools.cache
def setup_case(case: BijectorCase):
    """Module, perturbed variables and an input batch (cached per case)."""
    k_data, k_init, k_noise = jax.random.split(jax.random.key(case.seed), 3)
    module = case.make()
    x = sample_input(case, k_data)
    variables = jax.jit(module.init)(k_init, x, case_context(case))
    if "params" in variables and case.perturb:
        variables = perturb_params(variables, case.perturb, k_noise)
    # the input in NumPy: the checks' slicing and casting of it compile nothing
    return module, variables, np.asarray(x)


_JITTED: dict = {}


def _apply(module, variables, x, method, context=None):
    """Jitted `module.apply(..., method=method)`, compiled once per module and input signature."""
    key = (id(module), method)
    if key not in _JITTED:
        _JITTED[key] = (module, jax.jit(lambda v, a, c: module.apply(v, a, c, method=method)))
    return _JITTED[key][1](variables, x, context)


def check_round_trip(case: BijectorCase) -> None:
    """inverse(forward(x)) = x, and forward keeps the size and dtype of x."""
    module, variables, x = setup_case(case)
    c = case_context(case)
    y, _ = _apply(module, variables, x, "forward", c)
    name = "check_round_trip"
    require(y.size == x.size, name, f"forward changed the size: {x.shape} -> {y.shape}")
    require(y.dtype == x.dtype, name, f"forward changed the dtype: {x.dtype} -> {y.dtype}")
    x_back, _ = _apply(module, variables, y, "inverse", c)
    assert_close(
        x_back, x, check=name, quantity="inverse(forward(x)) against x", atol=case.round_trip_atol, rtol=1e-4
    )


def check_log_det_antisymmetric(case: BijectorCase) -> None:
    """The inverse's log-det at y = f(x) is minus the forward's and `log_det(x)` equals it, one per
    example."""
    module, variables, x = setup_case(case)
    c = case_context(case)
    y, ld_fwd = _apply(module, variables, x, "forward", c)
    name = "check_log_det_antisymmetric"
    require(
        ld_fwd.shape == (x.shape[0],),
        name,
        f"log_det must have shape (batch,) = ({x.shape[0]},), got {ld_fwd.shape}",
    )
    _, ld_inv = _apply(module, variables, y, "inverse", c)
    tol = 1e-4 * _magnitude(ld_fwd)
    assert_close(
        ld_inv, -np.asarray(ld_fwd), check=name, quantity="inverse log_det against −forward log_det", atol=tol
    )
    ld = _apply(module, variables, x, "log_det", c)
    assert_close(ld, ld_fwd, check=name, quantity="log_det(x) against forward's log_det", atol=tol)


def _magnitude(a) -> float:
    """max(1, max|a|), in NumPy (an eager jnp reduction would compile a program per shape)."""
    return max(1.0, float(np.max(np.abs(np.asarray(a)), initial=0.0)))


def _to_float64(tree):
    """Float leaves cast to float64 NumPy arrays (exact; no compiled casts), others unchanged."""
    cast = lambda a: np.asarray(a, np.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return None if tree is None else jax.tree_util.tree_map(cast, tree)


# Examples of the batch whose jacobians are checked, each against its own (the dense jacobian of
# one example is D×D; the batch's is (nD)×(nD)).
JACOBIAN_EXAMPLES = 3

_PER_EXAMPLE: dict = {}


def _per_example(module, method: str, jacobian: str):
    """Jitted (variables, points, context) -> (jacobians (n, D, D), outputs, log_dets): each example
    of `points` mapped alone, as a batch of one, under `jax.vmap`, with the dense jacobian of its
    flattened map (compiled once per module, method and input signature)."""
    key = (id(module), method, jacobian)
    if key not in _PER_EXAMPLE:

        def one(variables, point, context):
            context = jax.tree_util.tree_map(lambda a: a[None], context)

            def flat(v):
                y, log_det = module.apply(variables, v.reshape((1, *point.shape)), context, method=method)
                return y.reshape(-1), (y[0], log_det[0])

            differentiate = jax.jacfwd if jacobian == "jacfwd" else jax.jacrev
            dense, (y, log_det) = differentiate(flat, has_aux=True)(point.reshape(-1))
            return dense, y, log_det

        _PER_EXAMPLE[key] = (module, jax.jit(jax.vmap(one, in_axes=(None, 0, 0))))
    return _PER_EXAMPLE[key][1]


def _check_jacobian(case, module, variables, points, method, context, check, rtol, atol):
    """On a batch `points` of a few examples: the batched output and log-det equal each example's
    mapped alone (`jax.vmap`; a log-det or output that mixes examples fails), and each example's
    log-det equals log|det| of its own dense jacobian."""
    y, log_det = _apply(module, variables, points, method, context)
    n = points.shape[0]
    require(
        log_det.shape == (n,),
        check,
        f"{method}: log_det must have shape (batch,) = ({n},), got {log_det.shape}",
    )
    jacobians, y_alone, log_det_alone = _per_example(module, method, case.jacobian)(
        variables, points, context
    )
    scale = _magnitude(log_det_alone)
    assert_close(
        log_det,
        log_det_alone,
        check=check,
        quantity=f"{method}: batched log_det against each example's alone (jax.vmap)",
        rtol=rtol,
        atol=atol * scale,
    )
    assert_close(
        y,
        y_alone,
        check=check,
        quantity=f"{method}: batched output against each example's alone (jax.vmap)",
        rtol=rtol,
        atol=atol * _magnitude(y_alone),
    )
    sign, expected = np.linalg.slogdet(np.asarray(jacobians))
    singular = [i for i in range(n) if sign[i] == 0]
    require(not singular, check, f"{method}: the jacobian of example(s) {singular} is singular")
    quantity = f"{method}: each example's log_det against slogdet(its jacobian)"
    assert_close(log_det, expected, check=check, quantity=quantity, rtol=rtol, atol=atol)


def _examples(x):
    return x[: min(x.shape[0], JACOBIAN_EXAMPLES)]


def check_log_det_matches_jacobian(case: BijectorCase) -> None:
    """On the first 2-3 examples of the batch, all in float64: each example's log_det equals
    log|det| of the dense jacobian of its own flattened map, and the batched output and log-det
    equal each example's mapped alone (`jax.vmap`), for forward and inverse."""
    module, variables, x = setup_case(case)
    name = "check_log_det_matches_jacobian"
    with jax.enable_x64(True):
        variables64 = _to_float64(variables)
        xs = np.asarray(_examples(x), np.float64)
        c = _to_float64(case_context(case, xs.shape[0]))
        for method in ("forward", "inverse"):
            points = xs if method == "forward" else _apply(module, variables64, xs, "forward", c)[0]
            _, log_det = _apply(module, variables64, points, method, c)
            require(
                log_det.dtype == jnp.float64, name, f"{method}: log_det is {log_det.dtype} for float64 input"
            )
            rtol = case.jacobian_rtol or 1e-7
            _check_jacobian(case, module, variables64, points, method, c, name, rtol, 1e-7)


def check_float64_inputs_with_float32_params(case: BijectorCase) -> None:
    """float32 parameters (as `init` makes them) with float64 inputs: every derived quantity is
    computed in the promoted dtype, float64, so forward and inverse equal, to float64 rounding, the
    same maps with the parameters cast to float64 (exact casts; `check_log_det_matches_jacobian`
    checks those against the jacobian), and the round trip is float64-exact. A layer that builds
    W⁻¹ or a log-det in float32 is off by ~1e-7."""
    module, variables, x = setup_case(case)
    name = "check_float64_inputs_with_float32_params"
    floats = [a for a in jax.tree_util.tree_leaves(variables) if jnp.issubdtype(a.dtype, jnp.floating)]
    require(all(a.dtype == jnp.float32 for a in floats), name, "init should make float32 parameters")
    with jax.enable_x64(True):
        x1 = np.asarray(_examples(x), np.float64)
        c1 = _to_float64(case_context(case, x1.shape[0]))
        variables64 = _to_float64(variables)
        y, ld_fwd = _apply(module, variables, x1, "forward", c1)
        x_back, ld_inv = _apply(module, variables, y, "inverse", c1)
        computed = {"forward y": y, "forward log_det": ld_fwd, "inverse x": x_back, "inverse log_det": ld_inv}
        for what, value in computed.items():
            require(
                value.dtype == jnp.float64,
                name,
                f"{what} is {value.dtype}; expected float64 (the promoted dtype)",
            )
        atol = 1e-10 * _magnitude(x1)
        assert_close(x_back, x1, check=name, quantity="float64 round trip", rtol=0, atol=atol)
        rtol = case.jacobian_rtol or 1e-10
        y64, ld_fwd64 = _apply(module, variables64, x1, "forward", c1)
        x64, ld_inv64 = _apply(module, variables64, y, "inverse", c1)
        expected = {
            "forward y": y64,
            "forward log_det": ld_fwd64,
            "inverse x": x64,
            "inverse log_det": ld_inv64,
        }
        for what, value in computed.items():
            scale = _magnitude(expected[what])
            assert_close(
                value,
                expected[what],
                check=name,
                quantity=f"{what} with float32 parameters against float64 ones",
                rtol=rtol,
                atol=1e-9 * scale,
            )


def check_jit_matches_eager(case: BijectorCase) -> None:
    """forward and inverse give the same values under `jax.jit` as eagerly."""
    module, variables, x = setup_case(case)
    c = case_context(case)
    y, _ = _apply(module, variables, x, "forward", c)
    for method, point in (("forward", x), ("inverse", y)):
        eager = module.apply(variables, jnp.asarray(point), c, method=method)
        jitted = _apply(module, variables, point, method, c)
        for what, a, b in zip(("output", "log_det"), jitted, eager, strict=True):
            assert_close(
                a,
                b,
                check="check_jit_matches_eager",
                quantity=f"jitted {method} {what} against eager",
                rtol=case.jit_atol,
                atol=case.jit_atol,
            )


def check_gradients_finite(case: BijectorCase) -> None:
    """Gradients of a maximum-likelihood loss with respect to parameters and inputs are finite,
    and the loss depends on the parameters."""
    module, variables, x = setup_case(case)
    params = variables.get("params", {})
    rest = {k: v for k, v in variables.items() if k != "params"}
    c = case_context(case)

    def loss(p, inputs):
        y, log_det = module.apply({"params": p, **rest}, inputs, c, method="forward")
        return -jnp.mean(sum_except_batch(gaussian_log_prob(y)) + log_det)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    name = "check_gradients_finite"
    paths = jax.tree_util.tree_flatten_with_path(grads)[0]
    for path, g in paths:
        bad = int(np.size(g) - np.isfinite(np.asarray(g)).sum())
        require(bad == 0, name, f"{bad} non-finite gradient entries at {jax.tree_util.keystr(path)}")
    if jax.tree_util.tree_leaves(params):
        total = sum(float(np.abs(np.asarray(g)).sum()) for g in jax.tree_util.tree_leaves(grads[0]))
        require(total > 0, name, "the loss does not depend on the parameters (all gradients are zero)")


# Central finite differences in float64: step h along a direction of N(0, 1) entries, at h and h/2
# combined by Richardson extrapolation (truncation error ~h⁴, rounding ~1e-16·|loss|/h).
FINITE_DIFFERENCE_STEP = 1e-5

_GRADIENTS: dict = {}


def _weighted_loss(module, variables, point, context, method, a, b):
    """Σ a·output + Σ b·log_det of `method` at `point`: every output and every log-det enters it."""
    out, log_det = module.apply(variables, point, context, method=method)
    return jnp.sum(a * out) + jnp.sum(b * log_det)


def _loss_gradients(module, method: str):
    """Jitted (params, rest, point, context, a, b) -> reverse-mode gradients of `_weighted_loss` with
    respect to the parameters and the point (compiled once per module, method and signature)."""
    key = (id(module), method)
    if key not in _GRADIENTS:

        def gradients(params, rest, point, context, a, b):
            loss = lambda p, z: _weighted_loss(module, {"params": p, **rest}, z, context, method, a, b)
            return jax.grad(loss, argnums=(0, 1))(params, point)

        _GRADIENTS[key] = (module, jax.jit(gradients))
    return _GRADIENTS[key][1]


def _shifted(tree, direction, step):
    add = lambda a, d: a + np.asarray(step * d, a.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return jax.tree_util.tree_map(add, tree, direction)


def _finite_difference(loss, tree, direction) -> tuple[float, float]:
    """Central differences D(h) and D(h/2) of `loss` along `direction`, combined (Richardson) so the
    h² error cancels: layers of large curvature (a spline's inverse near a small knot slope) need it.
    Returns the estimate and the differences' own error: the larger of |D(h) − D(h/2)| (large
    where the step is still too coarse for the map's curvature) and the gap between the one-sided
    differences at h/2 (large at a kink within h/2 of the point, e.g. a ReLU unit crossing zero,
    where reverse mode returns one side's slope and the central difference their mean)."""
    h = FINITE_DIFFERENCE_STEP
    at = lambda step: loss(_shifted(tree, direction, step))
    plus, minus, centre = at(h / 2), at(-h / 2), at(0.0)
    at_h = (at(h) - at(-h)) / (2 * h)
    at_half = (plus - minus) / h
    one_sided_gap = abs((plus - centre) - (centre - minus)) / (h / 2)
    return (4 * at_half - at_h) / 3, max(abs(at_half - at_h), one_sided_gap)


def check_gradients_match_finite_differences(case: BijectorCase) -> None:
    """In float64, on the first 2-3 examples: reverse-mode derivatives of a loss of forward's output
    and log-det, and of one of inverse's, with respect to the parameters and to the inputs, equal
    central finite differences along random directions, so wrong derivatives are caught, including
    the implicit derivatives of an inverse found by root finding or a fixed-point iteration. The
    tolerance is `gradient_rtol`·‖∇‖·‖direction‖ plus the differences' own error estimate. The
    differences evaluate the jitted map the jacobian check compiled: only the gradients compile."""
    if not case.finite_differences:
        return
    module, variables, x = setup_case(case)
    name = "check_gradients_match_finite_differences"
    rng = np.random.default_rng(case.seed + 2000)
    normal_like = lambda tree: jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape), tree)
    with jax.enable_x64(True):
        variables64 = _to_float64(variables)
        params = variables64.get("params", {})
        rest = {k: v for k, v in variables64.items() if k != "params"}
        xs = np.asarray(_examples(x), np.float64)
        c = _to_float64(case_context(case, xs.shape[0]))
        ys = np.asarray(_apply(module, variables64, xs, "forward", c)[0])
        for method, point in (("forward", xs), ("inverse", ys)):
            out, log_det = _apply(module, variables64, point, method, c)
            a, b = rng.standard_normal(out.shape), rng.standard_normal(log_det.shape)

            def loss(p, z, method=method, a=a, b=b):
                out, log_det = _apply(module, {"params": p, **rest}, z, method, c)
                return float(np.sum(a * np.asarray(out)) + np.sum(b * np.asarray(log_det)))

            grads = _loss_gradients(module, method)(params, rest, point, c, a, b)
            directions = (normal_like(params), normal_like(point))
            numeric = (
                _finite_difference(lambda p, z=point: loss(p, z), params, directions[0]),
                _finite_difference(lambda z: loss(params, z), point, directions[1]),
            )
            for g, d, (fd, fd_error), wrt in zip(
                grads, directions, numeric, ("parameters", "inputs"), strict=True
            ):
                leaves = list(zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(d), strict=True))
                if not leaves:
                    continue
                analytic = sum(float(np.vdot(np.asarray(gi), di)) for gi, di in leaves)
                # the size a directional derivative has without cancellation: ‖∇‖·‖direction‖
                scale = math.sqrt(sum(float(np.vdot(np.asarray(gi), gi)) for gi, _ in leaves))
                scale *= math.sqrt(sum(float(np.vdot(di, di)) for _, di in leaves))
                assert_close(
                    analytic,
                    fd,
                    check=name,
                    quantity=f"{method}: directional derivative along random {wrt}, reverse mode "
                    "against central finite differences",
                    atol=case.gradient_rtol * scale + fd_error,
                )


PROPERTIES = (
    check_round_trip,
    check_log_det_antisymmetric,
    check_log_det_matches_jacobian,
    check_float64_inputs_with_float32_params,
    check_jit_matches_eager,
    check_gradients_finite,
    check_gradients_match_finite_differences,
)


def check_bijector(make: Callable[[], nn.Module], shape: tuple[int, ...], **case_fields) -> None:
    """Run every property check on the layer `make()` builds, for inputs of `shape` (batch first);
    `case_fields` are `BijectorCase`'s tolerances and options. Raises `PropertyCheckError` naming
    the first failing check, the quantity, the tolerance and the worst element."""
    case = BijectorCase(
        case_fields.pop("name", getattr(make, "__name__", "bijector")), make, tuple(shape), **case_fields
    )
    for check in PROPERTIES:
        check(case)
    return None
