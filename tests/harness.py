"""The property harness every bijector goes through.

A test module lists `BijectorCase`s and parametrizes over `PROPERTIES`:

    @pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_bijector_properties(case, check):
        check(case)

Parameters are perturbed after `init` so zero-initialised layers (couplings, priors) are not the
identity and every check can fail. A conditional case gives `context`, a function (key, batch) ->
context; every check then passes that fixed context to init and to every call (the jacobian is
the one of x ↦ f(x, c) with c held fixed).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.core import gaussian_log_prob, sum_except_batch


@dataclasses.dataclass(frozen=True)
class BijectorCase:
    name: str
    make: Callable[[], nn.Module]
    shape: tuple[int, int, int, int]  # (batch, height, width, channels); small: the jacobian is D×D
    perturb: float = 0.05  # std of the noise added to every float parameter after init
    data: str = "normal"  # "normal" (shifted, scaled) or "unit" (uniform in [0, 1))
    round_trip_atol: float = 1e-4
    jit_atol: float = 1e-5  # XLA may fuse and reorder float32 arithmetic under jit
    seed: int = 0
    jacobian: str = "jacfwd"  # "jacrev" for reverse-mode-only bijectors (gradient="invertible")
    context: Callable | None = None  # (key, batch) -> context, for conditional layers and flows
    # relative tolerance of log_det against slogdet(jacobian) in float64; None: 1e-7, and 1e-10 with
    # float32 parameters. Looser only where the dense jacobian itself is not exact (bfloat16 networks
    # inside a composition: their tangents are rounded, so jacfwd is not a linear map in floating point)
    jacobian_rtol: float | None = None

    def __str__(self) -> str:
        return self.name


def sample_input(case: BijectorCase, key, batch: int | None = None):
    shape = (batch or case.shape[0], *case.shape[1:])
    if case.data == "unit":
        return jax.random.uniform(key, shape)
    return 1.5 * jax.random.normal(key, shape) + 0.3


def perturb_params(variables, scale: float, key):
    """Add N(0, scale²) noise to every float parameter; one compiled program for the whole tree
    (eager, each leaf's shape would compile its own random and add ops)."""
    return {**variables, "params": _perturbed(variables["params"], scale, key)}


@jax.jit
def _perturbed(params, scale, key):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    noisy = [
        leaf + jnp.asarray(scale, leaf.dtype) * jax.random.normal(k, leaf.shape, leaf.dtype)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
        else leaf
        for leaf, k in zip(leaves, keys, strict=False)
    ]
    return jax.tree_util.tree_unflatten(treedef, noisy)


def case_context(case: BijectorCase, batch: int | None = None):
    """The case's fixed context for `batch` examples (None for an unconditional case)."""
    if case.context is None:
        return None
    return case.context(jax.random.key(case.seed + 1000), batch or case.shape[0])


@functools.cache
def setup_case(case: BijectorCase):
    """Module, perturbed variables and an input batch."""
    k_data, k_init, k_noise = jax.random.split(jax.random.key(case.seed), 3)
    module = case.make()
    x = sample_input(case, k_data)
    variables = jax.jit(module.init)(k_init, x, case_context(case))
    if "params" in variables and case.perturb:
        variables = perturb_params(variables, case.perturb, k_noise)
    return module, variables, x


_JITTED: dict = {}


def _apply(module, variables, x, method, context=None):
    """Jitted `module.apply(..., method=method)`, compiled once per module (modules live as long as
    `setup_case`'s cache) and input signature."""
    key = (id(module), method)
    if key not in _JITTED:
        _JITTED[key] = (module, jax.jit(lambda v, a, c: module.apply(v, a, c, method=method)))
    return _JITTED[key][1](variables, x, context)


def check_round_trip(case: BijectorCase) -> None:
    module, variables, x = setup_case(case)
    c = case_context(case)
    y, _ = _apply(module, variables, x, "forward", c)
    assert y.size == x.size and y.dtype == x.dtype
    x_back, _ = _apply(module, variables, y, "inverse", c)
    np.testing.assert_allclose(x_back, x, atol=case.round_trip_atol, rtol=1e-4)


def check_log_det_antisymmetric(case: BijectorCase) -> None:
    module, variables, x = setup_case(case)
    c = case_context(case)
    y, ld_fwd = _apply(module, variables, x, "forward", c)
    assert ld_fwd.shape == (x.shape[0],), f"log_det must be per example, got {ld_fwd.shape}"
    _, ld_inv = _apply(module, variables, y, "inverse", c)
    tol = 1e-4 * max(1.0, float(jnp.max(jnp.abs(ld_fwd))))
    np.testing.assert_allclose(ld_inv, -ld_fwd, atol=tol)
    np.testing.assert_allclose(_apply(module, variables, x, "log_det", c), ld_fwd, atol=tol)


def _to_float64(context):
    if context is None or not jnp.issubdtype(context.dtype, jnp.floating):
        return context
    return jnp.asarray(context, jnp.float64)


def check_log_det_matches_jacobian(case: BijectorCase) -> None:
    """log_det equals log|det| of the dense jacobian of the flattened map, in float64."""
    module, variables, x = setup_case(case)
    with jax.enable_x64(True):
        variables64 = jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            variables,
        )
        x1 = jnp.asarray(x[:1], jnp.float64)
        c1 = _to_float64(case_context(case, 1))
        for method in ("forward", "inverse"):
            point = x1 if method == "forward" else _apply(module, variables64, x1, "forward", c1)[0]

            def flat(v, method=method, shape=point.shape):
                out, _ = _apply(module, variables64, v.reshape(shape), method, c1)
                return out.reshape(-1)

            jacobian = jax.jacfwd if case.jacobian == "jacfwd" else jax.jacrev
            jac = jax.jit(jacobian(flat))(point.reshape(-1))
            sign, expected = jnp.linalg.slogdet(jac)
            assert sign != 0, f"{method}: singular jacobian"
            _, log_det = _apply(module, variables64, point, method, c1)
            assert log_det.dtype == jnp.float64
            rtol = case.jacobian_rtol or 1e-7
            np.testing.assert_allclose(log_det[0], expected, rtol=rtol, atol=1e-7, err_msg=method)


def check_float64_inputs_with_float32_params(case: BijectorCase) -> None:
    """float32 parameters (as `init` makes them) and float64 inputs: every derived quantity is
    computed in the promoted dtype, float64, so the round trip and the log-det against the dense
    float64 jacobian are float64-exact (a layer that builds W⁻¹ in float32 is off by ~1e-7)."""
    module, variables, x = setup_case(case)
    floats = [a for a in jax.tree_util.tree_leaves(variables) if jnp.issubdtype(a.dtype, jnp.floating)]
    assert all(a.dtype == jnp.float32 for a in floats), "init should make float32 parameters"
    with jax.enable_x64(True):
        x1 = jnp.asarray(x[:1], jnp.float64)
        c1 = _to_float64(case_context(case, 1))
        y, ld_fwd = _apply(module, variables, x1, "forward", c1)
        assert y.dtype == ld_fwd.dtype == jnp.float64, (y.dtype, ld_fwd.dtype)
        x_back, ld_inv = _apply(module, variables, y, "inverse", c1)
        assert x_back.dtype == ld_inv.dtype == jnp.float64, (x_back.dtype, ld_inv.dtype)
        np.testing.assert_allclose(x_back, x1, rtol=0, atol=1e-10 * max(1.0, float(jnp.abs(x1).max())))
        for method, point, log_det in (("forward", x1, ld_fwd), ("inverse", y, ld_inv)):

            def flat(v, method=method, shape=point.shape):
                return _apply(module, variables, v.reshape(shape), method, c1)[0].reshape(-1)

            jacobian = jax.jacfwd if case.jacobian == "jacfwd" else jax.jacrev
            _, expected = jnp.linalg.slogdet(jax.jit(jacobian(flat))(point.reshape(-1)))
            rtol = case.jacobian_rtol or 1e-10
            np.testing.assert_allclose(log_det[0], expected, rtol=rtol, atol=1e-9, err_msg=method)


def check_jit_matches_eager(case: BijectorCase) -> None:
    module, variables, x = setup_case(case)
    c = case_context(case)
    y, _ = _apply(module, variables, x, "forward", c)
    for method, point in (("forward", x), ("inverse", y)):
        eager = module.apply(variables, point, c, method=method)
        jitted = _apply(module, variables, point, method, c)
        for a, b in zip(eager, jitted, strict=True):
            np.testing.assert_allclose(a, b, rtol=case.jit_atol, atol=case.jit_atol)


def check_gradients_finite(case: BijectorCase) -> None:
    """Gradients of a maximum-likelihood loss with respect to parameters and inputs are finite."""
    module, variables, x = setup_case(case)
    params = variables.get("params", {})
    rest = {k: v for k, v in variables.items() if k != "params"}
    c = case_context(case)

    def loss(p, inputs):
        y, log_det = module.apply({"params": p, **rest}, inputs, c, method="forward")
        return -jnp.mean(sum_except_batch(gaussian_log_prob(y)) + log_det)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    for g in jax.tree_util.tree_leaves(grads):
        assert bool(jnp.all(jnp.isfinite(g))), "non-finite gradient"
    if jax.tree_util.tree_leaves(params):
        norms = [float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads[0])]
        assert sum(norms) > 0, "loss does not depend on the parameters"


PROPERTIES = [
    check_round_trip,
    check_log_det_antisymmetric,
    check_log_det_matches_jacobian,
    check_float64_inputs_with_float32_params,
    check_jit_matches_eager,
    check_gradients_finite,
]
