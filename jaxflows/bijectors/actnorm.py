"""ActNorm (Glow, Kingma & Dhariwal 2018, Sec 3.1 and Table 1)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.core.bijector import Array, Bijector, per_example
from jaxflows.core.validation import check_image_or_vectors
from jaxflows.ops.precision import bijection_dtype


class ActNorm(Bijector):
    """Per-channel affine map with data-dependent initialisation (Glow Sec 3.1, Table 1).

    Takes NHWC images (per channel, shared over pixels) or (batch, d) vectors (per coordinate).
    Forward: y = (x + bias) · exp(log_scale), log_det = h·w·Σ_c log_scale_c (h·w = 1 on vectors).
    Inverse: x = y · exp(−log_scale) − bias, log_det = −h·w·Σ_c log_scale_c.

    `init` on a batch sets bias = −mean and log_scale = −log(std + eps) per channel (statistics
    over the batch and the pixels), so the output
    on that batch has zero mean and unit variance. A channel that is constant on the init batch
    (std ≤ min_std · (1 + |mean|), e.g. a batch of identical examples) is centred but not scaled
    (log_scale = 0): scaling it by 1/eps would send any other input, and the log-density, to ±inf.
    eps and min_std are used at initialisation only; forward and inverse are exact inverses.

    Attributes:
      eps: added to the init batch's std before its log.
      min_std: relative std at or below which a channel counts as constant at init.
      dtype: computation dtype (None: promoted from the input and parameters).
      param_dtype: dtype of bias and log_scale (initialised from the data, then cast).
    """

    eps: float = 1e-6
    min_std: float = 1e-5
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32

    @nn.compact
    def _params(self, x: Array, from_data: bool) -> tuple[Array, Array]:
        channels = x.shape[-1]
        if from_data and self.is_initializing():
            mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
            std = jnp.std(x, axis=tuple(range(x.ndim - 1)))
            constant = std <= self.min_std * (1 + jnp.abs(mean))
            bias_init = -mean
            scale_init = jnp.where(constant, jnp.zeros_like(std), -jnp.log(std + self.eps))
        else:
            bias_init = scale_init = jnp.zeros(channels)
        bias = self.param("bias", lambda _: bias_init.astype(self.param_dtype))
        log_scale = self.param("log_scale", lambda _: scale_init.astype(self.param_dtype))
        dtype = bijection_dtype(self.dtype, x, bias, log_scale)
        return bias.astype(dtype), log_scale.astype(dtype)

    def _log_det(self, x: Array, log_scale: Array) -> Array:
        return per_example(math.prod(x.shape[1:-1]) * jnp.sum(log_scale), x)

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_image_or_vectors(x)
        bias, log_scale = self._params(x, from_data=True)
        return (x + bias) * jnp.exp(log_scale), self._log_det(x, log_scale)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_image_or_vectors(y)
        bias, log_scale = self._params(y, from_data=False)
        return y * jnp.exp(-log_scale) - bias, -self._log_det(y, log_scale)
