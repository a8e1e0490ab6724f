"""Dequantisation and bits per dimension (Theis et al. 2016; Glow Sec 2).

Discrete pixels x ∈ {0, …, K−1}^D (K = 2^n bins for n-bit data) become x̃ = (x + u) / K with
u ~ U[0, 1)^D. A density on [0, 1)^D gives the discrete model the lower bound
    log P(x) ≥ E_u[log p(x̃)] − D log K,
so bits/dim = (−log p(x̃) + D log K) / (D log 2). A density uniform on [0, 1)^D gives log2 K.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxflows.core.bijector import Array
from jaxflows.core.errors import InvalidInputError, ShapeError
from jaxflows.core.validation import check_finite, check_range, is_concrete


def num_bins(n_bits: int) -> int:
    """Number of intensity levels of n-bit data (256 for 8 bits)."""
    return 2**n_bits


def check_pixels(pixels: Array, bins: int) -> None:
    """Require integer intensities in {0, …, bins−1} (integer dtype, or integral floats)."""
    if jnp.issubdtype(pixels.dtype, jnp.floating) and is_concrete(pixels):
        check_finite(pixels, "pixels")
        if not bool(jnp.all(pixels == jnp.round(pixels))):
            raise InvalidInputError("pixels: expected integer intensities (already dequantized?)")
    check_range(pixels, 0, bins - 1, "pixels")


def is_key_batch(key: Array) -> bool:
    """Whether `key` is one PRNG key per example (typed keys of shape (batch,), or raw uint32 keys
    of shape (batch, 2)) rather than a single key."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    return key.ndim == (1 if typed else 2)


def example_keys(key: Array, indices: Array) -> Array:
    """One key per example, `fold_in(key, index)`: example i's randomness then depends on its index
    alone, not on the batch it is in or how the batch is laid out across devices."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(indices, jnp.uint32))


def draw(sampler, key: Array, shape: tuple[int, ...]) -> Array:
    """`sampler(key, shape)` for one key; for a batch of keys, row i is `sampler(key[i], shape[1:])`."""
    if not is_key_batch(key):
        return sampler(key, shape)
    if key.shape[0] != shape[0]:
        raise ShapeError(f"{key.shape[0]} keys for {shape[0]} examples; expected one key per example")
    one_example = lambda k: sampler(k, shape[1:])
    if _vmap_shares_first_key(key):  # rbg: a vmapped draw reads only the batch's first key
        return jax.lax.map(one_example, key)
    return jax.vmap(one_example)(key)


def _vmap_shares_first_key(key: Array) -> bool:
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    impl = str(jax.random.key_impl(key)) if typed else jax.config.jax_default_prng_impl
    return impl in ("rbg", "unsafe_rbg")


def dequantize(key: Array, pixels: Array, bins: int) -> Array:
    """Uniform dequantisation of integer pixels in {0, …, bins−1} to floats in [0, 1).

    `key` is one key, or one per example (`example_keys`) for noise that does not depend on the
    batch layout."""
    check_pixels(pixels, bins)
    noise = draw(lambda k, shape: jax.random.uniform(k, shape, jnp.float32), key, pixels.shape)
    return (pixels.astype(jnp.float32) + noise) / bins


def discrete_log_prob_offset(num_dims: int, bins: int) -> float:
    """The −D log K term that turns a density on [0, 1)^D into a bound on discrete log-mass."""
    return -num_dims * math.log(bins)


def discrete_bits_per_dim(log_mass, num_dims: int):
    """−log P / (D log 2): bits per dimension of a discrete log-probability in nats (a float, a
    NumPy or a JAX array; the arithmetic keeps its dtype)."""
    return -log_mass / (num_dims * math.log(2.0))


def bits_per_dim(log_prob: Array, num_dims: int, bins: int) -> Array:
    """Bits per dimension of discrete data from the density `log_prob` of its dequantised version."""
    return discrete_bits_per_dim(log_prob + discrete_log_prob_offset(num_dims, bins), num_dims)
