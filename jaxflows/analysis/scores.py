"""Per-example bits/dim with a noise stream that depends on each example alone.

Example i of a data set is dequantised with `fold_in(key, i)` (a threefry key by default, whose
stream is the same across JAX versions and devices), so its score does not depend on the batch
size, on how batches are laid out across devices, or on which other examples are scored with it.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.core import Flow
from jaxflows.core.objective import discrete_bits_per_dim, example_keys


def bits_per_dim_per_example(
    flow: Flow,
    variables: Any,
    pixels: np.ndarray,
    bins: int = 256,
    labels: np.ndarray | None = None,
    seed: int = 0,
    batch_size: int = 500,
    first_index: int = 0,
) -> np.ndarray:
    """Bits/dim of each image (one dequantisation draw), as a float64 NumPy vector.

    Example j of `pixels` uses key `fold_in(key(seed, "threefry2x32"), first_index + j)`; pass
    `first_index` to score a slice of a larger set with the same noise as the whole.
    `labels` are the class labels of a class-conditional flow (log P(x | y)).
    """
    key = jax.random.key(seed, impl="threefry2x32")
    num_dims = math.prod(flow.event_shape)

    @jax.jit
    def score(v, batch, indices, context):
        log_mass = flow.apply(v, batch, example_keys(key, indices), bins, context, method="discrete_log_prob")
        return discrete_bits_per_dim(log_mass, num_dims)

    out = []
    for start in range(0, len(pixels), batch_size):
        stop = min(start + batch_size, len(pixels))
        indices = jnp.arange(first_index + start, first_index + stop)
        context = None if labels is None else jnp.asarray(labels[start:stop])
        out.append(
            np.asarray(score(variables, jnp.asarray(pixels[start:stop]), indices, context), np.float64)
        )
    return np.concatenate(out) if out else np.zeros((0,), np.float64)
