"""Dequantisation and the bits/dim constant, pinned on cases computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.core import bits_per_dim, dequantize, num_bins


def test_bits_per_dim_of_a_uniform_density_is_the_bit_depth():
    # A density uniform on [0, 1)^D has log p = 0 and must score exactly n bits/dim.
    for n_bits in (1, 5, 8):
        np.testing.assert_allclose(bits_per_dim(jnp.zeros(3), 3072, num_bins(n_bits)), n_bits)
    # Non power-of-two bin counts (sklearn digits has 17 levels): log2(17).
    np.testing.assert_allclose(bits_per_dim(jnp.zeros(1), 64, 17), math.log2(17), rtol=1e-6)


def test_bits_per_dim_hand_computed_case():
    # One dimension, standard normal density at 0, 8-bit data:
    # -log p = 0.5 log(2π) = 0.918938533; bits/dim = 0.918938533 / log 2 + 8 = 9.325748064.
    log_prob = jnp.array([-0.5 * math.log(2 * math.pi)])
    np.testing.assert_allclose(bits_per_dim(log_prob, 1, 256), 9.325748064, rtol=1e-7)
    # Per-dimension: D dims each with that density.
    np.testing.assert_allclose(bits_per_dim(10 * log_prob, 10, 256), 9.325748064, rtol=1e-6)


def test_dequantize_stays_in_the_bin_of_each_pixel():
    pixels = jnp.array([[0, 1, 254, 255]], jnp.uint8).reshape(1, 1, 4, 1)
    x = dequantize(jax.random.key(0), pixels, 256)
    assert x.dtype == jnp.float32
    assert bool(jnp.all(x >= 0)) and bool(jnp.all(x < 1))
    np.testing.assert_array_equal(jnp.floor(x * 256).astype(jnp.int32), pixels.astype(jnp.int32))
    # Fresh noise for a fresh key.
    assert not bool(jnp.all(x == dequantize(jax.random.key(1), pixels, 256)))


def test_dequantize_rejects_bad_pixels():
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        dequantize(jax.random.key(0), jnp.array([[[[256]]]]), 256)
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        dequantize(jax.random.key(0), jnp.array([[[[-1]]]]), 17)
    with pytest.raises(ValueError, match="finite"):
        dequantize(jax.random.key(0), jnp.array([[[[jnp.nan]]]]), 256)
    with pytest.raises(ValueError, match="integer"):
        dequantize(jax.random.key(0), jnp.array([[[[0.5]]]]), 256)
