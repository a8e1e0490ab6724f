"""Variational dequantisation (Ho et al. 2019, Flow++, Sec. 3.1).

Uniform dequantisation trains p on x̃ = (x + u)/K with u ~ U[0, 1)^D, a bound on log P(x) that is
loose wherever p is not flat inside a bin. A learned q(u | x) tightens it:

    log P(x) ≥ E_{u ~ q(·|x)} [log p((x + u)/K) − D log K − log q(u | x)],

with equality when q(u | x) is p's own distribution within the bin of x. `Flow.discrete_log_prob`
evaluates one draw of this bound; `jaxflows.train.importance_weighted_log_prob` averages the
importance weights of several draws, which approaches log P(x) as their number grows.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.bijectors.masks import CheckerboardMask
from jaxflows.core.bijector import Array, sum_except_batch
from jaxflows.core.distributions import gaussian_log_prob
from jaxflows.core.objective import draw
from jaxflows.ops import Conv, NetworkPolicy, bijection_dtype, network_policy, network_scope

_LOG_SCALE_BOUND = 3.0  # per-dimension scales stay within e^±3, like a bounded affine coupling


class _ConditionalAffine(NetworkPolicy):
    """h ↦ keep ⊙ h + (1 − keep) ⊙ (h e^s + t), with s, t from a conv net of (keep ⊙ h, features)."""

    hidden: int

    @nn.compact
    def __call__(self, h: Array, features: Array, keep: Array) -> tuple[Array, Array]:
        conv = functools.partial(Conv, param_dtype=self.param_dtype, **network_policy(self))
        with network_scope():
            inputs = jnp.concatenate([h * keep, features.astype(h.dtype)], axis=-1)
            hidden = jax.nn.relu(conv(self.hidden, 3, name="conv_in")(inputs))
            out = conv(2 * h.shape[-1], 3, kernel_init=nn.initializers.zeros, name="conv_out")(hidden)
        shift, raw = jnp.split(out.astype(h.dtype), 2, axis=-1)
        log_scale = _LOG_SCALE_BOUND * jnp.tanh(raw / _LOG_SCALE_BOUND)
        change = 1.0 - keep
        return h + change * (h * jnp.expm1(log_scale) + shift), sum_except_batch(change * log_scale)


class VariationalDequantizer(NetworkPolicy):
    """q(u | x): a flow from Gaussian noise to [0, 1)^D conditioned on the integer image x.

    ε ~ N(0, I); h = t(x) + e^{s(x)} ε (an elementwise affine map conditioned on features of x);
    then `depth` affine couplings on alternating checkerboards, each conditioned on the fixed pixels
    of h and the features of x; u = sigmoid(h). By the change of variables,
    log q(u | x) = log N(ε) − Σ s(x) − Σ coupling log-scales − Σ log sigmoid'(h).
    Every last convolution starts at zero, so q starts as sigmoid(N(0, I)).

    Attributes:
      hidden: channels of the feature network and of each coupling's network.
      depth: number of checkerboard couplings after the elementwise map.
      dtype: computation dtype of the flow's maps (None: `param_dtype`; at least float32; the
        input is integer pixels).
      param_dtype: dtype of the parameters at init.
      network_dtype, network_precision: the policy of its networks, as `Coupling`'s.
    """

    hidden: int = 32
    depth: int = 2

    @nn.compact
    def __call__(self, key: Array, pixels: Array, bins: int) -> tuple[Array, Array]:
        """(u, log q(u | x)) for integer `pixels` (batch, height, width, channels) in {0, …, bins−1}."""
        dtype = bijection_dtype(self.dtype or self.param_dtype)
        conv = functools.partial(Conv, param_dtype=self.param_dtype, **network_policy(self))
        x = pixels.astype(dtype) / (bins - 1) - 0.5
        with network_scope():
            features = jax.nn.relu(conv(self.hidden, 3, name="features_in")(x))
            features = jax.nn.relu(conv(self.hidden, 3, name="features_out")(features))
            stats = conv(2 * x.shape[-1], 3, kernel_init=nn.initializers.zeros, name="elementwise")(features)
        eps = draw(lambda k, shape: jax.random.normal(k, shape, x.dtype), key, x.shape)
        log_q = sum_except_batch(gaussian_log_prob(eps))
        shift, raw = jnp.split(stats.astype(dtype), 2, axis=-1)
        log_scale = _LOG_SCALE_BOUND * jnp.tanh(raw / _LOG_SCALE_BOUND)
        h = shift + jnp.exp(log_scale) * eps
        log_q = log_q - sum_except_batch(log_scale)
        for i in range(self.depth):
            keep = CheckerboardMask(i % 2).board(x)  # 1 on the pixels this coupling keeps
            coupling = _ConditionalAffine(
                self.hidden,
                dtype=dtype,
                param_dtype=self.param_dtype,
                network_dtype=self.network_dtype,
                network_precision=self.network_precision,
                name=f"coupling{i}",
            )
            h, log_det = coupling(h, features, keep)
            log_q = log_q - log_det
        log_q = log_q - sum_except_batch(jax.nn.log_sigmoid(h) + jax.nn.log_sigmoid(-h))
        return jax.nn.sigmoid(h), log_q
