"""Coupling layers: NICE (Dinh et al. 2014), RealNVP (Dinh et al. 2017), Glow (Kingma & Dhariwal 2018).

A mask divides x into an active part x_a and a conditioning part x_b. A network reads x_b and
produces the parameters h of an invertible element-wise (or per-pixel) map T_h of x_a:

    forward: y_a = T_h(x_a),     y_b = x_b,  log_det = Σ log|∂T_h/∂x_a|
    inverse: x_a = T_h⁻¹(y_a),   x_b = y_b,  log_det = Σ log|∂T_h⁻¹/∂y_a|

with h = NN(x_b) = NN(y_b) in both directions. A conditional coupling's network also reads the
context c: h = NN(x_b, c), the same in both directions. `Coupling` owns the mask and runs the
network (its `conditioner`, by default Glow's `CouplingNetwork` on NHWC images and the
fully connected `CouplingMLP` on (batch, d) vectors); its `transformer`
(`jaxflows.bijectors.transformers`) says how many channels h needs and builds T_h from it as an
inner bijector (`jaxflows.bijectors.elementwise`) whose `forward_and_log_det` and
`inverse_and_log_det` each return their own direction's log-det terms.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.bijectors.elementwise import ElementwiseBijector
from jaxflows.bijectors.masks import MASKS, Mask
from jaxflows.bijectors.transformers import AdditiveTransformer, AffineTransformer, Transformer
from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.context import add_context
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_channels, check_image_or_vectors
from jaxflows.ops import Conv, NetworkPolicy, Precision, bijection_dtype, network_policy, network_scope


@jax.custom_jvp
def relu(x: Array) -> Array:
    """max(x, 0) whose derivative reads the output (y > 0 ⇔ x > 0): reverse mode keeps no mask."""
    return jnp.maximum(x, 0)


@relu.defjvp
def _relu_jvp(primals, tangents):
    y = relu(primals[0])
    return y, jnp.where(y > 0, tangents[0], 0)


class CouplingNetwork(nn.Module):
    """Glow's NN() (Kingma & Dhariwal 2018, Sec 3.3): 3x3 conv, ReLU, 1x1 conv, ReLU, 3x3 conv.

    h = conv_out(relu(conv_hidden(relu(conv_in(x_b) + W c)))). The last convolution starts at zero,
    so each coupling starts as the identity. Convolutions are `jaxflows.ops.Conv` (the fastest
    formulation per backend).

    The context c (batch, d) enters as a learned per-channel bias of the first hidden layer, W c
    (`ContextProjection`, zero-initialised, absent when c is None). Concatenating c broadcast over
    the pixels to x_b would give the first conv the same freedom (a 3x3 conv of a constant map is
    that bias away from the image border) at a cost of 9·d·hidden multiply-adds per pixel instead
    of d·hidden per example.

    Attributes:
      hidden: channels of the two hidden layers.
      out_channels: channels of h (the coupling's `num_params`).
      dtype: computation dtype (None: promoted from the input and parameters).
      param_dtype: dtype of the parameters at init.
      precision: of every convolution and product (None: JAX's default).
    """

    hidden: int
    out_channels: int
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: Precision = None

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None) -> Array:
        policy = dict(dtype=self.dtype, precision=self.precision)
        h = add_context(self, self.layer(self.hidden, 3, "in")(x), x, context, **policy)
        h = relu(self.layer(self.hidden, 1, "hidden")(relu(h)))
        return self.layer(self.out_channels, 3, "out", kernel_init=nn.initializers.zeros)(h)

    def layer(self, features: int, kernel_size: int, role: str, **kwargs) -> nn.Module:
        """The layer `role` ("in", "hidden" or "out"): a `kernel_size` convolution "conv_{role}"."""
        policy = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        return Conv(features, kernel_size, name=f"conv_{role}", **policy, **kwargs)


class CouplingMLP(CouplingNetwork):
    """The coupling network of (batch, d) vectors, a fully connected ReLU network as NICE's coupling
    functions (Dinh et al. 2014): `CouplingNetwork` with dense layers for its convolutions.

    h = dense_out(relu(dense_hidden(relu(dense_in(x_b) + W c)))), x_b (batch, d_b) and h
    (batch, out_channels). The last layer starts at zero, so each coupling starts as the identity.

    The context c (batch, e) is added as W c (`ContextProjection`, zero-initialised, absent when c
    is None) to the first hidden layer, as in `CouplingNetwork`: the same map as a first layer that
    reads [x_b, c] concatenated, with the context's weights starting at zero.

    Attributes:
      hidden, out_channels, dtype, param_dtype, precision: as `CouplingNetwork` (hidden: width of
        the two hidden layers).
    """

    def layer(self, features: int, kernel_size: int, role: str, **kwargs) -> nn.Module:
        """The layer `role`: a dense layer "dense_{role}" (`kernel_size` is unused)."""
        policy = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        return nn.Dense(features, name=f"dense_{role}", **policy, **kwargs)


class Coupling(Bijector, NetworkPolicy):
    """A coupling layer with a pluggable transformer and conditioner: y_a = T_h(x_a), y_b = x_b,
    h = NN(x_b).

    Forward: y_a = T_h(x_a), log_det = Σ_active log|∂T_h/∂x_a|.
    Inverse: x_a = T_h⁻¹(y_a), log_det = Σ_active log|∂T_h⁻¹/∂y_a|.
    Takes NHWC images or (batch, d) vectors with d ≥ 2, whose coordinates act as the channels.
    The transformer gives the channels of h (`num_params`) and builds T_h (`inner_bijector`); the
    conditioner is the network NN, built with that many output channels; this class splits and
    merges with the mask, runs the network and lets the mask sum T_h's log-det terms over the
    transformed entries. `AffineCoupling`, `AdditiveCoupling` and `MatrixExpCoupling` are this
    layer with their transformer.

    Attributes:
      hidden: channels (units on vectors) of the default network's hidden layers (Glow: 512).
      mask: "channel" (`ChannelMask`: halves of the channels, or of a vector's coordinates) or
        "checkerboard" (`CheckerboardMask`: a spatial checkerboard; alternate coordinates of a
        vector), or Jet's "vertical_stripes" / "horizontal_stripes" (images only).
      parity: 0 or 1, which half is active; alternate it between successive couplings.
      transformer: the element-wise law (`jaxflows.bijectors.transformers`), e.g.
        `AffineTransformer()`; a subclass may build it from its own fields (`elementwise`).
      conditioner: builds the network: called as conditioner(out_channels=, dtype=, param_dtype=,
        precision=, name=) with out_channels = the transformer's `num_params` and the network
        policy, it returns a Flax module called as module(x_b) (module(x_b, c) with a context)
        that returns h, x_b's shape with out_channels on the last axis. A module class with those
        fields fits, e.g. `functools.partial(MyNet, width=64)`. None: with `hidden`,
        `CouplingNetwork` on images and `CouplingMLP` on vectors.
      dtype: the map's computation dtype (None: promoted from the input and parameters; at least
        float32, `jaxflows.ops.precision`). Keyword-only, as the three below (`NetworkPolicy`).
      param_dtype: dtype of the network's parameters at init.
      network_dtype: the network's computation dtype, e.g. jnp.bfloat16 (None: the map's); its
        output is cast to the map's dtype.
      network_precision: the network's matmul precision, a key of `NETWORK_PRECISIONS`:
        "highest" (default) | "high" | "default" (JAX's global setting: TF32 on GPU).
    """

    hidden: int = 512
    mask: str = "channel"
    parity: int = 0
    transformer: Transformer | None = None
    conditioner: Callable[..., nn.Module] | None = None

    def __post_init__(self) -> None:
        if self.conditioner is not None and not callable(self.conditioner):
            raise InvalidArgumentError(
                f"{type(self).__name__}: conditioner must build a network module (a module class or a "
                f"function of out_channels=, dtype=, param_dtype=, precision=, name=), got "
                f"{self.conditioner!r}"
            )
        family = self.masking().family  # the stripe masks work wherever the checkerboard does
        transformer = self.elementwise()
        if family not in transformer.masks:
            raise InvalidArgumentError(
                f"{type(self).__name__}: {type(transformer).__name__} works with mask in "
                f"{transformer.masks}, got mask={self.mask!r}"
            )
        super().__post_init__()

    def elementwise(self) -> Transformer:
        """The transformer: the `transformer` field (a subclass may build it from its fields)."""
        if self.transformer is None:
            raise InvalidArgumentError(
                f"{type(self).__name__} needs a transformer, e.g. Coupling(transformer=AffineTransformer())"
            )
        return self.transformer

    def masking(self) -> Mask:
        """The mask named by `mask`, with `parity`."""
        if self.mask not in MASKS:
            raise InvalidArgumentError(f"mask must be one of {sorted(MASKS)}, got {self.mask!r}")
        return MASKS[self.mask](self.parity)

    def num_params(self, active_channels: int) -> int:
        """Channels of the network output h for `active_channels` active channels."""
        return self.elementwise().num_params(active_channels)

    @nn.compact
    def inner_bijector(self, h: Array, active_channels: int) -> ElementwiseBijector:
        """T_h, the invertible map of an active part of `active_channels` channels, given h (any
        parameters of the transformer's own live in this layer's scope)."""
        return self.elementwise()(h, active_channels, param_dtype=self.param_dtype)

    @nn.compact
    def network_output(self, cond: Array, out_channels: int, context: Array | None = None) -> Array:
        """h = NN(x_b, c): the network output, `out_channels` channels, from the conditioning part,
        computed under the network policy and returned in the map's dtype."""
        default = CouplingNetwork if cond.ndim == 4 else CouplingMLP
        build = self.conditioner or functools.partial(default, self.hidden)
        with network_scope():
            network = build(
                out_channels=out_channels,
                param_dtype=self.param_dtype,
                name="network",
                **network_policy(self),
            )
            h = network(cond) if context is None else network(cond, context)
        expected = (*cond.shape[:-1], out_channels)
        if h.shape != expected:
            raise ShapeError(
                f"{type(self).__name__}: the conditioner must return h of shape {expected} (the "
                f"transformer needs {out_channels} channels per pixel or vector), got {h.shape}"
            )
        return h.astype(bijection_dtype(self.dtype, cond))

    def conditioned(self, x: Array, context: Array | None = None) -> tuple[Mask, Array, Array]:
        """(mask, active part of x, network output h computed from the conditioning part)."""
        check_image_or_vectors(x)
        mask = self.masking()
        if x.ndim == 2 and x.shape[-1] < 2:
            raise ShapeError(
                f"{type(self).__name__}: cannot split a vector of {x.shape[-1]} coordinate(s); "
                "expected (batch, d) with d ≥ 2"
            )
        check_channels(x.shape[-1], mask.min_channels, type(self).__name__)
        active, cond = mask.split(x)
        return mask, active, self.network_output(cond, self.num_params(active.shape[-1]), context)

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        mask, active, h = self.conditioned(x, context)
        y_active, terms = self.inner_bijector(h, active.shape[-1]).forward_and_log_det(active)
        return mask.merge(y_active, x), mask.sum_active(terms, x)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        mask, active, h = self.conditioned(y, context)
        x_active, terms = self.inner_bijector(h, active.shape[-1]).inverse_and_log_det(active)
        return mask.merge(x_active, y), mask.sum_active(terms, y)


class AffineCoupling(Coupling):
    """Glow's affine coupling (Kingma & Dhariwal 2018, Table 1; RealNVP Eq. 6): `Coupling` with
    `AffineTransformer`.

    (t, h_s) = NN(x_b) (interleaved channels), s = sigmoid(h_s + 2).
    Forward: y_a = s ⊙ x_a + t, log_det = Σ log s.
    Inverse: x_a = (y_a − t) / s, log_det = −Σ log s.

    Attributes:
      hidden, mask, parity, conditioner, dtype, param_dtype, network_dtype, network_precision: as
        `Coupling`; transformer: `AffineTransformer()`.
    """

    transformer: Transformer | None = AffineTransformer()


class AdditiveCoupling(Coupling):
    """NICE's additive coupling (Dinh et al. 2014, Eq. 6): `Coupling` with `AdditiveTransformer`;
    volume preserving.

    t = NN(x_b). Forward: y_a = x_a + t. Inverse: x_a = y_a − t. log_det = 0 both ways.

    Attributes:
      hidden, mask, parity, conditioner, dtype, param_dtype, network_dtype, network_precision: as
        `Coupling`; transformer: `AdditiveTransformer()`.
    """

    transformer: Transformer | None = AdditiveTransformer()
