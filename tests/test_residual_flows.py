"""Residual Flows (Chen et al. 2019): the Russian-roulette log-det estimate and its Neumann-series
gradient are unbiased (float64, small d, Lip(g) ≤ 0.5 so the variance is finite, fixed seeds), the
three gradient modes agree, learned LipSwish, and the property harness with a fixed log-det key."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import InvertibleResidual
from jaxflows.bijectors.residual import learned_lipswish, survival_probability
from jaxflows.core.errors import InvalidArgumentError, MissingRngError
from jaxflows.ops import LOG_DET_RNG
from tests.harness import PROPERTIES, BijectorCase, perturb_params


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


class FixedKeyResidual(InvertibleResidual):
    """The roulette block with its "log_det" key fixed: one N and one set of probes, a
    deterministic map the harness can check (apply without rngs)."""

    def _probe_key(self):
        return jax.random.key(11)


# 40 exact terms at Lip(g) ≤ 0.5: the roulette's estimate is log|det| to ~D·0.5^41, float64-exact.
DETERMINISTIC = functools.partial(
    FixedKeyResidual, hidden=8, lipschitz=0.5, estimator="roulette", exact_terms=40, max_terms=64
)

CASES = [BijectorCase("vectors_geometric", DETERMINISTIC, (3, 3), round_trip_atol=1e-5)]
SLOW_CASES = [
    BijectorCase(
        "images_poisson",
        lambda: DETERMINISTIC(hidden=4, roulette="poisson"),
        (2, 2, 2, 2),
        round_trip_atol=1e-5,
    ),
    BijectorCase(
        "vectors_learned_lipswish_scan",
        lambda: DETERMINISTIC(activation="learned_lipswish", log_det_gradient="scan", max_terms=44),
        (3, 3),
    ),
    BijectorCase(
        "vectors_backward_in_forward",
        lambda: DETERMINISTIC(log_det_gradient="backward_in_forward"),
        (3, 3),
        jacobian="jacrev",  # a custom_vjp: reverse mode only
        # its parameter gradient is exact only for one cotangent for every example (a batch-mean
        # loss), not for the finite-difference check's random per-example weights
        finite_differences=False,
    ),
]


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_roulette_properties(case, check):
    check(case)


@pytest.mark.slow
@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", SLOW_CASES, ids=str)
def test_roulette_properties_slow(case, check):
    check(case)


DRAWS = 4000


def _block_and_point(activation="elu", **kwargs):
    """A float64 block with Lip(g) ≤ 0.5 on 3 examples of d = 4, its parameters perturbed."""
    block = InvertibleResidual(hidden=8, lipschitz=0.5, activation=activation, estimator="roulette", **kwargs)
    x = jax.random.normal(jax.random.key(0), (3, 4), jnp.float64)
    variables = perturb_params(jax.jit(block.init)(jax.random.key(1), x), 0.3, jax.random.key(2))
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
    return block, variables, x


def _exact(block, variables, x, params=None):
    exact = block.clone(estimator="series", trace="exact", log_det_terms=None)
    apply = jax.jit(lambda v, a: exact.apply(v, a)[1])  # one program, not op by op
    return apply({**variables, "params": params or variables["params"]}, x)


def _mean_and_standard_error(draws):
    return draws.mean(0), draws.std(0) / np.sqrt(draws.shape[0])


@pytest.mark.parametrize(
    "settings",
    [
        dict(roulette="geometric"),
        dict(roulette="poisson"),
        pytest.param(dict(roulette="geometric", trace="hutchinson"), marks=pytest.mark.slow),
        pytest.param(dict(roulette="poisson", activation="learned_lipswish"), marks=pytest.mark.slow),
    ],
    ids=["geometric", "poisson", "geometric_hutchinson", "poisson_learned_lipswish"],
)
def test_roulette_estimate_and_its_gradient_are_unbiased(x64, settings):
    block, variables, x = _block_and_point(**settings)
    exact = _exact(block, variables, x)
    keys = jax.random.split(jax.random.key(3), DRAWS)
    draws = jax.jit(jax.vmap(lambda k: block.apply(variables, x, rngs={LOG_DET_RNG: k})[1]))(keys)
    mean, se = _mean_and_standard_error(draws)
    assert bool(jnp.all(se > 0)), "an estimate that never varies tests nothing"
    assert bool(jnp.all(jnp.abs(mean - exact) < 5 * se)), (mean, exact, se)
    if block.trace == "exact":  # the test can fail: the series cut after 2 terms is far off
        truncated = jax.jit(block.clone(estimator="series", log_det_terms=2).apply)(variables, x)[1]
        assert bool(jnp.all(jnp.abs(truncated - exact) > 20 * se)), (truncated, exact, se)

    def estimate(params, inputs, key):  # a loss with a different weight for each example
        log_det = block.apply({**variables, "params": params}, inputs, rngs={LOG_DET_RNG: key})[1]
        return jnp.sum(jnp.arange(1.0, 4.0) * log_det)

    def exact_loss(params, inputs):
        return jnp.sum(jnp.arange(1.0, 4.0) * _exact(block, variables, inputs, params))

    grads = jax.jit(jax.vmap(jax.grad(estimate, argnums=(0, 1)), in_axes=(None, None, 0)))(
        variables["params"], x, keys[: DRAWS // 2]
    )
    expected = jax.jit(jax.grad(exact_loss, argnums=(0, 1)))(variables["params"], x)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    for (path, g), e in zip(leaves, jax.tree_util.tree_leaves(expected), strict=True):
        mean, se = _mean_and_standard_error(g)
        gap = jnp.abs(mean - e)
        assert bool(jnp.all((gap < 5 * se) | (gap < 1e-12))), (jax.tree_util.keystr(path), gap / se)
    spread = [float(jnp.max(g.std(0))) for _, g in leaves]
    assert max(spread) > 0


def test_the_three_gradient_modes_agree_draw_by_draw(x64):
    block, variables, x = _block_and_point(max_terms=24)
    key = jax.random.key(5)

    def value_and_grads(mode, weights):
        def loss(params, inputs):
            log_det = block.clone(log_det_gradient=mode).apply(
                {**variables, "params": params}, inputs, rngs={LOG_DET_RNG: key}
            )[1]
            return jnp.sum(weights * log_det)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables["params"], x)

    uniform = jnp.full(3, 1 / 3)
    value, grads = value_and_grads("neumann", uniform)
    for mode in ("backward_in_forward", "scan"):
        other_value, other_grads = value_and_grads(mode, uniform)
        np.testing.assert_allclose(other_value, value, rtol=1e-12)
        # "scan" differentiates the estimate itself: equal to the Neumann series in expectation over
        # the probes, and draw by draw for exact traces (tr(J^j ∂J J^{k−1−j}) = tr(J^{k−1} ∂J)).
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12), grads, other_grads
        )
    # Per-example weights: exact for the inputs in every mode; backward_in_forward's parameter
    # gradient uses their mean.
    weights = jnp.array([0.2, 1.0, 3.0])
    _, (p_neumann, x_neumann) = value_and_grads("neumann", weights)
    _, (p_scan, x_scan) = value_and_grads("scan", weights)
    _, (_, x_in_forward) = value_and_grads("backward_in_forward", weights)
    np.testing.assert_allclose(x_in_forward, x_neumann, rtol=1e-9)
    np.testing.assert_allclose(x_scan, x_neumann, rtol=1e-9)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12), p_neumann, p_scan
    )


def test_evaluation_mode_computes_twenty_exact_terms(x64):
    block, variables, x = _block_and_point()
    keys = jax.random.split(jax.random.key(6), 500)
    spread = {}
    for evaluation in (False, True):
        evaluate = block.clone(evaluation=evaluation)
        draws = jax.jit(jax.vmap(lambda k, b=evaluate: b.apply(variables, x, rngs={LOG_DET_RNG: k})[1]))(keys)
        spread[evaluation] = float(jnp.max(draws.std(0)))
    # The tail after 20 terms is ~0.5^21: the evaluation estimate hardly varies.
    assert spread[True] < 1e-3 * spread[False], spread


def test_survival_probabilities_are_the_distributions_tails():
    rng = np.random.default_rng(0)
    j = jnp.arange(-1, 8)
    geometric = rng.geometric(0.5, 200_000)
    poisson = rng.poisson(2.0, 200_000)
    for name, parameter, samples in (("geometric", 0.5, geometric), ("poisson", 2.0, poisson)):
        tails = survival_probability(name, parameter, j, jnp.float32)
        empirical = np.array([(samples >= k).mean() for k in np.asarray(j)])
        np.testing.assert_allclose(tails, empirical, atol=5e-3)


def test_learned_lipswish_is_1_lipschitz_and_learns_its_slope():
    x = jnp.linspace(-20, 20, 20001)
    for beta in (-1.0, 0.5, 4.0):
        slope = jax.jit(jax.vmap(jax.grad(lambda t, b=beta: learned_lipswish(t, b))))(x)
        assert float(jnp.max(jnp.abs(slope))) <= 1.0
        assert float(jnp.max(jnp.abs(slope))) > 0.99
    block = InvertibleResidual(hidden=4, activation="learned_lipswish", num_layers=3)
    points = jnp.ones((2, 3))
    variables = jax.jit(block.init)(jax.random.key(0), points)
    params = variables["params"]
    assert sorted(k for k in params if k.startswith("beta")) == ["beta_0", "beta_1"]
    assert float(params["beta_0"]) == 0.5
    grads = jax.jit(jax.grad(lambda p: jnp.sum(block.apply({**variables, "params": p}, points)[0])))(params)
    assert float(jnp.abs(grads["beta_0"])) > 0


def test_roulette_needs_the_log_det_stream_and_checks_its_settings():
    block = InvertibleResidual(hidden=4, estimator="roulette")
    x = jnp.ones((2, 3))
    variables = block.init(jax.random.key(0), x)
    with pytest.raises(MissingRngError, match="roulette"):
        block.apply(variables, x)
    InvertibleResidual(estimator="roulette", trace="hutchinson", log_det_terms=None)  # the series' field
    for bad in (
        dict(estimator="unbiased"),
        dict(roulette="binomial"),
        dict(roulette_param=1.5),
        dict(roulette="poisson", roulette_param=-1.0),
        dict(estimator="roulette", exact_terms=0),
        dict(estimator="roulette", max_terms=2),
        dict(estimator="roulette", evaluation=True, max_terms=20),
        dict(log_det_gradient="autodiff"),
        dict(activation="learned_elu"),
    ):
        with pytest.raises(InvalidArgumentError):
            InvertibleResidual(**bad)
