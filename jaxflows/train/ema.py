"""Polyak averaging: a debiased exponential moving average of the parameters.

With decay d, the average after t updates of the parameters p_1, ..., p_t is

    ema_t = (1 - d) Σ_s d^(t-s) p_s / (1 - d^t),

the zero-initialised average divided by its total weight (Adam's bias correction), so ema_1 = p_1
and no average is pulled towards an initial value. Written as an update of the debiased average:

    ema_t = ema_(t-1) + w_t (p_t - ema_(t-1)),    w_t = (1 - d) / (1 - d^t).

MEF (Xiao & Liu 2020) evaluates with d = 0.999, as PixelCNN++ does.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp


def check_decay(decay: float | None) -> None:
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (or None for no averaging), got {decay}")


def ema_weight(decay: float, count: jax.Array) -> jax.Array:
    """w_t = (1 - d) / (1 - d^t): the weight of the t-th parameters in the debiased average."""
    count = jnp.maximum(jnp.asarray(count, jnp.float32), 1.0)
    if decay == 0:
        return jnp.ones_like(count)
    # d^t = exp(t log d) with log d taken in float64: float32(d) alone is off by 3e-5 relative to 1 - d
    weight = (1.0 - decay) / -jnp.expm1(count * jnp.float32(math.log(decay)))
    return jnp.where(count == 1, 1.0, weight)


def update_ema(ema: Any, params: Any, decay: float, count: jax.Array) -> Any:
    """The debiased average after the `count`-th parameters `params` (count ≥ 1)."""
    weight = ema_weight(decay, count)
    return jax.tree_util.tree_map(lambda a, p: a + (weight * (p - a)).astype(a.dtype), ema, params)
