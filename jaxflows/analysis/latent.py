"""Latent attribute manipulation (Glow, Kingma & Dhariwal 2018, Sec 5 and Fig. 5; the flow lecture's
"Demo of OpenAI"): encode with the flow, move along a direction in latent space, decode.

With z = f(x) the flow's latent (for a multi-scale flow, the image-shaped latent in which every
level's factored variables sit in their place, so the direction is per level), the direction of an
attribute is the mean latent of images with it minus the mean latent of images without it, and

    x' = f⁻¹(f(x) + α · direction).

Because f is a bijection, f(x') − f(x) = α · direction exactly (up to float32 rounding).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxflows.core.bijector import Array
from jaxflows.core.errors import ShapeError


def _encode(flow: nn.Module, variables: Any, x: Array, context: Any) -> Array:
    return flow.apply(variables, x, context, method="forward")[0]


def attribute_direction(
    flow: nn.Module,
    variables: Any,
    with_attribute: Array,
    without_attribute: Array,
    context_with: Any = None,
    context_without: Any = None,
) -> Array:
    """mean f(x) over `with_attribute` − mean f(x) over `without_attribute`: one latent, the shape
    of a single example. Images are the flow's inputs (dequantised floats in [0, 1) for a `Flow`)."""
    with_mean = jnp.mean(_encode(flow, variables, with_attribute, context_with), axis=0)
    without_mean = jnp.mean(_encode(flow, variables, without_attribute, context_without), axis=0)
    return with_mean - without_mean


def manipulate(
    flow: nn.Module, variables: Any, x: Array, direction: Array, alphas: Array, context: Any = None
) -> Array:
    """f⁻¹(f(x) + α · direction) for every image of `x` and every α of `alphas`: shape
    (len(x), len(alphas), *x.shape[1:]); α = 0 gives back x (to float32 rounding)."""
    alphas = jnp.asarray(alphas, x.dtype)
    if direction.shape != x.shape[1:]:
        raise ShapeError(f"direction must have one example's shape {x.shape[1:]}, got {direction.shape}")
    z = _encode(flow, variables, x, context)
    moved = z[:, None] + alphas.reshape(1, -1, *([1] * (x.ndim - 1))) * direction
    flat = moved.reshape(-1, *x.shape[1:])
    repeated = None if context is None else jnp.repeat(jnp.asarray(context), len(alphas), axis=0)
    decoded = flow.apply(variables, flat, repeated, method="inverse")[0]
    return decoded.reshape(len(x), len(alphas), *x.shape[1:])
