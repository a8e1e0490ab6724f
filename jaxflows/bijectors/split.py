"""Multi-scale split with a learned conditional prior, and Glow's learned top prior.

Glow (Sec 3, `split2d`) factors out half the channels z₂ at each level with the prior
N(z₂; μ(z₁), σ(z₁)²), μ and log σ from a zero-initialised 3x3 conv of the kept half z₁. Written as
the whitening ε = (z₂ − μ(z₁)) / σ(z₁), that prior is a bijector with log_det = −Σ log σ and a
standard normal on ε, so a multi-scale flow is a true bijection of the whole image onto a latent
of the same shape (RealNVP's layout) and `inverse` uses the stored ε: reconstruction is exact.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxflows.core.bijector import Array, Bijector, sum_except_batch
from jaxflows.core.validation import check_channels, check_image
from jaxflows.ops import Conv


def whiten(z: Array, mean: Array, log_scale: Array, inverse: bool) -> tuple[Array, Array]:
    """ε = (z − mean) / exp(log_scale) (forward) or z = mean + exp(log_scale) ε (inverse).

    Returns the result and the log-det of the map applied, per example.
    """
    log_det = -sum_except_batch(log_scale + jnp.zeros_like(z))
    if inverse:
        return mean + jnp.exp(log_scale) * z, -log_det
    return (z - mean) * jnp.exp(-log_scale), log_det


class Split(Bijector):
    """(z₁, z₂) ↦ (z₁, ε) with ε = (z₂ − μ(z₁)) / σ(z₁); the first `num_kept(c)` channels are z₁."""

    @staticmethod
    def num_kept(channels: int) -> int:
        return channels // 2

    @nn.compact
    def _prior(self, kept: Array, factored_channels: int) -> tuple[Array, Array]:
        h = Conv(2 * factored_channels, 3, kernel_init=nn.initializers.zeros, name="prior")(kept)
        return h[..., 0::2], h[..., 1::2]

    def transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        check_image(x)
        check_channels(x.shape[-1], 2, "Split")
        cut = self.num_kept(x.shape[-1])
        kept, factored = x[..., :cut], x[..., cut:]
        mean, log_scale = self._prior(kept, factored.shape[-1])
        out, log_det = whiten(factored, mean, log_scale, inverse)
        return jnp.concatenate([kept, out], axis=-1), log_det


class LearnedPrior(Bijector):
    """Glow's learned top prior N(μ, σ²) with per-channel μ, log σ (zero-init), as whitening."""

    @nn.compact
    def _params(self, channels: int) -> tuple[Array, Array]:
        mean = self.param("mean", nn.initializers.zeros, (channels,))
        log_scale = self.param("log_scale", nn.initializers.zeros, (channels,))
        return mean, log_scale

    def transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        check_image(x)
        mean, log_scale = self._params(x.shape[-1])
        return whiten(x, mean, log_scale, inverse)
