"""The headline metric: `evaluate_bits_per_dim` equals the mean of each held-out example's discrete
bits/dim computed here independently, one example at a time (`Flow.discrete_log_prob` with the
example's own key, `fold_in(fold_in(PRNGKey(seed), draw), index in the split)`, split into one key
per importance sample), for batch sizes that divide the split and ones that do not (padding must
not count), with several dequantisation draws and importance samples."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.core.objective import discrete_bits_per_dim
from jaxflows.data import ArraySource
from jaxflows.models import glow
from jaxflows.testing import perturb_params
from jaxflows.train import evaluate_bits_per_dim, make_mesh

BINS = 17
N = 10  # held-out examples
SHAPE = (4, 4, 1)


@pytest.fixture(scope="module")
def model():
    flow = glow(SHAPE, levels=1, depth=1, hidden=4)
    pixels = np.random.default_rng(0).integers(0, BINS, (N, *SHAPE)).astype(np.uint8)
    x = jnp.asarray(pixels, jnp.float32) / BINS
    variables = perturb_params(jax.jit(flow.init)(jax.random.key(0), x), 0.1, jax.random.key(1))
    return flow, variables, ArraySource(pixels)


def example_key(seed: int, draw: int, index: int) -> jax.Array:
    """The key of held-out example `index` (its position in the split) in dequantisation draw `draw`."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), draw), index)


def independent_bits_per_dim(flow, variables, source, *, draws: int, samples: int, seed: int) -> float:
    """Mean over draws and examples of each example's bits/dim, one example at a time: with S
    importance samples, log (1/S) Σ_s P̂_s(x) over the S keys split from the example's key."""
    one = jax.jit(lambda pixels, key: flow.apply(variables, pixels, key, BINS, method="discrete_log_prob"))
    values = []
    for draw in range(draws):
        for i in range(len(source)):
            pixels = jnp.asarray(source[np.array([i])])
            key = example_key(seed, draw, i)
            keys = jax.random.split(key, samples)  # the example's S importance draws
            log_p = np.array([float(one(pixels, k)[0]) for k in keys])
            log_mass = np.logaddexp.reduce(log_p) - math.log(samples)
            values.append(float(discrete_bits_per_dim(log_mass, math.prod(SHAPE))))
    return float(np.mean(values))


@pytest.mark.parametrize(
    "batch_size, draws, samples",
    [(5, 1, 1), (4, 1, 1), (3, 2, 1), (10, 1, 3), (4, 2, 2)],
    ids=["divides", "pads", "pads-2-draws", "3-importance-samples", "pads-2-draws-2-samples"],
)
def test_evaluate_is_the_mean_of_independent_per_example_bits_per_dim(model, batch_size, draws, samples):
    flow, variables, source = model
    result = evaluate_bits_per_dim(
        flow, variables, source, BINS, make_mesh(), batch_size, draws, seed=3, importance_samples=samples
    )
    expected = independent_bits_per_dim(flow, variables, source, draws=draws, samples=samples, seed=3)
    # float32 log-likelihoods of ~16 dims in nats: ~1e-6 relative
    np.testing.assert_allclose(result, expected, rtol=1e-5)
