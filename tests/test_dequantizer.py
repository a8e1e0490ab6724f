"""Variational dequantisation (Flow++): the bound, the importance-weighted estimate, training q.

The model is a flow on 1×1×1 images whose discrete likelihood is known in closed form: an ActNorm
z = (x + b) e^s with a standard normal base gives P(k) = Φ(z((k+1)/K)) − Φ(z(k/K)).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import norm

from jaxflows.bijectors import ActNorm
from jaxflows.core import Flow, StandardNormal
from jaxflows.models import VariationalDequantizer
from jaxflows.train import importance_weighted_log_prob

BINS = 2
BIAS, LOG_SCALE = -0.5, math.log(6.0)  # z = 6 (x − 0.5): the density varies a lot inside each bin
PIXELS = jnp.array([0, 1], jnp.uint8).reshape(2, 1, 1, 1)


def exact_log_prob(k: int) -> float:
    z = lambda x: (x + BIAS) * math.exp(LOG_SCALE)
    return math.log(norm.cdf(z((k + 1) / BINS)) - norm.cdf(z(k / BINS)))


def make_flow(dequantizer):
    flow = Flow(bijector=ActNorm(), base=StandardNormal(), event_shape=(1, 1, 1), dequantizer=dequantizer)
    variables = flow.init(jax.random.key(0), PIXELS, jax.random.key(1), BINS, method="discrete_log_prob")
    actnorm = {"bias": jnp.array([BIAS]), "log_scale": jnp.array([LOG_SCALE])}
    params = {**variables["params"], "bijector": actnorm}
    if dequantizer is not None:  # a q(u|x) that is neither uniform nor p's own
        noise = lambda i, p: p + 0.1 * jax.random.normal(jax.random.key(10 + i), p.shape)
        leaves, tree = jax.tree_util.tree_flatten(params["dequantizer"])
        params["dequantizer"] = jax.tree_util.tree_unflatten(
            tree, [noise(i, p) for i, p in enumerate(leaves)]
        )
    return flow, {"params": params}


def bound(flow, variables, draws=4000):
    keys = jax.random.split(jax.random.key(2), draws)
    values = jax.vmap(lambda k: flow.apply(variables, PIXELS, k, BINS, method="discrete_log_prob"))(keys)
    return np.asarray(values.mean(0)), np.asarray(values.std(0) / math.sqrt(draws))


@pytest.mark.parametrize("variational", [False, True], ids=["uniform", "variational"])
def test_bound_lies_below_and_importance_weighting_approaches_the_exact_likelihood(variational):
    flow, variables = make_flow(VariationalDequantizer(hidden=8, depth=2) if variational else None)
    exact = np.array([exact_log_prob(0), exact_log_prob(1)])
    mean, stderr = bound(flow, variables)
    assert np.all(mean < exact - 0.02) and np.all(mean + 4 * stderr < exact), (mean, exact)
    iw = jax.jit(
        lambda k, s: importance_weighted_log_prob(flow, variables, PIXELS, k, BINS, s), static_argnums=1
    )
    gaps = []
    for samples in (1, 10, 100, 1000):
        estimates = np.stack([np.asarray(iw(jax.random.key(r), samples)) for r in range(20)])
        gaps.append(exact - estimates.mean(0))
    gaps = np.array(gaps)
    assert np.all(gaps[:-2] > gaps[1:-1]), gaps  # tighter with every tenfold increase ...
    assert np.all(np.abs(gaps[-1]) < gaps[0] / 5), gaps  # ... towards log P(x)
    if not variational:  # bounded weights p/1: 1000 samples are within 0.02 nats. A logistic-normal
        assert np.all(np.abs(gaps[-1]) < 0.02), gaps  # q has vanishing tails: heavier weights
    key = jax.random.key(7)  # one sample: exactly one draw of the bound
    one_draw = flow.apply(variables, PIXELS, jax.random.split(key, 1)[0], BINS, method="discrete_log_prob")
    np.testing.assert_allclose(iw(key, 1), one_draw, rtol=1e-6)


def test_training_q_tightens_the_bound_beyond_uniform():
    flow, variables = make_flow(VariationalDequantizer(hidden=8, depth=2))
    uniform_flow, uniform_vars = make_flow(None)
    exact = np.array([exact_log_prob(0), exact_log_prob(1)])
    uniform_gap = exact - bound(uniform_flow, uniform_vars)[0]

    def loss(deq_params, key):
        params = {**variables["params"], "dequantizer": deq_params}
        return -flow.apply({"params": params}, PIXELS, key, BINS, method="discrete_log_prob").mean()

    optimizer = optax.adam(1e-2)
    deq = variables["params"]["dequantizer"]
    opt_state = optimizer.init(deq)

    @jax.jit
    def step(deq, opt_state, key):
        grads = jax.grad(lambda d: jnp.mean(jax.vmap(lambda k: loss(d, k))(jax.random.split(key, 32))))(deq)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(deq, updates), opt_state

    for i in range(300):
        deq, opt_state = step(deq, opt_state, jax.random.key(100 + i))
    trained = {"params": {**variables["params"], "dequantizer": deq}}
    trained_gap = exact - bound(flow, trained)[0]
    assert np.all(trained_gap >= -0.01) and np.all(trained_gap < 0.5 * uniform_gap), (
        trained_gap,
        uniform_gap,
    )


def test_pixels_are_validated():
    flow, variables = make_flow(VariationalDequantizer(hidden=8))
    with pytest.raises(ValueError, match="pixels"):
        flow.apply(variables, PIXELS + 5, jax.random.key(0), BINS, method="discrete_log_prob")
