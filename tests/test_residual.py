"""InvertibleResidual (i-ResNet) and its Lipschitz-constrained layers: the harness on vectors and
images, the log-det series and Hutchinson estimate against slogdet, the fixed-point inverse's rate,
the spectral bound of the operators actually applied, and the training step's vector updates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import ActNorm, InvertibleResidual
from jaxflows.core import Chain, Flow, Repeat, StandardNormal
from jaxflows.core.errors import FixedPointError, InvalidArgumentError, MissingRngError, ShapeError
from jaxflows.ops import LOG_DET_RNG, SPECTRAL_NORM, LipschitzLinear, linear, operator_norm_estimate
from jaxflows.train import TrainConfig, init_state, make_mesh, make_optimizer, make_train_step
from tests.harness import PROPERTIES, BijectorCase, perturb_params


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


SMALL = functools.partial(InvertibleResidual, hidden=8, lipschitz=0.5, log_det_terms=40)

CASES = [
    BijectorCase("vectors", SMALL, (3, 4), round_trip_atol=1e-5),
    BijectorCase("vectors_lipswish", lambda: SMALL(activation="lipswish", num_layers=2), (3, 3)),
    BijectorCase("images", lambda: SMALL(hidden=4), (2, 3, 3, 2), round_trip_atol=1e-5),
    # the defaults truncate the log-det series at 10 terms with Lip(g) ≤ 0.9 (bias at most
    # D·c^(n+1)/((n+1)(1 − c)) ≈ 0.57 nats for D = 2); this perturbed layer's g is far from that bound
    # and its series is 1e-13 from slogdet, within the default float64 tolerances
    BijectorCase("defaults", InvertibleResidual, (2, 2)),
    BijectorCase("slogdet", lambda: InvertibleResidual(hidden=8, log_det_terms=None), (3, 3)),
]


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_residual_properties(case, check):
    check(case)


def _block_and_point(shape, lipschitz, key=0, **kwargs):
    """A block whose layers all sit at their spectral bound (large weights, then normalised)."""
    block = InvertibleResidual(hidden=8, lipschitz=lipschitz, **kwargs)
    x = jax.random.normal(jax.random.key(key), shape, jnp.float64)
    variables = block.init(jax.random.key(key + 1), x)
    variables = perturb_params(variables, 1.0, jax.random.key(key + 2))
    _, variables_state = block.apply(variables, x, mutable=[SPECTRAL_NORM])  # vectors follow the weights
    for _ in range(10):
        _, variables_state = block.apply({**variables, **variables_state}, x, mutable=[SPECTRAL_NORM])
    return block, {**variables, **variables_state}, x


def _jacobian_of_g(block, variables, x):
    forward = lambda e: block.apply(variables, e[None])[0][0]
    size = x[0].size
    return jax.vmap(jax.jacfwd(forward))(x).reshape(x.shape[0], size, size) - jnp.eye(size)


def test_exact_series_converges_to_slogdet_within_the_truncation_bound(x64):
    block, variables, x = _block_and_point((4, 5), 0.9, key=1)  # key 1: ρ ≈ 0.41 (key 0: 0.25)
    jac_g = _jacobian_of_g(block, variables, x)
    exact = jnp.linalg.slogdet(jnp.eye(5) + jac_g)[1]
    rho = jnp.linalg.norm(jac_g, ord=2, axis=(-2, -1))  # ‖J_g(x)‖₂ ≤ Lip(g) ≤ c
    assert float(jnp.max(rho)) <= 0.9 * (1 + 1e-4)
    assert float(jnp.max(rho)) > 0.3, "the test needs a Jacobian far from zero to see the rate"
    errors = []
    for n in (1, 2, 4, 8, 16, 32, 64):
        series = block.clone(log_det_terms=n).apply(variables, x)[1]
        error = jnp.abs(series - exact)
        bound = 5 * rho ** (n + 1) / ((n + 1) * (1 - rho))  # Σ_{k>n} D ρ^k / k
        assert bool(jnp.all(error <= bound * (1 + 1e-6) + 1e-13)), (n, error, bound)
        errors.append(float(jnp.max(error)))
    assert errors[-1] < 1e-8 and errors[0] > 1e3 * errors[-1]
    no_series = block.clone(log_det_terms=None).apply(variables, x)[1]
    np.testing.assert_allclose(no_series, exact, rtol=1e-12, atol=1e-13)


def test_hutchinson_mean_approaches_the_exact_series(x64):
    block, variables, x = _block_and_point((3, 6), 0.8, log_det_terms=6)
    exact = block.apply(variables, x)[1]
    hutchinson = block.clone(trace="hutchinson")
    one_probe = jax.jit(lambda k: hutchinson.apply(variables, x, rngs={LOG_DET_RNG: k})[1])
    draws = jax.vmap(one_probe)(jax.random.split(jax.random.key(7), 4000))
    mean, standard_error = draws.mean(0), draws.std(0) / np.sqrt(draws.shape[0])
    assert bool(jnp.all(standard_error > 0)), "a probe estimate that never varies tests nothing"
    assert bool(jnp.all(jnp.abs(mean - exact) < 4 * standard_error)), (mean, exact, standard_error)
    many = hutchinson.clone(num_probes=400).apply(variables, x, rngs={LOG_DET_RNG: jax.random.key(3)})[1]
    assert bool(jnp.all(jnp.abs(many - exact) < 4 * draws.std(0) / np.sqrt(400)))


def test_hutchinson_needs_the_log_det_rng_stream():
    block = InvertibleResidual(trace="hutchinson")
    x = jnp.ones((2, 3))
    variables = block.init(jax.random.key(0), x)  # init falls back on the params key
    with pytest.raises(MissingRngError, match='rngs=\\{"log_det": key\\}'):
        block.apply(variables, x)
    a = block.apply(variables, x, rngs={LOG_DET_RNG: jax.random.key(1)})[1]
    b = block.apply(variables, x, rngs={LOG_DET_RNG: jax.random.key(2)})[1]
    assert not np.allclose(a, b)


@pytest.mark.parametrize(
    "shape",
    [(3, 4), pytest.param((2, 4, 4, 2), marks=pytest.mark.slow)],  # the same iteration on convolutions
    ids=["vectors", "images"],
)
def test_inverse_converges_at_the_contraction_rate(x64, shape):
    c = 0.8
    block, variables, x = _block_and_point(shape, c)
    y = block.apply(variables, x)[0]
    iterates = block.apply(variables, y, 40, method="inverse_iterates")
    errors = jnp.linalg.norm((iterates - x).reshape(41, shape[0], -1), axis=-1)
    k = jnp.arange(41)[:, None]
    assert bool(jnp.all(errors <= c**k * errors[0] * (1 + 1e-4) + 1e-12))
    # Asymptotically e_{k+1} ≈ −J_g(x) e_k: the rate is the spectral radius of J_g at the solution.
    radius = jnp.max(jnp.abs(jnp.linalg.eigvals(_jacobian_of_g(block, variables, x))), axis=-1)
    rate = (errors[6] / errors[2]) ** (1 / 4)
    assert bool(jnp.all((rate > 0.7 * radius) & (rate < 1.3 * radius))), (rate, radius)
    back = block.apply(variables, y, method="inverse")[0]
    np.testing.assert_allclose(back, x, atol=1e-10)


def test_inverse_that_does_not_converge_is_a_named_error_and_nan_under_jit(x64):
    block, variables, x = _block_and_point((3, 4), 0.95)
    tight = block.clone(max_iterations=2)
    y = block.apply(variables, x)[0]
    with pytest.raises(FixedPointError, match="max_iterations"):
        tight.apply(variables, y, method="inverse")
    x_jit, _ = jax.jit(lambda v, y: tight.apply(v, y, method="inverse"))(variables, y)
    assert bool(jnp.all(jnp.isnan(x_jit)))


@pytest.mark.parametrize("kernel_size, shape", [(None, (6,)), (3, (5, 5, 3)), (1, (4, 4, 3))])
def test_applied_operator_norm_is_at_most_the_bound(x64, kernel_size, shape):
    layer = LipschitzLinear(4, 0.7, kernel_size)
    variables = layer.init(jax.random.key(0), shape)
    variables = perturb_params(variables, 2.0, jax.random.key(1))
    for _ in range(300):  # the training step's iterations track the perturbed kernel
        (kernel, _), state = layer.apply(variables, shape, mutable=[SPECTRAL_NORM])
        variables = {**variables, **state}
    op = lambda v: linear(kernel.astype(jnp.float64), 0.0, v[None])[0].ravel()
    matrix = jax.jacfwd(op)(jnp.zeros(shape, jnp.float64)).reshape(-1, int(np.prod(shape)))
    sigma = float(jnp.linalg.norm(matrix, ord=2))
    assert sigma <= 0.7 * (1 + 1e-5) and sigma > 0.7 * (1 - 1e-5)
    raw = variables["params"]["kernel"].astype(jnp.float64)
    vector = variables[SPECTRAL_NORM]["vector"].astype(jnp.float64)
    exact_raw = float(
        jnp.linalg.norm(
            jax.jacfwd(lambda v: linear(raw, 0.0, v[None])[0].ravel())(jnp.zeros(shape, jnp.float64)).reshape(
                -1, int(np.prod(shape))
            ),
            ord=2,
        )
    )
    np.testing.assert_allclose(float(operator_norm_estimate(raw, vector)), exact_raw, rtol=1e-5)


def test_vectors_change_only_where_the_collection_is_mutable():
    block = InvertibleResidual(hidden=6)
    x = jax.random.normal(jax.random.key(0), (3, 4))
    variables = perturb_params(block.init(jax.random.key(1), x), 1.0, jax.random.key(2))
    before = variables[SPECTRAL_NORM]
    y1, ld1 = block.apply(variables, x)
    y2, ld2 = block.apply(variables, x)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(ld1, ld2)
    _, state = block.apply(variables, x, mutable=[SPECTRAL_NORM])
    changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), before, state[SPECTRAL_NORM])
    assert any(jax.tree_util.tree_leaves(changed))


def test_block_checks_its_settings_and_inputs():
    for bad in (
        dict(log_det_terms=None, trace="hutchinson"),
        dict(log_det_terms=0),
        dict(lipschitz=1.0),
        dict(lipschitz=0.0),
        dict(trace="lanczos"),
        dict(num_layers=1),
        dict(activation="relu"),
        dict(tolerance=2.0),
    ):
        with pytest.raises(InvalidArgumentError):
            InvertibleResidual(**bad)
    block = InvertibleResidual(hidden=4)
    variables = block.init(jax.random.key(0), jnp.ones((2, 4, 4, 1)))
    with pytest.raises(ShapeError, match="initialised on inputs of shape"):
        block.apply(variables, jnp.ones((2, 6, 6, 1)))
    with pytest.raises(ShapeError):
        block.init(jax.random.key(0), jnp.ones((2, 4, 4)))


def _residual_flow(depth=2):
    step = Chain(
        [ActNorm(), InvertibleResidual(hidden=4, trace="hutchinson", log_det_terms=4)],
        names=["actnorm", "residual"],
    )
    return Flow(Repeat(step, depth), StandardNormal(), event_shape=(4, 4, 1))


def test_training_step_updates_the_vectors_inside_repeat_and_draws_probes():
    flow = _residual_flow()
    config = TrainConfig(warmup_steps=0, learning_rate=1e-2)
    optimizer, mesh = make_optimizer(config), make_mesh()
    pixels = np.random.default_rng(0).integers(0, 4, (8, 4, 4, 1)).astype(np.float32)
    state = init_state(flow, optimizer, pixels, 4, seed=0)
    assert SPECTRAL_NORM in state.constants
    old = jax.tree_util.tree_map(np.asarray, state.constants[SPECTRAL_NORM])
    step = make_train_step(flow, optimizer, 4, mesh)
    new_state, metrics = step(state, jnp.asarray(pixels))
    assert np.isfinite(float(metrics["loss"]))
    new = new_state.constants[SPECTRAL_NORM]
    assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(new)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), old, new)
    assert max(jax.tree_util.tree_leaves(moved)) > 0
