"""Coupling layers: NICE (Dinh et al. 2014), RealNVP (Dinh et al. 2017), Glow (Kingma & Dhariwal 2018).

A mask divides x into an active part x_a and a conditioning part x_b. A network reads x_b and
produces the parameters h of an invertible element-wise (or per-pixel) transform of x_a:

    y_a = T(x_a; h(x_b)),   y_b = x_b,   log_det = Σ log|∂T/∂x_a|.

`Coupling` owns the mask and the network; subclasses give T, its inverse and its log-det in one
`couple(active, h, inverse)` so forward and inverse share one piece of maths.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.core.bijector import Array, Bijector, sum_except_batch
from jaxflows.core.validation import check_channels, check_image
from jaxflows.ops import Conv


@jax.custom_jvp
def relu(x: Array) -> Array:
    """max(x, 0) whose derivative reads the output (y > 0 ⇔ x > 0): reverse mode keeps no mask."""
    return jnp.maximum(x, 0)


@relu.defjvp
def _relu_jvp(primals, tangents):
    y = relu(primals[0])
    return y, jnp.where(y > 0, tangents[0], 0)


class CouplingNetwork(nn.Module):
    """Glow's NN(): 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised 3x3 conv.

    The last convolution starts at zero so each coupling starts as the identity (Glow Sec 3.3).
    Convolutions are `jaxflows.ops.Conv` (the fastest formulation per backend).
    """

    hidden: int
    out_channels: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = relu(Conv(self.hidden, 3, name="conv_in")(x))
        h = relu(Conv(self.hidden, 1, name="conv_hidden")(h))
        return Conv(self.out_channels, 3, kernel_init=nn.initializers.zeros, name="conv_out")(h)


@dataclasses.dataclass(frozen=True)
class ChannelMask:
    """Split along channels (RealNVP channel-wise mask, Glow's split()).

    parity 0 transforms the second half conditioned on the first; parity 1 the reverse.
    """

    parity: int = 0

    def _cut(self, channels: int) -> int:
        return channels // 2

    def active_channels(self, channels: int) -> int:
        cut = self._cut(channels)
        return channels - cut if self.parity == 0 else cut

    def split(self, x: Array) -> tuple[Array, Array]:
        first, second = x[..., : self._cut(x.shape[-1])], x[..., self._cut(x.shape[-1]) :]
        return (second, first) if self.parity == 0 else (first, second)

    def merge(self, active: Array, x: Array) -> Array:
        cut = self._cut(x.shape[-1])
        if self.parity == 0:
            return jnp.concatenate([x[..., :cut], active], axis=-1)
        return jnp.concatenate([active, x[..., cut:]], axis=-1)

    def weights(self, x: Array) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class CheckerboardMask:
    """RealNVP spatial checkerboard: pixels with (i + j + parity) even condition the others.

    The network reads b ⊙ x; the transform acts on every pixel and is kept only where b = 0.
    """

    parity: int = 0

    def board(self, x: Array) -> Array:
        i = jnp.arange(x.shape[1])[:, None]
        j = jnp.arange(x.shape[2])[None, :]
        return ((i + j + self.parity) % 2 == 0).astype(x.dtype)[None, :, :, None]

    def active_channels(self, channels: int) -> int:
        return channels

    def split(self, x: Array) -> tuple[Array, Array]:
        return x, x * self.board(x)

    def merge(self, active: Array, x: Array) -> Array:
        b = self.board(x)
        return b * x + (1 - b) * active

    def weights(self, x: Array) -> Array:
        return 1 - self.board(x)


MASKS = {"channel": ChannelMask, "checkerboard": CheckerboardMask}


class Coupling(Bijector):
    """Base class: a subclass implements `num_params` and `couple`.

    `couple(active, h, inverse)` returns the transformed active part and element-wise (or
    per-pixel, broadcastable) log|det| terms of the forward map; the base masks and sums them.
    """

    hidden: int = 512
    mask: str = "channel"
    parity: int = 0

    def _mask(self):
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {sorted(MASKS)}, got {self.mask!r}")
        return MASKS[self.mask](self.parity)

    def num_params(self, active_channels: int) -> int:
        raise NotImplementedError

    def couple(self, active: Array, h: Array, inverse: bool) -> tuple[Array, Array]:
        raise NotImplementedError

    @nn.compact
    def _conditioner(self, cond: Array, out_channels: int) -> Array:
        return CouplingNetwork(self.hidden, out_channels, name="network")(cond)

    def conditioned(self, x: Array):
        """(mask, active part of x, network output h computed from the conditioning part)."""
        mask = self._mask()
        active, cond = mask.split(x)
        return mask, active, self._conditioner(cond, self.num_params(active.shape[-1]))

    def transform(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        check_image(x)
        check_channels(x.shape[-1], 2 if self.mask == "channel" else 1, type(self).__name__)
        mask, active, h = self.conditioned(x)
        out, log_det_terms = self.couple(active, h, inverse)
        weights = mask.weights(x)
        if weights is not None:
            log_det_terms = log_det_terms * weights
        batch_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        log_det = sum_except_batch(log_det_terms + jnp.zeros(batch_shape, x.dtype))
        return mask.merge(out, x), -log_det if inverse else log_det


class AffineCoupling(Coupling):
    """y_a = s ⊙ x_a + t with s = sigmoid(h_s + 2) (Glow Table 1); log_det = Σ log s.

    The sigmoid keeps 0 < s < 1 and starts s near 0.88: exp-scale couplings are unstable.
    """

    def num_params(self, active_channels: int) -> int:
        return 2 * active_channels

    def couple(self, active: Array, h: Array, inverse: bool) -> tuple[Array, Array]:
        shift, raw_scale = h[..., 0::2], h[..., 1::2]
        log_scale = jax.nn.log_sigmoid(raw_scale + 2.0)
        if inverse:
            return (active - shift) * jnp.exp(-log_scale), log_scale
        return active * jnp.exp(log_scale) + shift, log_scale


class AdditiveCoupling(Coupling):
    """y_a = x_a + t(x_b) (NICE); volume preserving, log_det = 0."""

    def num_params(self, active_channels: int) -> int:
        return active_channels

    def couple(self, active: Array, h: Array, inverse: bool) -> tuple[Array, Array]:
        out = active - h if inverse else active + h
        return out, jnp.zeros((), active.dtype)
