"""Flows on (batch, d) vectors: Planar and Sylvester through the harness, a vector Flow end to end."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.analysis import (
    jacobian_condition_numbers,
    log_det_breakdown,
    log_det_grad_input,
    reconstruction_errors,
)
from jaxflows.bijectors import Logit, Planar, Sylvester
from jaxflows.core import Chain, Flow, Repeat, StandardNormal, functional
from jaxflows.core.errors import InputDtypeError, InvalidArgumentError, ShapeError
from jaxflows.models import coupling_flow
from tests.harness import PROPERTIES, BijectorCase, check_bijector, perturb_params

D = 4

CASES = [
    BijectorCase("planar", Planar, (3, D), round_trip_atol=1e-5),
    BijectorCase("sylvester", Sylvester, (3, D), round_trip_atol=1e-5),
    BijectorCase("sylvester_m2", lambda: Sylvester(num_hidden=2), (3, D), round_trip_atol=1e-5),
    BijectorCase("planar_d1", Planar, (3, 1), round_trip_atol=1e-5),
]


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_vector_layer_properties(case, check):
    check(case)


def _chain(length=4):
    return Chain([Planar(), Sylvester(num_hidden=2), Planar(), Sylvester()][:length])


def _flow(length=4):
    return Flow(_chain(length), StandardNormal(), event_shape=(D,), data_range=None)


def test_chain_passes_the_harness_on_vectors():
    check_bijector(lambda: _chain(2), shape=(3, D), round_trip_atol=1e-5, name="chain")


def test_repeat_passes_the_harness_on_vectors():
    check_bijector(lambda: Repeat(Planar(), 2), shape=(3, D), round_trip_atol=1e-5, name="repeat")


def test_vector_flow_passes_the_harness():
    check_bijector(lambda: _flow(2), shape=(3, D), round_trip_atol=1e-5, name="flow")


def test_vector_flow_log_prob_sample_inverse_and_vmap():
    flow = _flow()
    x = 3.0 * jax.random.normal(jax.random.key(0), (5, D))  # unbounded data: data_range=None
    variables = perturb_params(flow.init(jax.random.key(1), x), 0.2, jax.random.key(2))
    log_p = flow.apply(variables, x, method="log_prob")
    z, log_det = flow.apply(variables, x, method="forward")
    expected = -0.5 * jnp.sum(z**2, -1) - 0.5 * D * np.log(2 * np.pi) + log_det
    np.testing.assert_allclose(log_p, expected, rtol=1e-5, atol=1e-6)  # float32 sums near 0
    assert log_p.shape == (5,)

    samples = flow.apply(variables, jax.random.key(3), 7, method="sample")
    assert samples.shape == (7, D) and bool(jnp.all(jnp.isfinite(samples)))
    x_back, _ = flow.apply(variables, z, method="inverse")
    np.testing.assert_allclose(x_back, x, atol=1e-5)

    single = jax.vmap(lambda e: flow.apply(variables, e, method="log_prob"))(x)
    np.testing.assert_allclose(single, log_p, rtol=1e-5, atol=1e-6)
    f = functional(flow, variables)
    np.testing.assert_allclose(jax.jit(f.log_det)(x), log_det, rtol=1e-5, atol=1e-6)
    breakdown = log_det_breakdown(flow, variables, x)
    assert len(breakdown) == 5  # four layers and the base
    np.testing.assert_allclose(sum(breakdown.values()), log_p, rtol=1e-5, atol=1e-6)


def test_analysis_tools_take_vectors():
    flow = _flow(2)
    x = jax.random.normal(jax.random.key(0), (3, D))
    variables = perturb_params(flow.init(jax.random.key(1), x), 0.2, jax.random.key(2))
    errors = reconstruction_errors(flow, variables, x)
    assert set(errors) == {"planar_0", "sylvester_1"}
    assert all(float(jnp.max(e)) < 1e-5 for e in errors.values())
    assert log_det_grad_input(flow, variables, x).shape == (3, D)
    conditions = jacobian_condition_numbers(flow, variables, x[:1])
    assert all(float(c) >= 1.0 for c in conditions.values())


def test_vector_flow_rejects_wrong_event_shape():
    flow = _flow()
    x = jnp.zeros((2, D))
    variables = flow.init(jax.random.key(0), x)
    with pytest.raises(ShapeError):
        flow.apply(variables, jnp.zeros((2, D + 1)), method="log_prob")


def _adversarial(make, params_of):
    x = 2.0 * jax.random.normal(jax.random.key(0), (64, D))
    layer = make()
    variables = layer.init(jax.random.key(1), x)
    variables = {"params": params_of(variables["params"])}
    return layer, variables, x


@pytest.mark.parametrize("scale", [30.0, 1e3])
def test_planar_stays_invertible_for_large_negative_u_dot_w(scale):
    w = jnp.array([1.0, -2.0, 0.5, 0.0])
    layer, variables, x = _adversarial(Planar, lambda p: {**p, "w": w, "u": -scale * w})
    x = x.at[:, 0].set(0.0).at[:, 1].set(0.0).at[:, 2].set(0.0)  # wᵀx + b = 0: tanh' = 1
    y, log_det = layer.apply(variables, x)
    assert bool(jnp.all(jnp.isfinite(log_det))) and bool(jnp.all(jnp.isfinite(y)))
    with jax.enable_x64(True):
        x64 = jnp.asarray(x[:1], jnp.float64)
        jac = jax.jacfwd(lambda v: layer.apply(variables, v[None])[0][0])(x64[0])
        sign, logabs = jnp.linalg.slogdet(jac)
        assert float(sign) > 0  # the constrained wᵀû > −1 keeps det J > 0
        np.testing.assert_allclose(layer.apply(variables, x64)[1][0], logabs, rtol=1e-6)
    assert float(jnp.max(layer.apply(variables, y, method="inverse_residual"))) < 1e-4


def test_sylvester_stays_invertible_for_very_negative_diagonal_products():
    def adversarial(p):
        return {
            **p,
            "product_diag": jnp.full_like(p["product_diag"], -200.0),
            "log_r_diag": p["log_r_diag"] + 5,
        }

    layer, variables, x = _adversarial(Sylvester, adversarial)
    _, log_det = layer.apply(variables, x)
    assert bool(jnp.all(jnp.isfinite(log_det)))
    with jax.enable_x64(True):
        x64 = jnp.asarray(x[:1], jnp.float64)
        jac = jax.jacfwd(lambda v: layer.apply(variables, v[None])[0][0])(x64[0])
        sign, logabs = jnp.linalg.slogdet(jac)
        assert float(sign) > 0
        np.testing.assert_allclose(layer.apply(variables, x64)[1][0], logabs, rtol=1e-5)
        y64, _ = layer.apply(variables, x64)
        assert float(jnp.max(layer.apply(variables, y64, method="inverse_residual"))) < 1e-9


@pytest.mark.parametrize("make", [Planar, Sylvester])
def test_inverse_residual_reaches_the_tolerance(make):
    with jax.enable_x64(True):
        x = 2.0 * jax.random.normal(jax.random.key(0), (16, D), jnp.float64)
        layer = make(tolerance=1e-12)
        variables = perturb_params(layer.init(jax.random.key(1), x), 0.5, jax.random.key(2))
        y, _ = layer.apply(variables, x)
        residual = layer.apply(variables, y, method="inverse_residual")
        assert residual.shape == (16,)
        assert float(jnp.max(residual)) < 1e-10
        x_back, _ = layer.apply(variables, y, method="inverse")
        np.testing.assert_allclose(x_back, x, atol=1e-10)


def test_named_errors_for_bad_fields_and_inputs():
    with pytest.raises(InvalidArgumentError, match="num_hidden"):
        Sylvester(num_hidden=0)
    with pytest.raises(InvalidArgumentError, match="tolerance"):
        Planar(tolerance=-1.0)
    with pytest.raises(InvalidArgumentError, match="max_iterations"):
        Planar(max_iterations=0)
    with pytest.raises(ShapeError, match="num_hidden"):
        Sylvester(num_hidden=5).init(jax.random.key(0), jnp.zeros((2, 3)))
    with pytest.raises(ShapeError, match=r"\(batch, d\)"):
        Planar().init(jax.random.key(0), jnp.zeros((2, 4, 4, 1)))
    with pytest.raises(InputDtypeError):
        Sylvester().init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))


def test_defaults_build_on_vectors_with_float32_params():
    x = jnp.ones((2, 11))
    for make in (Planar, Sylvester):
        variables = make().init(jax.random.key(0), x)
        leaves = jax.tree_util.tree_leaves(variables)
        assert leaves and all(a.dtype == jnp.float32 for a in leaves)
    assert Sylvester().init(jax.random.key(0), x)["params"]["q"].shape == (11, 8)


@pytest.mark.parametrize("make", [Planar, Sylvester])
def test_inverse_derivative_is_the_inverse_jacobian(make):
    """Reverse mode through the root finding gives the implicit derivative (∂f/∂x)⁻¹ at y = f(x)."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, D), jnp.float64)
        layer = make()
        variables = perturb_params(layer.init(jax.random.key(1), x), 0.3, jax.random.key(2))
        forward = lambda v: layer.apply(variables, v[None])[0][0]
        inverse = lambda v: layer.apply(variables, v[None], method="inverse")[0][0]
        expected = jnp.linalg.inv(jax.jacfwd(forward)(x[0]))
        np.testing.assert_allclose(jax.jacrev(inverse)(forward(x[0])), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "layer, depth", [(Planar(), 32), (Sylvester(num_hidden=2), 12)], ids=["planar", "sylvester"]
)
def test_deep_planar_and_sylvester_flows_start_near_volume_preserving(layer, depth):
    """m(0) = 0 (`slope_margin`): each initialised layer has slope ≈ 1 along w, so a deep stack
    starts near its base density (with the paper's m, m(0) = −0.31: 32 planar layers start about
    12 nats away)."""
    x = jax.random.normal(jax.random.key(0), (256, 2))
    stack = Repeat(layer, depth)
    _, log_det = stack.apply(stack.init(jax.random.key(1), x), x)
    assert float(jnp.abs(jnp.mean(log_det))) < 1.0, float(jnp.mean(log_det))


def test_vector_flows_experiment_reports_the_paired_gap_to_the_true_density():
    """experiments.vector_flows' ring rows: flow NLL − true NLL with the paired standard error (the
    standard error of the per-point difference, not of either mean), in the table and, when a flow
    claims to beat the true density by > 3 paired s.e., in a note. The run itself at a tiny size:
    tests/test_experiments.py::test_vector_flows_writes_table_plots_and_image_estimate."""
    from experiments import vector_flows as vf

    rng = np.random.default_rng(0)
    true = rng.normal(2.1, 1.0, 10_000)
    flow = true + rng.normal(0.05, 0.1, true.size)  # strongly correlated with the true NLL per point
    gap, se = vf.mean_and_error(flow - true)
    assert gap == pytest.approx(flow.mean() - true.mean())
    assert se == pytest.approx(np.std(flow - true, ddof=1) / 100) and se < vf.mean_and_error(flow)[1] / 5

    data = {"density": "ring", "flow": "data", "nll": vf.mean_and_error(true)}
    row = {"density": "ring", "flow": "planar", "params": 160, "train_s": 1.0, "nll": vf.mean_and_error(flow)}
    row |= {"nll_exact_jacobian": row["nll"], "nll_minus_true": (gap, se)}
    lines = vf.toy_table([data, row]).splitlines()
    assert "NLL − true NLL (paired)" in lines[0]
    assert f"| {gap:+.3f} ± {se:.3f} |" in lines[-1] and "true density (reference)" in lines[-2]
    assert vf.log_det_gaps([data, row]) == []
    cheat = row | {"nll_minus_true": (-0.02, 0.001), "nll_exact_jacobian": (row["nll"][0] + 1.0, 0.01)}
    notes = vf.log_det_gaps([data, cheat])
    assert len(notes) == 2 and "biased log-det" in notes[0] and "no model beats" in notes[1]


def test_vector_flows_experiment_builds_every_flow_from_the_registry():
    from experiments import vector_flows as vf
    from jaxflows.models import MODELS

    expected = {"planar", "Sylvester", "residual", "residual, 10-term series", "affine coupling"}
    assert expected <= set(vf.TOY_FLOWS)
    for name, (builder, kwargs) in vf.TOY_FLOWS.items():
        assert builder in MODELS, name
        assert set(kwargs) <= set(inspect.signature(MODELS.lookup(builder)).parameters), name
    assert vf.build("residual, 10-term series", (2,)).bijector.layer.layers[1].log_det_terms == 10


def test_coupling_flow_takes_unit_data_through_a_logit_first():
    flow = coupling_flow(4, depth=2, hidden=8, logit=True, logit_alpha=1e-3)
    assert flow.domain == (0.0, 1.0) and coupling_flow(4).domain is None
    x = jax.random.uniform(jax.random.key(0), (5, 4))
    variables = perturb_params(flow.init(jax.random.key(1), x), 0.1, jax.random.key(2))
    z, log_det = flow.apply(variables, x, method="forward")
    steps = coupling_flow(4, depth=2, hidden=8)
    inner = {**variables, "params": {"bijector": variables["params"]["bijector"]["steps"]}}
    logit_z, logit_ld = Logit(1e-3).apply({}, x)
    z_steps, ld_steps = steps.apply(inner, logit_z, method="forward")
    np.testing.assert_allclose(z, z_steps, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_det, logit_ld + ld_steps, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(flow.apply(variables, z, method="inverse")[0], x, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="data_range"):
        coupling_flow(4, data_range="unit")
