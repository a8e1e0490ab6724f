"""`Repeat` (scanned flow steps) and the gradient modes: standard, remat, invertible backprop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.analysis import layer_variables, log_det_breakdown
from jaxflows.bijectors import ActNorm, AdditiveCoupling, AffineCoupling, Conv1x1LU
from jaxflows.core import Bijector, Chain, Repeat, gaussian_log_prob, sum_except_batch
from jaxflows.models import glow
from tests.harness import BijectorCase, glow_case, perturb_params, property_params


def _step(hidden=8):
    return Chain(
        [ActNorm(), Conv1x1LU(), AffineCoupling(hidden=hidden)], names=["actnorm", "conv", "coupling"]
    )


CASES = [
    BijectorCase("repeat_glow_steps", lambda: Repeat(_step(), 3), (2, 4, 4, 4)),
    BijectorCase("repeat_remat", lambda: Repeat(_step(), 2, gradient="remat"), (2, 4, 4, 4)),
    BijectorCase(
        "repeat_invertible",
        lambda: Repeat(_step(), 2, gradient="invertible"),
        (2, 4, 4, 4),
        jacobian="jacrev",
    ),
    BijectorCase(
        "chain_invertible",
        lambda: Chain([ActNorm(), Conv1x1LU(), AdditiveCoupling(hidden=8)], gradient="invertible"),
        (2, 4, 4, 4),
        jacobian="jacrev",
    ),
    glow_case(
        "glow_invertible",
        (4, 4, 2),
        {"jacobian": "jacrev"},
        levels=2,
        depth=2,
        hidden=8,
        gradient="invertible",
    ),
]
# a whole Glow in the invertible mode runs with -m slow; repeat_invertible and chain_invertible
# check the mode's mechanism in the default run
SLOW = {"glow_invertible", "repeat_remat"}  # remat: the same maps; its gradients are tested below


@pytest.mark.parametrize(("case", "check"), property_params(CASES, slow=SLOW))
def test_repeat_properties(case, check):
    check(case)


def _nll(model, variables):
    """Gradients of a maximum-likelihood loss with respect to the parameters and the input."""
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss(params, x):
        y, log_det = model.apply({"params": params, **rest}, x, method="forward")
        return -jnp.mean(sum_except_batch(gaussian_log_prob(y)) + log_det)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _max_relative_error(tree, reference):
    errors = jax.tree_util.tree_map(
        lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30)), tree, reference
    )
    return max(jax.tree_util.tree_leaves(errors))


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_invertible_and_remat_gradients_equal_standard_backprop(x64):
    """The issue's contract: invertible backprop = standard backprop to 1e-4 (float32), 1e-10 (float64)."""
    tolerance = 1e-10 if x64 else 1e-4
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        x = jax.random.uniform(jax.random.key(0), (16, 4, 4, 2), dtype)  # ActNorm's init batch
        modes = ("standard", "invertible") if x64 else ("standard", "remat", "invertible")
        flows = {mode: glow((4, 4, 2), levels=2, depth=2, hidden=8, gradient=mode) for mode in modes}
        variables = jax.jit(flows["standard"].init)(jax.random.key(1), x)
        variables = perturb_params(variables, 0.05, jax.random.key(2))
        variables = jax.tree_util.tree_map(
            lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, variables
        )
        reference = _nll(flows["standard"], variables)(variables["params"], x[:4])
        for mode in modes[1:]:
            result = _nll(flows[mode], variables)(variables["params"], x[:4])
            assert _max_relative_error(result, reference) < tolerance, mode


def test_invertible_chain_of_heterogeneous_layers_matches_standard():
    layers = [
        ActNorm(),
        Conv1x1LU(),
        AffineCoupling(hidden=8),
        ActNorm(),
        AdditiveCoupling(hidden=8, parity=1),
    ]
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    standard = Chain(layers)
    variables = perturb_params(standard.init(jax.random.key(1), x), 0.1, jax.random.key(2))
    reference = _nll(standard, variables)(variables["params"], x)
    result = _nll(Chain(layers, gradient="invertible"), variables)(variables["params"], x)
    assert _max_relative_error(result, reference) < 1e-4


def test_invertible_backprop_through_the_inverse_direction():
    """Sampling-side gradients (e.g. a reverse-KL loss) flow through inverse() in invertible mode too."""
    flow = Repeat(_step(), 3)
    inv_flow = Repeat(_step(), 3, gradient="invertible")
    x = jax.random.normal(jax.random.key(3), (2, 4, 4, 4))
    z = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    variables = perturb_params(flow.init(jax.random.key(1), x), 0.05, jax.random.key(2))

    def loss(model):
        def f(params):
            x, log_det = model.apply({**variables, "params": params}, z, method="inverse")
            return jnp.sum(x**2) - jnp.sum(log_det)

        return jax.jit(jax.grad(f))(variables["params"])

    assert _max_relative_error(loss(inv_flow), loss(flow)) < 1e-4


TRACES: list[int] = []


class _CountTraces(Bijector):
    """The identity; counts in TRACES how many times its forward is traced."""

    def forward(self, x, context=None):
        TRACES.append(1)
        return x, jnp.zeros(x.shape[0], x.dtype)

    def inverse(self, y, context=None):
        return y, jnp.zeros(y.shape[0], y.dtype)


@pytest.mark.parametrize("gradient", ["standard", "remat", "invertible"])
def test_a_repeat_traces_its_step_once_whatever_its_length(gradient):
    x = jnp.ones((2, 2, 2, 2))
    traces = {}
    for length in (2, 16):
        model = Repeat(Chain([ActNorm(), _CountTraces()]), length, gradient=gradient)
        variables = model.init(jax.random.key(0), x)
        TRACES.clear()
        loss = lambda p, model=model, variables=variables: model.apply({**variables, "params": p}, x)[1].sum()
        jax.jit(jax.grad(loss)).lower(variables["params"])
        traces[length] = len(TRACES)
    assert traces[2] == traces[16] <= 2, traces  # invertible traces the step for its forward and backward


def test_repeat_stacks_variables_and_initialises_each_step_on_its_own_input():
    model = Repeat(_step(), 3)
    x = 2.0 * jax.random.normal(jax.random.key(0), (16, 4, 4, 4)) + 1.0
    variables = model.init(jax.random.key(1), x)
    assert variables["params"]["actnorm"]["bias"].shape == (3, 4)
    assert variables["constants"]["conv"]["permutation"].shape == (3, 4)
    perms = variables["constants"]["conv"]["permutation"]
    assert not all(np.array_equal(perms[0], p) for p in perms[1:]), "each step gets its own random init"
    # ActNorm's data-dependent init standardises what each step's actnorm receives.
    h = x
    for k in range(3):
        step_vars = Repeat.step_variables(variables, k)
        normed, _ = ActNorm().apply(layer_variables(_step(), step_vars, "actnorm"), h)
        np.testing.assert_allclose(normed.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
        np.testing.assert_allclose(normed.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
        h, _ = _step().apply(step_vars, h)
    # and the scanned forward equals running the steps one by one
    y, _ = model.apply(variables, x)
    np.testing.assert_allclose(y, h, atol=1e-5)


def test_breakdown_names_repeated_steps_by_index_and_layer_variables_slices_them():
    flow = glow((4, 4, 1), levels=1, depth=3, hidden=8, gradient="invertible")
    x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1))
    variables = perturb_params(flow.init(jax.random.key(1), x), 0.05, jax.random.key(2))
    terms = log_det_breakdown(flow, variables, x)
    assert [k for k in terms if "/flow_steps/" in k] == [
        f"level1/flow_steps/{k}/{name}" for k in range(3) for name in ("actnorm", "conv", "coupling")
    ]
    np.testing.assert_allclose(sum(terms.values()), flow.apply(variables, x), rtol=1e-5)
    params = layer_variables(flow, variables, "level1/flow_steps/2/actnorm")["params"]
    stacked = variables["params"]["bijector"]["level1"]["flow_steps"]["actnorm"]
    np.testing.assert_array_equal(params["log_scale"], stacked["log_scale"][2])


def test_checkerboard_levels_repeat_pairs_of_steps_and_keep_an_odd_last_step():
    flow = glow((4, 4, 1), levels=1, depth=3, hidden=8, mask="checkerboard")
    x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1))
    params = flow.init(jax.random.key(1), x)["params"]["bijector"]["level1"]
    assert set(params) == {"flow_steps", "last_step", "prior"}
    assert set(params["flow_steps"]) == {"parity0", "parity1"}
    assert params["flow_steps"]["parity0"]["actnorm"]["bias"].shape == (1, 4)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Repeat(_step(), 0), "length must be an integer ≥ 1"),
        (lambda: Repeat(_step(), 2, gradient="checkpoint"), "gradient must be one of"),
        (lambda: Chain([ActNorm()], gradient="reversible"), "gradient must be one of"),
    ],
)
def test_bad_repeat_and_gradient_arguments_are_named_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make().init(jax.random.key(0), jnp.ones((1, 2, 2, 4)))


def test_glow_rejects_an_unknown_gradient_mode():
    with pytest.raises(ValueError, match="gradient must be one of"):
        glow((4, 4, 1), levels=1, depth=1, hidden=4, gradient="fast")


def test_repeat_inside_a_module_is_an_ordinary_bijector():
    class Wrapper(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Repeat(_step(), 2, name="flow_steps")(x)

    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    variables = Wrapper().init(jax.random.key(1), x)
    y, ld = Wrapper().apply(variables, x)
    assert y.shape == x.shape and ld.shape == (2,)


@pytest.mark.parametrize("rngs", [False, True], ids=["run_scan", "flax_scan_with_rng_streams"])
def test_scan_unroll_lets_cost_analysis_count_every_step(rngs):
    """benchmarks/train_step.py's FLOPs: XLA counts a loop body once, so `scan_unroll(True)` must
    unroll both of Repeat's scans, Flax's (taken when rng streams pass, as in every train step)
    included."""
    from jaxflows.core import scan_unroll
    from jaxflows.ops import LOG_DET_RNG

    x = jnp.ones((4, 4, 4, 4))
    flops = {}
    for length in (1, 4):
        model = Repeat(_step(), length)
        variables = model.init(jax.random.key(0), x)
        extra = {"rngs": {LOG_DET_RNG: jax.random.key(1)}} if rngs else {}
        loss = lambda p, model=model, variables=variables, extra=extra: model.apply(
            {**variables, "params": p}, x, **extra
        )[1].sum()
        with scan_unroll(True):
            flops[length] = jax.jit(jax.grad(loss)).lower(variables["params"]).cost_analysis()["flops"]
    assert flops[4] > 3.5 * flops[1], flops
