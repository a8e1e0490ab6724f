"""TarFlow (Zhai et al. 2024): the causal-transformer conditioner inside `MaskedAutoregressive`
through the property harness, its key/value-cached inverse against the naive one (which reruns the
network on the whole prefix) and forward's inverse in float64, the triangular Jacobian in token
order, the shift by one token, guidance and denoising, and whole tiny TarFlows."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import AffineTransformer, MaskedAutoregressive
from jaxflows.bijectors.tarflow import CausalTransformer, PatchTokens
from jaxflows.core.context import MissingContextError
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.models import MODELS
from jaxflows.models.tarflow import GaussianNoise, denoise, tarflow
from jaxflows.testing import check_autoregressive
from tests.harness import BijectorCase, perturb_params, property_params

TINY = dict(width=8, depth=1, heads=2)


class NaiveCausalTransformer(CausalTransformer):
    """The same network without the incremental protocol: each inverse pass reruns it on the whole
    input (the naive inverse)."""

    init_cache = None
    step = None


def _block(order="natural", network=CausalTransformer, **kwargs):
    return MaskedAutoregressive(AffineTransformer(scale="exp"), network(order=order, **{**TINY, **kwargs}))


def _labels(key, batch, classes=3):
    return jax.nn.one_hot(jax.random.randint(key, (batch,), 0, classes), classes)


def _tiny_tarflow(**kwargs):
    fields = dict(patch_size=2, width=8, blocks=1, layers_per_block=1, heads=2)
    return tarflow((4, 4, 1), **{**fields, **kwargs})


CASES = [
    BijectorCase("block_reversed_context", lambda: _block("reversed"), (2, 3, 2), perturb=0.2,
                 context=_labels),
    BijectorCase("patch_tokens", lambda: PatchTokens(2, 3), (2, 4, 6, 2)),
    BijectorCase("tarflow_tiny", _tiny_tarflow, (2, 4, 4, 1), perturb=0.2, data="unit"),
    BijectorCase("tarflow_two_blocks_classes", lambda: _tiny_tarflow(blocks=2, num_classes=3),
                 (2, 4, 4, 1), perturb=0.2, data="unit",
                 context=lambda key, batch: jax.random.randint(key, (batch,), 0, 3)),
]  # fmt: skip
# The whole models run with -m slow; the default run checks the block (the layer's maths) and the
# patch tokens, and the whole model's inverse, triangularity and guidance in the tests below.
SLOW = {"tarflow_two_blocks_classes", "tarflow_tiny"}
# Finite differences compile the float64 map many times (~70 s for the block): -m slow runs them.
SLOW_CHECKS = {
    ("tarflow_tiny", "check_gradients_match_finite_differences"),
    ("block_reversed_context", "check_gradients_match_finite_differences"),
}


@pytest.mark.parametrize(("case", "check"), property_params(CASES, SLOW, SLOW_CHECKS))
def test_tarflow_properties(case, check):
    check(case)


def _float64_pair(order, context, guidance=0.0):
    """(cached layer, naive layer, variables, x, c) in float64 with perturbed parameters."""
    cached = _block(order, guidance=guidance, attention_temperature=1.3)
    naive = _block(order, NaiveCausalTransformer, guidance=guidance, attention_temperature=1.3)
    x = jax.random.normal(jax.random.key(0), (3, 5, 4), jnp.float64)
    c = _labels(jax.random.key(3), 3).astype(jnp.float64) if context else None
    variables = cached.init(jax.random.key(1), x, c)
    variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)
    return cached, naive, perturb_params(variables, 0.3, jax.random.key(2)), x, c


@pytest.mark.parametrize(("order", "context"), [("natural", False), ("reversed", True)])
def test_cached_inverse_equals_the_naive_inverse_and_inverts_forward_in_float64(order, context):
    with jax.enable_x64(True):
        cached, naive, variables, x, c = _float64_pair(order, context)
        z, log_det = cached.apply(variables, x, c)
        assert float(jnp.max(jnp.abs(z - x))) > 0.1  # the perturbed blocks are far from the identity
        x_cached, ld_cached = cached.apply(variables, z, c, method="inverse")
        x_naive, ld_naive = naive.apply(variables, z, c, method="inverse")
        np.testing.assert_allclose(x_cached, x_naive, atol=1e-12)
        np.testing.assert_allclose(ld_cached, ld_naive, atol=1e-12)
        np.testing.assert_allclose(x_cached, x, atol=1e-10)
        np.testing.assert_allclose(ld_cached, -log_det, atol=1e-10)


def test_guided_sampling_keeps_separate_caches_and_equals_its_naive_inverse():
    with jax.enable_x64(True):
        cached, naive, variables, x, c = _float64_pair("natural", True, guidance=2.0)
        z = jax.random.normal(jax.random.key(5), x.shape, jnp.float64)
        x_cached, _ = cached.apply(variables, z, c, method="inverse")
        x_naive, _ = naive.apply(variables, z, c, method="inverse")
        np.testing.assert_allclose(x_cached, x_naive, atol=1e-12)
        unguided = _block("natural", attention_temperature=1.3)
        x_plain, _ = unguided.apply(variables, z, c, method="inverse")
        assert float(jnp.max(jnp.abs(x_plain - x_cached))) > 1e-3  # guidance moves the samples
        # the guided map is still a bijection: its forward inverts its sampling
        np.testing.assert_allclose(cached.apply(variables, x_cached, c)[0], z, atol=1e-10)
        cache = cached.apply(variables, z, c, method=lambda m, a, b: m.network.init_cache(a, b))
        assert len(cache) == 2  # conditional and unconditional passes, one cache each


def test_an_unconditional_model_is_guided_by_attention_temperature():
    x = jax.random.normal(jax.random.key(0), (2, 4, 2))
    plain = _block()
    variables = perturb_params(plain.init(jax.random.key(1), x), 0.3, jax.random.key(2))
    z = plain.apply(variables, x)[0]
    same = _block(guidance=1.5, attention_temperature=1.0).apply(variables, x)[0]
    np.testing.assert_allclose(same, z, atol=1e-6)  # at τ = 1 the unconditional pass is the same
    hotter = _block(guidance=1.5, attention_temperature=2.0)
    z_hot = hotter.apply(variables, x)[0]
    assert float(jnp.max(jnp.abs(z_hot - z))) > 1e-3
    np.testing.assert_allclose(hotter.apply(variables, z_hot, method="inverse")[0], x, atol=1e-4)


def test_token_zero_is_the_identity_and_the_jacobian_is_triangular_in_token_order():
    for order, first in (("natural", 0), ("reversed", -1)):
        layer = _block(order)
        x = jax.random.normal(jax.random.key(0), (2, 4, 3))
        variables = perturb_params(layer.init(jax.random.key(1), x), 0.3, jax.random.key(2))
        z, _ = layer.apply(variables, x)
        np.testing.assert_array_equal(z[:, first], x[:, first])  # the shift gives token 0 zeros
        assert float(jnp.max(jnp.abs(z - x))) > 0.1
    check_autoregressive(lambda: _block("reversed"), (2, 4, 2), perturb=0.3, context=_labels)


def test_initialised_blocks_are_the_identity_and_sampling_runs_n_minus_1_steps():
    layer = _block()
    x = jax.random.normal(jax.random.key(0), (2, 6, 3))
    variables = layer.init(jax.random.key(1), x)
    z, log_det = layer.apply(variables, x)
    np.testing.assert_array_equal(z, x)
    np.testing.assert_array_equal(log_det, 0.0)
    text = str(jax.make_jaxpr(lambda a: layer.apply(variables, a, method="inverse"))(x))
    assert "scan[" in text and "cond[" in text  # pass 0 skips the network: N − 1 network steps
    assert "f32[2,6,2,4]" in text  # a (batch, N, heads, D) key/value cache is carried


def test_errors_name_what_is_expected():
    with pytest.raises(InvalidArgumentError, match="multiple of heads"):
        CausalTransformer(width=6, heads=4)
    with pytest.raises(InvalidArgumentError, match="order"):
        CausalTransformer(order="random")
    with pytest.raises(ShapeError, match="multiples of patch_size"):
        tarflow((5, 4, 1), patch_size=2)
    layer = _block()
    x = jnp.zeros((2, 3, 2))
    variables = layer.init(jax.random.key(0), x, _labels(jax.random.key(1), 2))
    with pytest.raises(MissingContextError):
        layer.apply(variables, x)


def test_registered_class_conditional_shapes_guidance_and_determinism():
    assert MODELS["tarflow"] is tarflow
    flow = _tiny_tarflow(num_classes=3)
    pixels = jnp.linspace(0.05, 0.95, 32).reshape(2, 4, 4, 1)
    labels = jnp.array([0, 2])
    variables = perturb_params(flow.init(jax.random.key(0), pixels, labels), 0.2, jax.random.key(1))
    assert flow.apply(variables, pixels, labels, method="log_prob").shape == (2,)
    guided = _tiny_tarflow(num_classes=3, guidance=1.5)
    sample = functools.partial(guided.apply, variables, jax.random.key(2), 2, context=labels, method="sample")
    first, second = sample(), sample()
    assert first.shape == (2, 4, 4, 1)
    np.testing.assert_array_equal(first, second)
    plain = flow.apply(variables, jax.random.key(2), 2, context=labels, method="sample")
    assert float(jnp.max(jnp.abs(plain - first))) > 1e-4


def test_noise_augmented_tarflow_is_unbounded_and_denoising_steps_along_the_score():
    flow = _tiny_tarflow(noise_std=0.1)
    assert flow.data_range is None and isinstance(flow.dequantizer, GaussianNoise)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 1)) * 0.5 + 0.5  # outside [0, 1] too
    variables = perturb_params(flow.init(jax.random.key(1), x), 0.2, jax.random.key(2))
    cleaned = denoise(flow, variables, x, 0.1)
    assert cleaned.shape == x.shape
    np.testing.assert_array_equal(cleaned, denoise(flow, variables, x, 0.1))
    log_p = lambda a: flow.apply(variables, a, method="log_prob")
    assert bool(jnp.all(log_p(cleaned) > log_p(x)))  # a small step up the density
    pixels = jnp.full((2, 4, 4, 1), 100, jnp.int32)
    for key in (jax.random.key(3), jax.random.split(jax.random.key(3), 2)):  # one, or one per example
        log_mass = flow.apply(variables, pixels, key, 256, method="discrete_log_prob")
        assert log_mass.shape == (2,) and bool(jnp.all(jnp.isfinite(log_mass)))
    with pytest.raises(InvalidArgumentError, match="noise_std"):
        _tiny_tarflow(noise_std=0.0)


@pytest.mark.slow
def test_round_trip_on_unit_range_data_is_bounded_in_float32_and_bfloat16():
    """The inverse feeds back a reconstructed prefix, one token at a time, so a bfloat16 network
    does not round as the whole-sequence pass did: bounded, not exact (measured on 28x28x1 with 4
    blocks of 2 layers at width 64, parameters perturbed by 0.02: 7e-7 in float32, 5e-3 in
    bfloat16; docs/layers.md)."""
    kwargs = dict(patch_size=4, width=32, blocks=2, layers_per_block=2, heads=4)
    x = jax.random.uniform(jax.random.key(0), (8, 16, 16, 1))
    variables = tarflow((16, 16, 1), **kwargs).init(jax.random.key(1), x)
    variables = perturb_params(variables, 0.02, jax.random.key(2))
    for network_dtype, bound in ((None, 1e-5), (jnp.bfloat16, 2e-2)):
        flow = tarflow((16, 16, 1), network_dtype=network_dtype, **kwargs)
        z, _ = jax.jit(lambda v, a, f=flow: f.apply(v, a, method="forward"))(variables, x)
        x_back = jax.jit(lambda v, a, f=flow: f.apply(v, a, method="inverse")[0])(variables, z)
        assert float(jnp.max(jnp.abs(x_back - x))) < bound
