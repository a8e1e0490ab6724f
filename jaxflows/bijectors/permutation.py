"""Fixed channel permutations: NICE/RealNVP's alternatives to Glow's learned 1x1 convolution.
They permute the last axis: the channels of NHWC images, or the coordinates of (batch, d) vectors.

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

from jaxflows.bijectors.conv1x1 import init_from_one_draw
from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.errors import ShapeError
from jaxflows.core.validation import check_image_or_vectors


def _gather(x: Array, order: Array) -> tuple[Array, Array]:
    """(x[..., order], zero log-det per example)."""
    return jnp.take(x, order, axis=-1), jnp.zeros(x.shape[0], x.dtype)


class ChannelPermutation(Bijector):
    """Base class: a fixed permutation π of the channels (the last axis of an NHWC image or of a
    (batch, d) vector); a subclass gives `permutation(channels)`.

    Forward: y[..., k] = x[..., π(k)]. Inverse: x[..., π(k)] = y[..., k] (the gather by π⁻¹).
    log_det = 0 both ways.

    Attributes:
      (none: a subclass may keep π in the "constants" collection.)
    """

    def permutation(self, channels: int) -> Array:
        """π for `channels` channels, an int32 vector."""
        raise NotImplementedError

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_image_or_vectors(x)
        return _gather(x, self.permutation(x.shape[-1]))

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_image_or_vectors(y)
        return _gather(y, jnp.argsort(self.permutation(y.shape[-1])))


class ReversePermutation(ChannelPermutation):
    """Reverse the channel order (RealNVP; Glow Fig. 3's "reverse").

    Forward: y[..., k] = x[..., c − 1 − k]. Inverse: the same map. log_det = 0.

    Attributes:
      (none: the layer has no fields or variables.)
    """

    def permutation(self, channels: int) -> Array:
        return jnp.asarray(np.arange(channels)[::-1], jnp.int32)


class ShufflePermutation(ChannelPermutation):
    """A fixed random channel permutation (Glow Fig. 3's "shuffle"), drawn from the init key and
    kept in the "constants" collection (never trained), like the LU convolution's permutation.

    Forward: y[..., k] = x[..., π(k)]. Inverse: x[..., π(k)] = y[..., k]. log_det = 0.

    Attributes:
      (none: π is the variable "constants"/"permutation", made at init.)
    """

    @nn.compact
    def permutation(self, channels: int) -> Array:
        draw = lambda key: {"permutation": jax.random.permutation(key, channels).astype(jnp.int32)}
        order = init_from_one_draw(self, draw, ("permutation",), ())["permutation"]
        if order.shape != (channels,):
            raise ShapeError(
                f"ShufflePermutation was initialised for {order.shape[0]} channels, got {channels}"
            )
        return order
