"""ContinuousFlow (FFJORD): the property harness on vectors and images with tolerances tied to the
solver's (float32: rtol = atol = 1e-5, a round trip within 1e-4; float64: 1e-12, float64-exact to
the harness's 1e-10), Hutchinson's probe held fixed along the trajectory, the adjoints, settings."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import ContinuousFlow
from jaxflows.bijectors.continuous import ODESolveError
from jaxflows.core.errors import InvalidArgumentError, MissingRngError, ShapeError
from jaxflows.models import MODELS, build_model, ffjord_flow
from jaxflows.ops import LOG_DET_RNG
from tests.harness import (
    PROPERTIES,
    BijectorCase,
    check_gradients_finite,
    check_jit_matches_eager,
    check_log_det_antisymmetric,
    check_round_trip,
    perturb_params,
)

SMALL = functools.partial(ContinuousFlow, hidden=8, num_layers=2)
REVERSE = dict(jacobian="jacrev")  # the checkpointed solve is a custom_vjp: reverse mode only
FAST_CHECKS = (check_round_trip, check_log_det_antisymmetric, check_jit_matches_eager, check_gradients_finite)
SLOW_CHECKS = tuple(check for check in PROPERTIES if check not in FAST_CHECKS)

VECTORS = BijectorCase("vectors", SMALL, (3, 2), perturb=0.3, jit_atol=1e-4, **REVERSE)
CASES = [
    VECTORS,
    BijectorCase(
        "images", lambda: SMALL(activation="softplus"), (2, 2, 2, 2), perturb=0.2, jit_atol=1e-4, **REVERSE
    ),
    BijectorCase(
        "vectors_backsolve_tsit5",
        lambda: SMALL(adjoint="backsolve", solver="tsit5"),
        (3, 2),
        perturb=0.3,
        **REVERSE,
    ),
]


@pytest.mark.parametrize("check", FAST_CHECKS, ids=lambda f: f.__name__)
def test_continuous_flow_properties(check):
    check(VECTORS)


@pytest.mark.slow
@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_continuous_flow_properties_slow(case, check):
    if case is VECTORS and check in FAST_CHECKS:
        pytest.skip("in the default run")
    check(case)


def _flow_and_point(flow, shape=(3, 2), scale=0.3):
    x = jax.random.normal(jax.random.key(0), shape)
    variables = perturb_params(flow.init(jax.random.key(1), x), scale, jax.random.key(2))
    return variables, x


def test_hutchinson_probe_is_fixed_along_the_trajectory_and_unbiased():
    """In 2-D, vᵀAv = tr(A) + v₁v₂(A₁₂ + A₂₁) for a Rademacher v: with one probe held fixed along the
    trajectory, the estimate takes exactly two values, exact ± ∫(J₁₂ + J₂₁) dt (a probe drawn anew
    at each step would spread them), and their mean is the exact log-det."""
    exact_flow = SMALL()
    variables, x = _flow_and_point(exact_flow)
    exact = exact_flow.apply(variables, x)[1]
    hutchinson = SMALL(trace="hutchinson")
    keys = jax.random.split(jax.random.key(3), 64)
    draws = jax.jit(jax.vmap(lambda k: hutchinson.apply(variables, x, rngs={LOG_DET_RNG: k})[1]))(keys)
    offsets = draws - exact
    spread = jnp.abs(offsets)
    assert float(jnp.min(spread)) > 1e-3, "the probe's off-diagonal term should not vanish"
    # equal to the solver's tolerance (each probe's solve takes its own steps)
    np.testing.assert_allclose(spread, jnp.broadcast_to(spread[:1], spread.shape), atol=2e-4)
    signs = jnp.sign(offsets)
    assert bool(jnp.all(jnp.any(signs > 0, axis=0) & jnp.any(signs < 0, axis=0)))
    # the same key gives the same probe in both directions: the inverse's log-det is the negative
    y, log_det = hutchinson.apply(variables, x, rngs={LOG_DET_RNG: keys[0]})
    _, inverse_log_det = hutchinson.apply(variables, y, method="inverse", rngs={LOG_DET_RNG: keys[0]})
    np.testing.assert_allclose(inverse_log_det, -log_det, atol=1e-4)


def test_hutchinson_needs_the_log_det_stream():
    flow = SMALL(trace="hutchinson")
    variables, x = _flow_and_point(flow)
    with pytest.raises(MissingRngError, match='rngs=\\{"log_det": key\\}'):
        flow.apply(variables, x)


def test_a_solve_that_runs_out_of_steps_is_a_named_error_and_nan_under_jit():
    variables, x = _flow_and_point(SMALL(), scale=1.0)
    flow = SMALL(max_steps=2)
    with pytest.raises(ODESolveError, match="max_steps"):
        flow.apply(variables, x)
    y, log_det = jax.jit(flow.apply)(variables, x)
    assert bool(jnp.all(jnp.isnan(y))) and bool(jnp.all(jnp.isnan(log_det)))
    steps = SMALL().apply(variables, x, method="num_steps")
    assert int(steps) > 2


@pytest.mark.slow
def test_backsolve_gradient_matches_the_checkpointed_one():
    with jax.enable_x64(True):
        flow = SMALL()
        variables, x = _flow_and_point(flow)
        variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)
        x = x.astype(jnp.float64)

        def gradient(adjoint):
            def loss(params, inputs):
                y, log_det = flow.clone(adjoint=adjoint).apply({"params": params}, inputs)
                return jnp.sum(y**2) - jnp.sum(log_det)

            return jax.grad(loss, argnums=(0, 1))(variables["params"], x)

        checkpoint, backsolve = gradient("checkpoint"), gradient("backsolve")
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9), checkpoint, backsolve
        )


def test_flow_checks_its_settings():
    for bad in (
        dict(solver="euler"),
        dict(adjoint="direct"),
        dict(trace="lanczos"),
        dict(activation="relu"),
        dict(time=0.0),
        dict(rtol=-1e-5),
        dict(num_layers=0),
        dict(network_precision="fastest"),
    ):
        with pytest.raises(InvalidArgumentError):
            ContinuousFlow(**bad)


def test_ffjord_flow_builder_is_registered():
    flow = build_model("ffjord_flow", (2,), {"hidden": 8, "num_layers": 2})
    assert MODELS.lookup("ffjord_flow") is ffjord_flow
    x = jax.random.normal(jax.random.key(0), (4, 2))
    variables = flow.init(jax.random.key(1), x)
    log_prob = flow.apply(variables, x, method="log_prob")  # the identity at init: the base's density
    expected = -0.5 * jnp.sum(x**2, axis=-1) - jnp.log(2 * jnp.pi)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5)
    for bad in ((3, 3), (5, 4, 1), 0):
        with pytest.raises(ShapeError):
            ffjord_flow(bad)
    with pytest.raises(InvalidArgumentError):
        ffjord_flow(2, trace="lanczos")
    assert ffjord_flow(40).bijector.layer.trace == "hutchinson"  # "auto": Hutchinson above 32 dimensions


@pytest.mark.slow
def test_ffjord_flow_on_images_round_trips():
    flow = ffjord_flow((4, 4, 1), hidden=4, num_layers=2, depth=2)
    x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1))
    variables = flow.init(jax.random.key(1), x)
    variables = perturb_params(variables, 0.1, jax.random.key(2))
    z, log_det = jax.jit(lambda v, a: flow.apply(v, a, method="forward"))(variables, x)
    back, _ = jax.jit(lambda v, a: flow.apply(v, a, method="inverse"))(variables, z)
    np.testing.assert_allclose(back, x, atol=1e-4)
    assert z.shape == x.shape and log_det.shape == (2,)


@pytest.mark.slow
def test_backsolve_gradient_inside_shard_map():
    """jaxflows.train differentiates inside `jax.shard_map` (check_vma=False): there diffrax's
    checkpointed adjoint fails (equinox 0.13.8, jax 0.10.2: "Closure-converted function called with
    different dynamic arguments"); the backsolve adjoint, `ffjord_flow`'s default, works."""
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((1,), ("data",))
    flow = SMALL(adjoint="backsolve")
    variables, x = _flow_and_point(flow)

    def loss(params, inputs):
        y, log_det = flow.apply({"params": params}, inputs)
        return jnp.mean(0.5 * jnp.sum(y**2, -1) - log_det)

    def shard(params, inputs):
        return jax.lax.pmean(jax.grad(loss)(params, inputs), "data")

    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    specs = (PartitionSpec(), PartitionSpec("data"))
    step = jax.jit(
        jax.shard_map(shard, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(), check_vma=False)
    )
    grads, expected = step(variables["params"], sharded), jax.grad(loss)(variables["params"], x)
    close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4)  # the solver's tolerance, 1e-5
    jax.tree_util.tree_map(close, grads, expected)
