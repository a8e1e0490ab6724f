"""Two-dimensional toy densities for flows on vectors: two moons and a ring of Gaussians.

Both are generated from a JAX key (the same key gives the same points) as float32 (n, 2) arrays.
The ring is a mixture of equal-weight isotropic Gaussians, so its log-density is exact
(`ring_of_gaussians_log_prob`) and a model's held-out negative log-likelihood has a reference: the
true density's NLL on the same points, an estimate of the mixture's entropy. Two moons (points on
two half circles plus Gaussian noise) has no closed-form density: the noise convolves a curve.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_count

Array = jax.Array

# The two half circles of scikit-learn's make_moons span [-1, 2] x [-0.5, 1]; this is their centre.
_MOONS_CENTRE = (0.5, 0.25)


def _check_positive(value: float, name: str, owner: str, allow_zero: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise InvalidArgumentError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")
    return value


def two_moons(key: Array, n: int, noise: float = 0.05) -> Array:
    """`n` points of two interleaved half circles (scikit-learn's make_moons geometry, centred at 0):
    each point on the upper moon (cos t, sin t) or the lower (1 − cos t, 1/2 − sin t) with
    probability 1/2, t ~ U(0, π), plus N(0, noise² I). No closed-form density."""
    n = check_count(n, "n", "two_moons")
    noise = _check_positive(noise, "noise", "two_moons", allow_zero=True)
    moon_key, angle_key, noise_key = jax.random.split(key, 3)
    t = jax.random.uniform(angle_key, (n,), minval=0.0, maxval=math.pi)
    upper = jax.random.bernoulli(moon_key, 0.5, (n,))
    x = jnp.where(upper, jnp.cos(t), 1.0 - jnp.cos(t))
    y = jnp.where(upper, jnp.sin(t), 0.5 - jnp.sin(t))
    points = jnp.stack([x, y], axis=-1) - jnp.asarray(_MOONS_CENTRE)
    return points + noise * jax.random.normal(noise_key, (n, 2))


def ring_centres(num_modes: int = 8, radius: float = 2.0) -> Array:
    """The (num_modes, 2) means of the ring: radius · (cos 2πk/K, sin 2πk/K), k = 0 … K−1."""
    num_modes = check_count(num_modes, "num_modes", "ring_centres")
    radius = _check_positive(radius, "radius", "ring_centres")
    angles = 2.0 * math.pi * jnp.arange(num_modes) / num_modes
    return radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def ring_of_gaussians(
    key: Array, n: int, num_modes: int = 8, radius: float = 2.0, std: float = 0.25
) -> Array:
    """`n` draws from (1/K) Σ_k N(μ_k, std² I), the μ_k evenly spaced on a circle of `radius`
    (`ring_centres`); each draw picks its mode uniformly at random."""
    n = check_count(n, "n", "ring_of_gaussians")
    std = _check_positive(std, "std", "ring_of_gaussians")
    centres = ring_centres(num_modes, radius)
    mode_key, noise_key = jax.random.split(key)
    modes = jax.random.randint(mode_key, (n,), 0, centres.shape[0])
    return centres[modes] + std * jax.random.normal(noise_key, (n, 2))


def ring_of_gaussians_log_prob(x: Array, num_modes: int = 8, radius: float = 2.0, std: float = 0.25) -> Array:
    """The exact log-density (nats) of `ring_of_gaussians` at points x of shape (..., 2):
    log (1/K) Σ_k N(x; μ_k, std² I) = logsumexp_k(−|x − μ_k|² / 2std²) − log K − log(2π std²)."""
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != 2:
        raise ShapeError(f"ring_of_gaussians_log_prob: expected points of shape (..., 2), got {x.shape}")
    std = _check_positive(std, "std", "ring_of_gaussians_log_prob")
    centres = ring_centres(num_modes, radius)
    squared = jnp.sum((x[..., None, :] - centres) ** 2, axis=-1)
    log_norm = math.log(centres.shape[0]) + math.log(2.0 * math.pi * std**2)
    return jax.nn.logsumexp(-0.5 * squared / std**2, axis=-1) - log_norm
