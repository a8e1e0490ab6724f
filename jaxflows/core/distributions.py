"""Base distributions over NHWC latents; log densities are summed per example."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.core.bijector import Array, sum_except_batch

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(z: Array, mean: Array | float = 0.0, log_scale: Array | float = 0.0) -> Array:
    """Element-wise log N(z; mean, exp(log_scale)^2)."""
    eps = (z - mean) * jnp.exp(-log_scale)
    return -0.5 * eps**2 - log_scale - _HALF_LOG_2PI


class StandardNormal(nn.Module):
    """N(0, I). `temperature` scales the standard deviation when sampling (Glow Sec 5)."""

    def log_prob(self, z: Array) -> Array:
        return sum_except_batch(gaussian_log_prob(z))

    def sample(self, key: Array, shape: tuple[int, ...], temperature: float = 1.0) -> Array:
        return temperature * jax.random.normal(key, shape)

    def __call__(self, z: Array) -> Array:
        return self.log_prob(z)


class DiagonalGaussian(nn.Module):
    """N(mean, diag(exp(log_scale))^2) with learned mean and log-scale over `event_shape`.

    Zero-initialised, so it starts as N(0, I).

    Attributes:
      event_shape: shape of one example; mean and log_scale have this shape.
    """

    event_shape: tuple[int, ...]

    def setup(self):
        self.mean = self.param("mean", nn.initializers.zeros, self.event_shape)
        self.log_scale = self.param("log_scale", nn.initializers.zeros, self.event_shape)

    def log_prob(self, z: Array) -> Array:
        return sum_except_batch(gaussian_log_prob(z, self.mean, self.log_scale))

    def sample(self, key: Array, shape: tuple[int, ...], temperature: float = 1.0) -> Array:
        eps = jax.random.normal(key, shape)
        return self.mean + temperature * jnp.exp(self.log_scale) * eps

    def __call__(self, z: Array) -> Array:
        return self.log_prob(z)
