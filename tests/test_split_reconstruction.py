"""The evaluation's reconstruction error covers the whole held-out split (issue 42, item 6): the
worst example (its index and per-level breakdown) and quantiles, the same for any batch size."""

import jax
import numpy as np

from jaxflows.analysis import reconstruction_errors
from jaxflows.data import array_dataset
from jaxflows.models import build_model
from jaxflows.train.evaluate import split_reconstruction


def _perturbed_flow():
    """A small affine coupling flow with random (not identity-initialised) parameters."""
    flow = build_model("coupling_flow", (2,), {"depth": 2, "hidden": 8})
    variables = flow.init(jax.random.PRNGKey(0), np.zeros((4, 2), np.float32))
    leaves, tree = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    noisy = [
        leaf + 0.3 * jax.random.normal(k, leaf.shape, leaf.dtype)
        for k, leaf in zip(keys, leaves, strict=True)
    ]
    return flow, jax.tree_util.tree_unflatten(tree, noisy)


def _one_by_one(flow, variables, x):
    z, _ = flow.apply(variables, x, None, method="forward")
    back, _ = flow.apply(variables, z, None, method="inverse")
    return np.max(np.abs(np.asarray(back) - x), axis=-1)


def test_the_worst_example_is_found_anywhere_in_the_split_for_any_batch_size():
    flow, variables = _perturbed_flow()
    rng = np.random.default_rng(0)
    held_out = rng.normal(size=(150, 2)).astype(np.float32)
    held_out[137] *= 1e4  # far out: float32 loses absolute precision there
    source = array_dataset(held_out[:8], held_out).held_out
    scores = split_reconstruction(flow, variables, source, None, batch_size=64)
    errors = _one_by_one(flow, variables, held_out)
    assert scores["reconstruction_worst/example"] == 137 == int(np.argmax(errors))
    np.testing.assert_allclose(scores["reconstruction_error/model"], errors.max(), rtol=1e-5)
    np.testing.assert_allclose(scores["reconstruction_quantile/p50"], np.median(errors), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(scores["reconstruction_quantile/p99"], np.quantile(errors, 0.99), rtol=1e-4)
    assert scores["reconstruction_error/model"] > 10 * scores["reconstruction_quantile/p99"]
    levels = {
        k: v
        for k, v in scores.items()
        if k.startswith("reconstruction_worst/") and k != "reconstruction_worst/example"
    }
    by_layer = reconstruction_errors(flow, variables, held_out[137:138])
    expected = {}
    for path, error in by_layer.items():
        level = path.split("/")[0]
        expected[f"reconstruction_worst/{level}"] = max(
            expected.get(f"reconstruction_worst/{level}", 0.0), float(error.max())
        )
    assert levels.keys() == expected.keys() and len(levels) >= 1
    for name, value in expected.items():
        np.testing.assert_allclose(levels[name], value, rtol=1e-5)
    other = split_reconstruction(flow, variables, source, None, batch_size=7)
    assert other["reconstruction_worst/example"] == 137
    np.testing.assert_allclose(
        other["reconstruction_error/model"], scores["reconstruction_error/model"], rtol=1e-6
    )


def test_dequantised_images_use_each_examples_own_key():
    """Discrete data: the image reconstructed is the one evaluation scores (noise keyed by the index)."""
    flow = build_model("coupling_flow", (4,), {"depth": 1, "hidden": 8}, data_range=(0.0, 1.0))
    variables = flow.init(jax.random.PRNGKey(0), np.zeros((2, 4), np.float32))
    pixels = np.random.default_rng(1).integers(0, 16, (40, 4)).astype(np.uint8)
    source = array_dataset(pixels[:8], pixels, 16).held_out
    a = split_reconstruction(flow, variables, source, 16, seed=3, batch_size=40)
    b = split_reconstruction(flow, variables, source, 16, seed=3, batch_size=9)
    assert a == b


def test_non_finite_examples_are_counted_and_found():
    flow, variables = _perturbed_flow()
    held_out = np.random.default_rng(1).normal(size=(40, 2)).astype(np.float32)
    held_out[[5, 31]] = 3e38  # overflows float32 inside the flow
    source = array_dataset(held_out[:8], held_out).held_out
    scores = split_reconstruction(flow, variables, source, None, batch_size=16)
    assert scores["reconstruction_nonfinite/examples"] == 2
    assert scores["reconstruction_worst/example"] in (5, 31)
    assert not np.isfinite(scores["reconstruction_error/model"])
    clean = split_reconstruction(flow, variables, array_dataset(held_out[:8], held_out[:5]).held_out, None)
    assert clean["reconstruction_nonfinite/examples"] == 0
