"""Composition, inversion, the functional view, bases and flows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import ActNorm, AffineCoupling, Conv1x1LU
from jaxflows.core import (
    Chain,
    DiagonalGaussian,
    Flow,
    Invert,
    StandardNormal,
    functional,
)
from jaxflows.models import glow
from tests.harness import perturb_params


def _x(shape=(4, 4, 4, 4), seed=0):
    return jax.random.uniform(jax.random.key(seed), shape)


def test_chain_log_dets_add_and_order_matters():
    layers = [ActNorm(), Conv1x1LU(), AffineCoupling(hidden=8)]
    chain = Chain(layers, names=["a", "b", "c"])
    x = _x()
    variables = perturb_params(chain.init(jax.random.key(1), x), 0.1, jax.random.key(2))
    assert set(variables["params"]) == {"a", "b", "c"}

    h, total = x, 0.0
    for layer, name in zip(layers, ["a", "b", "c"], strict=True):
        sub = {k: v[name] for k, v in variables.items() if name in v}
        h, ld = layer.apply(sub, h, method="forward")
        total = total + ld
    y, ld_chain = chain.apply(variables, x, method="forward")
    np.testing.assert_allclose(y, h, atol=1e-6)
    np.testing.assert_allclose(ld_chain, total, atol=1e-5)

    with pytest.raises(ValueError, match="names"):
        Chain(layers, names=["a"]).init(jax.random.key(0), x)


def test_invert_swaps_directions():
    x = _x()
    layer = Conv1x1LU()
    variables = layer.init(jax.random.key(0), x)
    inverted = Invert(Conv1x1LU())
    inv_vars = {k: {"bijector": v} for k, v in variables.items()}
    y, ld = inverted.apply(inv_vars, x, method="forward")
    y_ref, ld_ref = layer.apply(variables, x, method="inverse")
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    np.testing.assert_allclose(ld, ld_ref, atol=1e-6)


@pytest.fixture(scope="module")
def small_flow():
    flow = glow((8, 8, 1), levels=2, depth=2, hidden=16)
    x = _x((6, 8, 8, 1))
    variables = perturb_params(jax.jit(flow.init)(jax.random.key(0), x), 0.05, jax.random.key(3))
    return flow, variables, x


def test_functional_matches_apply_under_jit_grad_jacfwd_vmap(small_flow):
    flow, variables, x = small_flow
    f = functional(flow, variables)
    z, ld = jax.jit(f.forward)(x)
    z_ref, ld_ref = flow.apply(variables, x, method="forward")
    np.testing.assert_allclose(z, z_ref, atol=1e-5)
    np.testing.assert_allclose(ld, ld_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(jax.jit(f.inverse)(z)[0], x, atol=1e-4)
    np.testing.assert_allclose(jax.jit(f.log_det)(x), ld_ref, rtol=1e-5, atol=1e-4)

    # d/dx of the summed log-det, through the functional view and through apply.
    g = jax.jit(jax.grad(lambda a: f.log_det(a).sum()))(x)
    g_ref = jax.jit(jax.grad(lambda a: flow.apply(variables, a, method="log_det").sum()))(x)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)

    # vmap over examples (each a batch of one) equals the batched call.
    per_example = jax.jit(jax.vmap(lambda a: f.forward(a[None])[1][0]))(x)
    np.testing.assert_allclose(per_example, ld_ref, rtol=1e-5, atol=1e-4)

    # jacfwd of one example's flattened map has the log-det as its log|det|.
    jac = jax.jit(jax.jacfwd(lambda v: f.forward(v.reshape(1, 8, 8, 1))[0].reshape(-1)))(x[0].reshape(-1))
    # float32 slogdet of a 64×64 jacobian of condition ~4 (log-det ~80): ~D·eps ≈ 1e-5 relative (measured 0)
    np.testing.assert_allclose(jnp.linalg.slogdet(jac)[1], ld_ref[0], rtol=1e-5, atol=1e-4)


def test_flow_log_prob_is_base_plus_log_det(small_flow):
    flow, variables, x = small_flow
    z, ld = flow.apply(variables, x, method="forward")
    expected = StandardNormal().log_prob(z) + ld
    np.testing.assert_allclose(flow.apply(variables, x), expected, rtol=1e-6)


def test_sampling_shape_and_temperature(small_flow):
    flow, variables, _ = small_flow
    key = jax.random.key(7)
    sample = jax.jit(lambda t, n: flow.apply(variables, key, n, t, method="sample"), static_argnums=1)
    forward = jax.jit(lambda a: flow.apply(variables, a, method="forward"))
    for temperature in (0.0, 0.5, 1.0):
        samples = sample(temperature, 5)
        assert samples.shape == (5, 8, 8, 1)
        z, _ = forward(samples)
        # The latent of a sample is the base draw scaled by the temperature.
        np.testing.assert_allclose(z, temperature * jax.random.normal(key, (5, 8, 8, 1)), atol=2e-4)
    cold, hot = sample(0.5, 64), sample(1.0, 64)
    assert float(jnp.std(cold)) < float(jnp.std(hot))


def test_sample_and_log_prob_agree(small_flow):
    flow, variables, _ = small_flow
    x, log_prob = jax.jit(lambda k: flow.apply(variables, k, 4, method="sample_and_log_prob"))(
        jax.random.key(1)
    )
    flow_unchecked = flow.clone(data_range=None)  # samples may leave [0, 1)
    # log p of a float32 sample through inverse then forward, |log p| ~ 10: measured 1.5e-5 apart
    np.testing.assert_allclose(jax.jit(flow_unchecked.apply)(variables, x), log_prob, rtol=1e-5, atol=2e-4)


def test_diagonal_gaussian_base():
    base = DiagonalGaussian((2, 2, 1))
    z = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
    variables = {"params": {"mean": jnp.full((2, 2, 1), 0.5), "log_scale": jnp.full((2, 2, 1), -1.0)}}
    expected = jax.scipy.stats.norm.logpdf(z, 0.5, jnp.exp(-1.0)).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(base.apply(variables, z, method="log_prob"), expected, rtol=1e-5)
    draws = base.apply(variables, jax.random.key(1), (4000, 2, 2, 1), 0.5, method="sample")
    np.testing.assert_allclose(draws.mean(), 0.5, atol=0.01)
    np.testing.assert_allclose(draws.std(), 0.5 * jnp.exp(-1.0), rtol=0.05)

    flow = Flow(Conv1x1LU(), base, (2, 2, 1), data_range=None)
    variables = flow.init(jax.random.key(0), z)
    assert set(variables["params"]) == {"bijector", "base"}


def test_actnorm_data_dependent_init_standardises_the_init_batch():
    x = 3.0 * jax.random.normal(jax.random.key(0), (16, 4, 4, 3)) + jnp.array([1.0, -2.0, 5.0])
    layer = ActNorm()
    variables = layer.init(jax.random.key(1), x)
    y, ld = layer.apply(variables, x, method="forward")
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    expected_ld = -16 * jnp.log(x.std(axis=(0, 1, 2))).sum()
    np.testing.assert_allclose(ld, jnp.full(16, expected_ld), rtol=1e-4)
    # After init the parameters are data-independent: another batch is not standardised.
    y2, _ = layer.apply(variables, 2 * x, method="forward")
    assert float(jnp.abs(y2.std(axis=(0, 1, 2)) - 1.0).max()) > 0.5


def test_model_variable_names_follow_the_architecture(small_flow):
    _, variables, _ = small_flow
    params = variables["params"]["bijector"]
    assert set(params) == {"level1", "level2"}
    assert set(params["level1"]) == {"flow_steps", "split"}  # squeeze has no parameters
    assert set(params["level1"]["flow_steps"]) == {"actnorm", "conv", "coupling"}
    steps = params["level1"]["flow_steps"]["actnorm"]["bias"].shape[0]
    assert steps == 2, "the K steps' parameters are stacked along a leading axis"
    assert "prior" in params["level2"]
