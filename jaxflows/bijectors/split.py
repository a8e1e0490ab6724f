"""Multi-scale split with a learned conditional prior, and Glow's learned top prior.

Glow (Sec 3, `split2d`) factors out half the channels z₂ at each level with the prior
N(z₂; μ(z₁), σ(z₁)²), μ and log σ from a zero-initialised 3x3 conv of the kept half z₁. That prior
is the image of N(0, I) under the affine map z₂ = μ + σ ε (`ScalarAffine`), so its inverse, the
whitening ε = (z₂ − μ(z₁)) / σ(z₁), is a bijector with log_det = −Σ log σ and a standard normal
on ε. A multi-scale flow is then a true bijection of the whole image onto a latent of the same
shape (RealNVP's layout), and `inverse` uses the stored ε: reconstruction is exact.

Conditional priors (Glow's class-conditional prior, Sec 5 and `prior` in its code): a context c
adds W c (`ContextProjection`, zero-initialised) to (μ, log σ), per channel over all pixels.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxflows.bijectors.elementwise import ScalarAffine
from jaxflows.core.bijector import Array, Bijector, sum_except_batch
from jaxflows.core.context import add_context
from jaxflows.core.validation import check_channels, check_image
from jaxflows.ops import Conv, NetworkPolicy, bijection_dtype, network_policy, network_scope


def _total(terms: Array, x: Array) -> Array:
    return sum_except_batch(terms + jnp.zeros_like(x))


class Split(Bijector, NetworkPolicy):
    """(z₁, z₂) ↦ (z₁, ε) with a prior N(μ(z₁), σ(z₁)²) on z₂ (Glow Sec 3, `split2d`).

    z₁ is the first `num_kept(c)` channels; (μ, log σ) = conv(z₁) (+ W c with a context c), a
    zero-initialised 3x3 conv.
    Forward: ε = (z₂ − μ) / σ, log_det = −Σ log σ.
    Inverse: z₂ = μ + σ ε, log_det = Σ log σ.

    Attributes:
      dtype: the map's computation dtype (None: promoted from the input and parameters; at least
        float32).
      param_dtype: dtype of the prior's convolution at init.
      network_dtype, network_precision: the policy of the prior's convolution, as `Coupling`'s.
    """

    @staticmethod
    def num_kept(channels: int) -> int:
        return channels // 2

    @nn.compact
    def conditional_prior(
        self, kept: Array, factored_channels: int, context: Array | None = None
    ) -> ScalarAffine:
        """z₂ = μ(z₁, c) + σ(z₁, c) ε: the prior on the factored half as a map from ε ~ N(0, I)."""
        policy = network_policy(self)
        with network_scope():
            conv = Conv(
                2 * factored_channels,
                3,
                kernel_init=nn.initializers.zeros,
                param_dtype=self.param_dtype,
                name="prior",
                **policy,
            )
            h = add_context(self, conv(kept), kept, context, **policy)
        h = h.astype(bijection_dtype(self.dtype, kept))
        return ScalarAffine(shift=h[..., 0::2], log_scale=h[..., 1::2])

    def _halves(self, x: Array) -> tuple[Array, Array]:
        check_image(x)
        check_channels(x.shape[-1], 2, "Split")
        cut = self.num_kept(x.shape[-1])
        return x[..., :cut], x[..., cut:]

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        kept, factored = self._halves(x)
        prior = self.conditional_prior(kept, factored.shape[-1], context)
        eps, terms = prior.inverse_and_log_det(factored)
        return jnp.concatenate([kept, eps], axis=-1), _total(terms, eps)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        kept, eps = self._halves(y)
        factored, terms = self.conditional_prior(kept, eps.shape[-1], context).forward_and_log_det(eps)
        return jnp.concatenate([kept, factored], axis=-1), _total(terms, factored)


class LearnedPrior(Bijector, NetworkPolicy):
    """Glow's learned top prior N(μ, σ²), per-channel μ and log σ (zero-init), as whitening;
    class-conditional (Glow's `ycond`) when given a context c: (μ, log σ) + W c.

    With `num_classes`, it also holds Glow's auxiliary classifier (Sec 5): logits = W' mean_pixels(z)
    (zero-initialised) of the top latent z, sown as `intermediates/.../class_logits` on every forward
    call, for a classification loss (`TrainConfig.class_loss_weight`). The flow itself is unchanged.

    Forward: ε = (z − μ) / σ, log_det = −h·w·Σ_c log σ_c.
    Inverse: z = μ + σ ε, log_det = h·w·Σ_c log σ_c.

    Attributes:
      dtype: the map's computation dtype (None: promoted from the input and parameters; at least
        float32).
      param_dtype: dtype of μ and log σ at init.
      num_classes: classes of the auxiliary classifier; None: no classifier.
      network_dtype, network_precision: the policy of the classifier and the context projection,
        as `Coupling`'s.
    """

    num_classes: int | None = None

    @nn.compact
    def prior(self, x: Array, context: Array | None = None, classify: bool = False) -> ScalarAffine:
        """z = μ + σ ε: the prior as a map from ε ~ N(0, I), in the computation dtype; `classify`
        (forward calls) also sows the auxiliary classifier's logits of x."""
        policy = network_policy(self)
        if self.num_classes is not None:
            with network_scope():
                head = nn.Dense(
                    self.num_classes,
                    kernel_init=nn.initializers.zeros,
                    param_dtype=self.param_dtype,
                    name="classifier",
                    **policy,
                )
                logits = head(jnp.mean(x, axis=(1, 2)))
            if classify:
                self.sow("intermediates", "class_logits", logits.astype(bijection_dtype(None, logits)))
        channels = x.shape[-1]
        mean = self.param("mean", nn.initializers.zeros, (channels,), self.param_dtype)
        log_scale = self.param("log_scale", nn.initializers.zeros, (channels,), self.param_dtype)
        dtype = bijection_dtype(self.dtype, x, mean, log_scale)
        h = jnp.stack([mean, log_scale], axis=-1).reshape(2 * channels).astype(dtype)
        with network_scope():
            h = add_context(self, h, x, context, **policy).astype(dtype)
        return ScalarAffine(shift=h[..., 0::2], log_scale=h[..., 1::2])

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_image(x)
        eps, terms = self.prior(x, context, classify=True).inverse_and_log_det(x)
        return eps, _total(terms, eps)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_image(y)
        z, terms = self.prior(y, context).forward_and_log_det(y)
        return z, _total(terms, z)
