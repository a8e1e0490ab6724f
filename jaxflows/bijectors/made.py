"""MADE, the masked autoencoder for distribution estimation (Germain et al. 2015, Sec. 4): a dense
network whose weight masks make output i depend only on inputs of smaller degree.

Every input unit has a degree m(i) (its place in an order; several entries may share one, e.g. the
values of one token). With the distinct degrees u_1 < … < u_P, hidden unit k of every hidden layer
has degree m(k) ∈ {u_1, …, u_{P−1}}, and the masks (the output mask strict, for the autoregressive
property) are

    input → hidden   m(k) ≥ m(i)         hidden → hidden   m(k') ≥ m(k)
    hidden → output  m(out) > m(k)       (out is an output of input i: m(out) = m(i))

so output i is a function of the inputs of degree < m(i) only: the Jacobian of the network is
strictly triangular in the order. Hidden degrees are cyclic, m(k) = u_{(k mod (P−1)) + 1}: with at
least P − 1 units per hidden layer every degree occurs in every layer, and every allowed dependency
(i' → i whenever m(i') < m(i)) has a path. Random hidden degrees (the paper's) may leave some out.

A context c reaches every hidden unit; with one, the hidden degrees also cycle over u_1 − 1, so that
some units see c alone and the outputs of the first degree depend on c through the network (P units
per hidden layer then reach every dependency).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jaxflows.core.bijector import Array, hashable_sequences
from jaxflows.core.context import add_context
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_count
from jaxflows.ops import Precision

ORDERS = ("natural", "reversed", "random")


def hidden_degrees(distinct: np.ndarray, width: int, conditional: bool = False) -> np.ndarray:
    """Cyclic hidden degrees over u_1, …, u_{P−1} (k = 0 … width − 1), from the P distinct input
    degrees u (sorted). A conditional network cycles over u_1 − 1, u_1, …, u_{P−1}: units of degree
    u_1 − 1 see the context only, and feed every output (the first entries too). Without a context
    and with a single degree (nothing to depend on) every unit has degree u_1."""
    usable = distinct[:-1]
    if conditional:
        usable = np.concatenate([distinct[:1] - 1, usable])
    elif len(usable) == 0:
        usable = distinct
    return usable[np.arange(width) % len(usable)]


def connectivity(source: Array, target: Array, strict: bool) -> Array:
    """The (len(source), len(target)) mask of a masked layer: m(target) > m(source) if `strict`,
    else m(target) ≥ m(source)."""
    if strict:
        return target[None, :] > source[:, None]
    return target[None, :] >= source[:, None]


class MaskedDense(nn.Module):
    """y = x (W ⊙ M) + b with a fixed 0/1 mask M of W's shape (Germain et al. 2015, Sec. 4).

    Attributes:
      features: output units.
      kernel_init: W's initialiser (the bias starts at zero).
      dtype, param_dtype, precision: the network policy, as `flax.linen.Dense`'s.
    """

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: Precision = None

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        masked = jnp.where(mask, kernel, jnp.zeros((), kernel.dtype))
        return jnp.matmul(x, masked, precision=self.precision) + bias


class MADE(nn.Module):
    """A masked dense network h = MADE(x) (Germain et al. 2015) with h[..., i, :] a function of the
    inputs of degree < m(i) only: `outputs_per_entry` values per input entry, grouped by entry.

    Inputs are (batch, d) vectors, whose d coordinates are the units that carry degrees, or
    (batch, N, C) tokens, whose N tokens carry one degree each (tied by the C values of a token).
    The output has shape (*x.shape, outputs_per_entry). The last layer starts at zero (h = 0: an
    affine-exp or spline transformer starts as the identity), and a context c (batch, e) enters the
    first hidden layer as W c (`jaxflows.core.context.add_context`, zero-initialised) and reaches
    every output, the first degree's through hidden units of degree u_1 − 1 (see the module doc).

    Attributes:
      hidden: the widths of the hidden layers (any number ≥ 1 of them); each at least P − 1 (P the
        number of distinct degrees; P with a context) to reach every allowed dependency.
      order: the degrees of the units (coordinates or tokens), one of
        "natural" (1, 2, …, U), "reversed" (U, …, 1), "random" (a permutation of 1 … U drawn from
        the init key, kept in the "constants" collection as "degrees"), or explicit integers, one
        per unit, ties allowed (units of equal degree do not see each other).
      outputs_per_entry: k, the values of h per input entry (`MaskedAutoregressive` sets it from
        its transformer).
      activation: the hidden nonlinearity.
      dtype, param_dtype, precision: the network policy (`MaskedAutoregressive` sets them from its
        `network_dtype` and `network_precision`).
    """

    hidden: Sequence[int] = (64, 64)
    order: str | Sequence[int] = "natural"
    outputs_per_entry: int = 2
    activation: Callable[[Array], Array] = nn.relu
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: Precision = None

    def __post_init__(self) -> None:
        hashable_sequences(self, "hidden")
        if isinstance(self.order, str):
            if self.order not in ORDERS:
                raise InvalidArgumentError(
                    f"MADE: order must be one of {ORDERS} or integers, got {self.order!r}"
                )
        else:
            order = np.asarray(self.order)
            if order.ndim != 1 or order.size == 0 or not np.issubdtype(order.dtype, np.integer):
                raise InvalidArgumentError(
                    "MADE: an explicit order is one integer degree per unit (coordinate or token), "
                    f"got {self.order!r}"
                )
            object.__setattr__(self, "order", tuple(int(m) for m in order))
        if isinstance(self.hidden, int) or len(self.hidden) == 0:
            raise InvalidArgumentError(f"MADE: hidden must be a sequence of ≥ 1 widths, got {self.hidden!r}")
        for width in self.hidden:
            check_count(width, "hidden", "MADE")
        check_count(self.outputs_per_entry, "outputs_per_entry", "MADE")
        super().__post_init__()

    def units(self, shape: Sequence[int]) -> int:
        """U, the number of units carrying a degree in inputs of `shape` (batch first): d or N."""
        if len(shape) not in (2, 3):
            raise ShapeError(
                f"MADE: expected vectors (batch, d) or tokens (batch, N, C), got shape {tuple(shape)}"
            )
        units = shape[1]
        if not isinstance(self.order, str) and len(self.order) != units:
            raise ShapeError(f"MADE: the order has {len(self.order)} degrees but the input has {units} units")
        return units

    def distinct_degrees(self, shape: Sequence[int]) -> np.ndarray:
        """u_1 < … < u_P, the distinct degrees for inputs of `shape` (static: P is the number of
        passes of a sequential inverse)."""
        units = self.units(shape)
        if isinstance(self.order, str):
            return np.arange(1, units + 1)
        return np.unique(np.asarray(self.order))

    @nn.compact
    def degrees(self, x: Array) -> Array:
        """m, the degree of every unit of x, shape (U,) (int32)."""
        units = self.units(x.shape)
        if self.order == "random":
            key = self.make_rng("params") if self.is_initializing() else None
            draw = lambda: jax.random.permutation(key, units).astype(jnp.int32) + 1
            degrees = self.variable("constants", "degrees", draw).value
            if degrees.shape != (units,):
                raise ShapeError(f"MADE was initialised for {degrees.shape[0]} units, got {units}")
            return degrees
        if self.order == "natural":
            return jnp.arange(1, units + 1, dtype=jnp.int32)
        if self.order == "reversed":
            return jnp.arange(units, 0, -1, dtype=jnp.int32)
        return jnp.asarray(self.order, jnp.int32)

    def entry_degrees(self, x: Array) -> Array:
        """The degree of every entry of one example, shape x.shape[1:] (a token's values share it)."""
        degrees = self.degrees(x)
        return jnp.broadcast_to(degrees.reshape(-1, *(1,) * (x.ndim - 2)), x.shape[1:])

    def masks(self, x: Array, conditional: bool = False) -> list[Array]:
        """The masks of the input, hidden and output layers, for inputs shaped as x (`conditional`:
        with a context, which every hidden unit reads)."""
        inputs = self.entry_degrees(x).reshape(-1)
        distinct = self.distinct_degrees(x.shape)
        layers = [jnp.asarray(hidden_degrees(distinct, w, conditional), jnp.int32) for w in self.hidden]
        outputs = jnp.repeat(inputs, self.outputs_per_entry)
        masks = [connectivity(inputs, layers[0], strict=False)]
        masks += [connectivity(a, b, strict=False) for a, b in itertools.pairwise(layers)]
        return [*masks, connectivity(layers[-1], outputs, strict=True)]

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None) -> Array:
        masks = self.masks(x, conditional=context is not None)
        policy = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        flat = x.reshape(x.shape[0], -1)
        h = MaskedDense(self.hidden[0], name="input", **policy)(flat, masks[0])
        h = self.activation(add_context(self, h, flat, context, self.dtype, self.precision))
        for index, (width, mask) in enumerate(zip(self.hidden[1:], masks[1:-1], strict=True)):
            h = self.activation(MaskedDense(width, name=f"hidden_{index}", **policy)(h, mask))
        features = math.prod(x.shape[1:]) * self.outputs_per_entry
        out = MaskedDense(features, kernel_init=nn.initializers.zeros, name="output", **policy)(h, masks[-1])
        return out.reshape(*x.shape, self.outputs_per_entry)


def reachable(masks: Sequence[Array]) -> np.ndarray:
    """(inputs, outputs) booleans: whether some path of unmasked weights joins input i to output o
    (the product of the masks, thresholded)."""
    path = np.asarray(masks[0], np.int64)
    for mask in masks[1:]:
        path = (path @ np.asarray(mask, np.int64)) > 0
    return np.asarray(path, bool)
