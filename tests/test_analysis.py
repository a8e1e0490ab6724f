"""Per-layer log-det breakdown, gradient helpers and invertibility diagnostics."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.analysis import (
    BASE,
    attribute_direction,
    invertibility_report,
    layer_variables,
    log_det_breakdown,
    log_det_grad_input,
    log_det_grad_params,
    log_det_saliency,
    manipulate,
    reconstruction_errors,
)
from jaxflows.bijectors import ActNorm, AffineCoupling, Conv1x1, Conv1x1LU, Squeeze, random_rotation
from jaxflows.core import Chain
from jaxflows.models import glow
from tests.harness import perturb_params


@pytest.fixture(scope="module")
def model():
    flow = glow((8, 8, 1), levels=2, depth=2, hidden=8)
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
    variables = perturb_params(jax.jit(flow.init)(jax.random.key(1), x), 0.05, jax.random.key(2))
    return flow, variables, x


def test_breakdown_names_every_layer_and_sums_to_log_prob(model):
    flow, variables, x = model
    terms = jax.jit(lambda v, a: log_det_breakdown(flow, v, a))(variables, x)
    expected_layers = {
        f"level{lv}/flow_steps/{s}/{name}"
        for lv in (1, 2)
        for s in (0, 1)
        for name in ("actnorm", "conv", "coupling")
    } | {"level1/squeeze", "level1/split", "level2/squeeze", "level2/prior", BASE}
    assert set(terms) == expected_layers
    assert all(t.shape == (3,) for t in terms.values())
    log_prob = flow.apply(variables, x)
    total = sum(terms.values())
    scale = sum(jnp.abs(t) for t in terms.values())
    np.testing.assert_array_less(jnp.abs(total - log_prob), 1e-5 * scale)

    with jax.enable_x64(True):
        v64 = jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, variables
        )
        x64 = x.astype(jnp.float64)
        terms64 = log_det_breakdown(flow, v64, x64)
        np.testing.assert_allclose(sum(terms64.values()), flow.apply(v64, x64), rtol=1e-10)


def test_breakdown_of_a_plain_chain():
    chain = Chain([ActNorm(), Conv1x1LU(), AffineCoupling(hidden=4)], names=["norm", "mix", "couple"])
    x = jax.random.normal(jax.random.key(0), (2, 2, 2, 4))
    variables = perturb_params(chain.init(jax.random.key(1), x), 0.1, jax.random.key(2))
    terms = log_det_breakdown(chain, variables, x)
    assert list(terms) == ["norm", "mix", "couple", BASE]
    _, log_det = chain.apply(variables, x, method="forward")
    np.testing.assert_allclose(terms["norm"] + terms["mix"] + terms["couple"], log_det, rtol=1e-5)


def test_gradient_helpers_agree_with_jax_grad_of_the_full_expression(model):
    flow, variables, x = model
    whole = jax.grad(lambda a: flow.apply(variables, a, method="log_det").sum())(x)
    np.testing.assert_allclose(log_det_grad_input(flow, variables, x), whole, rtol=1e-4, atol=1e-5)

    # One coupling's term, written out by hand: squeeze → actnorm → conv → coupling.log_det.
    layers = [Squeeze(), ActNorm(), Conv1x1LU()]
    paths = ["level1/squeeze", "level1/flow_steps/0/actnorm", "level1/flow_steps/0/conv"]
    coupling = AffineCoupling(hidden=8)

    def by_hand(a, v):
        h = a
        for layer, path in zip(layers, paths, strict=True):
            h, _ = layer.apply(layer_variables(flow, v, path), h, method="forward")
        variables = layer_variables(flow, v, "level1/flow_steps/0/coupling")
        return coupling.apply(variables, h, method="log_det").sum()

    layer = "level1/flow_steps/0/coupling"
    np.testing.assert_allclose(
        log_det_grad_input(flow, variables, x, layer), jax.grad(by_hand)(x, variables), rtol=1e-4, atol=1e-6
    )
    grads = log_det_grad_params(flow, variables, x, layer)
    expected = jax.grad(lambda p: by_hand(x, {**variables, "params": p}))(variables["params"])
    for g, e in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
    # ActNorm's log-det does not depend on the input.
    np.testing.assert_allclose(log_det_grad_input(flow, variables, x, "level1/flow_steps/0/actnorm"), 0.0)

    saliency = log_det_saliency(flow, variables, x)
    assert saliency.shape == (3, 8, 8) and float(saliency.sum()) > 0
    with pytest.raises(KeyError, match="no layer"):
        log_det_grad_input(flow, variables, x, "level9/nothing")


def test_diagnostics_flag_an_ill_conditioned_1x1_conv():
    chain = Chain([ActNorm(), Conv1x1(), AffineCoupling(hidden=4)], names=["norm", "mix", "couple"])
    x = jax.random.normal(jax.random.key(0), (4, 2, 2, 4))
    variables = chain.init(jax.random.key(1), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer is off by half an intensity level
        healthy = invertibility_report(chain, variables, x)
    assert [h.path for h in healthy] == ["norm", "mix", "couple"]
    assert not any(h.flagged for h in healthy)

    bad = random_rotation(jax.random.key(3), 4) @ jnp.diag(jnp.array([1.0, 1e-6, 1.0, 1.0]))
    variables = jax.tree_util.tree_map(lambda a: a, variables)
    variables["params"]["mix"]["kernel"] = bad
    with pytest.warns(UserWarning, match=r"mix: reconstruction error .* exceeds half an intensity level"):
        report = {h.path: h for h in invertibility_report(chain, variables, x)}
    assert report["mix"].flagged and report["mix"].condition_number > 1e5
    assert not report["norm"].flagged and not report["couple"].flagged
    errors = reconstruction_errors(chain, variables, x)
    assert float(errors["mix"].max()) > float(errors["norm"].max())


def test_attribute_manipulation_moves_the_latent_by_alpha_times_the_direction():
    flow = glow((8, 8, 1), levels=2, depth=2, hidden=8)
    keys = jax.random.split(jax.random.key(0), 4)
    with_attr = 0.6 + 0.3 * jax.random.uniform(keys[0], (6, 8, 8, 1))  # brighter images
    without = 0.1 + 0.3 * jax.random.uniform(keys[1], (6, 8, 8, 1))
    variables = jax.jit(flow.init)(keys[2], jnp.concatenate([with_attr, without]))
    variables = {
        **variables,
        "params": jax.tree_util.tree_map(
            lambda p: p + 0.05 * jax.random.normal(keys[3], p.shape), variables["params"]
        ),
    }
    direction = attribute_direction(flow, variables, with_attr, without)
    assert direction.shape == (8, 8, 1) and float(jnp.abs(direction).max()) > 0.1

    x = without[:3]
    alphas = jnp.array([0.0, 0.5, 1.0, -0.5])
    out = manipulate(flow, variables, x, direction, alphas)
    assert out.shape == (3, 4, 8, 8, 1)
    np.testing.assert_allclose(out[:, 0], x, atol=2e-5)  # α = 0 gives back the input
    latent = jax.jit(lambda images: flow.apply(variables, images, method="forward")[0])
    z = latent(x)
    for i, alpha in enumerate(alphas):
        moved = latent(out[:, i])
        np.testing.assert_allclose(moved - z, jnp.broadcast_to(alpha * direction, z.shape), atol=5e-4)
    with pytest.raises(ValueError, match="one example's shape"):
        manipulate(flow, variables, x, direction[..., :0], alphas)
