"""The 2D toy densities: shapes, determinism per key, the ring's exact density and its mode balance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.core.errors import InvalidArgumentError, JaxflowsError, ShapeError
from jaxflows.data import ring_centres, ring_of_gaussians, ring_of_gaussians_log_prob, two_moons


@pytest.mark.parametrize("make", [two_moons, ring_of_gaussians], ids=lambda f: f.__name__)
@pytest.mark.parametrize("n", [1, 7, 256])
def test_shape_dtype_and_determinism(make, n):
    a = make(jax.random.key(0), n)
    assert a.shape == (n, 2) and a.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(a)))
    np.testing.assert_array_equal(a, make(jax.random.key(0), n))
    assert not np.allclose(a, make(jax.random.key(1), n))


def test_two_moons_lie_on_their_half_circles_without_noise():
    x = np.asarray(two_moons(jax.random.key(0), 2000, noise=0.0)) + np.array([0.5, 0.25])
    on_upper = np.abs(np.hypot(*x.T) - 1.0) < 1e-5
    on_lower = np.abs(np.hypot(x[:, 0] - 1.0, x[:, 1] - 0.5) - 1.0) < 1e-5
    assert np.all(on_upper | on_lower)
    assert x[on_upper & ~on_lower, 1].min() >= -1e-6 and x[on_lower & ~on_upper, 1].max() <= 0.5 + 1e-6
    assert abs(on_upper.mean() - 0.5) < 4 * 0.5 / np.sqrt(len(x))  # each moon with probability 1/2
    np.testing.assert_allclose(x.mean(0), [0.5, 0.25], atol=0.08)  # centred at the origin before the shift


def test_two_moons_noise_sets_the_spread():
    key = jax.random.key(3)
    clean, noisy = two_moons(key, 4000, noise=0.0), two_moons(key, 4000, noise=0.1)
    np.testing.assert_allclose(np.std(np.asarray(noisy - clean), axis=0), 0.1, rtol=0.05)


def test_ring_log_density_integrates_to_one_on_a_grid():
    edge = np.linspace(-4.0, 4.0, 801)
    grid = np.stack(np.meshgrid(edge, edge), -1).reshape(-1, 2)
    density = np.exp(np.asarray(ring_of_gaussians_log_prob(grid)))
    cell = (edge[1] - edge[0]) ** 2
    np.testing.assert_allclose(density.sum() * cell, 1.0, atol=2e-3)


def test_ring_log_density_matches_a_direct_mixture_sum():
    x = jax.random.normal(jax.random.key(0), (5, 2)) * 2.0
    centres = np.asarray(ring_centres(4, 1.5))
    squared = ((np.asarray(x)[:, None] - centres) ** 2).sum(-1)
    expected = np.log(np.mean(np.exp(-squared / (2 * 0.3**2)) / (2 * np.pi * 0.3**2), axis=1))
    got = ring_of_gaussians_log_prob(x, num_modes=4, radius=1.5, std=0.3)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_ring_samples_fill_every_mode_evenly_and_match_the_density():
    n, k = 8000, 8
    x = ring_of_gaussians(jax.random.key(0), n, num_modes=k, radius=2.0, std=0.25)
    nearest = np.argmin(((np.asarray(x)[:, None] - np.asarray(ring_centres(k, 2.0))) ** 2).sum(-1), 1)
    counts = np.bincount(nearest, minlength=k)
    expected, sd = n / k, np.sqrt(n * (1 / k) * (1 - 1 / k))
    assert np.all(np.abs(counts - expected) < 4 * sd), counts
    # the points' mean log-density estimates the mixture's entropy: log K + 1 + log(2π std²) with
    # modes this far apart (2·2·sin(π/8) = 1.53 = 6 std between neighbours)
    entropy = np.log(k) + 1.0 + np.log(2 * np.pi * 0.25**2)
    nll = -np.asarray(ring_of_gaussians_log_prob(x))
    assert abs(nll.mean() - entropy) < 4 * nll.std() / np.sqrt(n)


@pytest.mark.parametrize(
    "call",
    [
        lambda: two_moons(jax.random.key(0), 0),
        lambda: two_moons(jax.random.key(0), 2.5),
        lambda: two_moons(jax.random.key(0), 4, noise=-0.1),
        lambda: ring_of_gaussians(jax.random.key(0), 4, num_modes=0),
        lambda: ring_of_gaussians(jax.random.key(0), 4, std=0.0),
        lambda: ring_of_gaussians(jax.random.key(0), 4, radius=float("nan")),
    ],
)
def test_invalid_arguments_say_what_was_expected(call):
    with pytest.raises(InvalidArgumentError, match="must be"):
        call()


def test_ring_log_density_rejects_points_that_are_not_2d():
    with pytest.raises(ShapeError, match=r"\(\.\.\., 2\)") as caught:
        ring_of_gaussians_log_prob(jnp.zeros((3, 3)))
    assert isinstance(caught.value, JaxflowsError)
