"""ActNorm (Glow, Kingma & Dhariwal 2018, Sec 3.1 and Table 1)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.validation import check_image


class ActNorm(Bijector):
    """Per-channel affine map y = (x + bias) · exp(log_scale); log_det = h·w·Σ log_scale.

    Data-dependent initialisation: `init` on a batch sets bias = −mean and
    log_scale = −log(std + eps) per channel, so the output on that batch has zero mean and unit
    variance. A channel that is constant on the init batch (std ≤ min_std · (1 + |mean|), e.g. a
    batch of identical examples) is centred but not scaled (log_scale = 0): scaling it by
    1/eps would send any other input, and the log-density, to ±inf. eps and min_std are used at
    initialisation only; forward and inverse are exact inverses.
    """

    eps: float = 1e-6
    min_std: float = 1e-5

    @nn.compact
    def _params(self, x: Array, from_data: bool) -> tuple[Array, Array]:
        channels = x.shape[-1]
        if from_data and self.is_initializing():
            mean = jnp.mean(x, axis=(0, 1, 2))
            std = jnp.std(x, axis=(0, 1, 2))
            constant = std <= self.min_std * (1 + jnp.abs(mean))
            bias_init = -mean
            scale_init = jnp.where(constant, jnp.zeros_like(std), -jnp.log(std + self.eps))
        else:
            bias_init = scale_init = jnp.zeros(channels, x.dtype)
        bias = self.param("bias", lambda _: bias_init)
        log_scale = self.param("log_scale", lambda _: scale_init)
        return bias, log_scale

    def _log_det(self, x: Array, log_scale: Array) -> Array:
        return jnp.full(x.shape[0], x.shape[1] * x.shape[2] * jnp.sum(log_scale), x.dtype)

    def forward(self, x: Array) -> tuple[Array, Array]:
        check_image(x)
        bias, log_scale = self._params(x, from_data=True)
        return (x + bias) * jnp.exp(log_scale), self._log_det(x, log_scale)

    def inverse(self, y: Array) -> tuple[Array, Array]:
        check_image(y)
        bias, log_scale = self._params(y, from_data=False)
        return y * jnp.exp(-log_scale) - bias, -self._log_det(y, log_scale)
