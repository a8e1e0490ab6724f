"""Fixed channel permutations: NICE/RealNVP's alternatives to Glow's learned 1x1 convolution.

Glow (Kingma & Dhariwal 2018, Sec 3.2 and Fig. 3) compares three ways of mixing channels between
couplings: reversing their order (RealNVP), a fixed random shuffle, and the invertible 1x1
convolution. A permutation P moves entries without changing them, so

    forward: y_ij = P x_ij,   inverse: x_ij = Pᵀ y_ij,   log_det = 0 both ways,

and both directions are exact in any dtype (a gather, no arithmetic).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.validation import check_image


class ChannelPermutation(Bijector):
    """Base class: y[..., k] = x[..., permutation[k]]; a subclass gives `permutation(channels)`."""

    def permutation(self, channels: int) -> Array:
        """The permutation of `channels` channels, an int32 vector."""
        raise NotImplementedError

    def _permute(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        check_image(x)
        order = self.permutation(x.shape[-1])
        if inverse:
            order = jnp.argsort(order)
        return jnp.take(x, order, axis=-1), jnp.zeros(x.shape[0], x.dtype)

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._permute(x, inverse=False)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._permute(y, inverse=True)


class ReversePermutation(ChannelPermutation):
    """Reverse the channel order (RealNVP; Glow Fig. 3's "reverse"). No variables.

    Forward: y[..., k] = x[..., c − 1 − k]. Inverse: the same map. log_det = 0.
    """

    def permutation(self, channels: int) -> Array:
        return jnp.asarray(np.arange(channels)[::-1], jnp.int32)


class ShufflePermutation(ChannelPermutation):
    """A fixed random channel permutation (Glow Fig. 3's "shuffle"), drawn from the init key and
    kept in the "constants" collection (never trained), like the LU convolution's permutation.

    Forward: y[..., k] = x[..., π(k)]. Inverse: x[..., π(k)] = y[..., k]. log_det = 0.
    """

    @nn.compact
    def permutation(self, channels: int) -> Array:
        # Flax evaluates initialisers abstractly at apply time too: a placeholder key then.
        key = self.make_rng("params") if self.is_initializing() else jax.random.key(0)
        init = lambda: jax.random.permutation(key, channels).astype(jnp.int32)
        order = self.variable("constants", "permutation", init).value
        if order.shape != (channels,):
            raise ValueError(
                f"ShufflePermutation was initialised for {order.shape[0]} channels, got {channels}"
            )
        return order
