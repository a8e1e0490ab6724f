"""Coupling transformers: how a coupling turns its network's output h into the invertible
element-wise map T_h of its active part (the "transformer" of Durkan et al. 2019 and flowjax; the
inner `bijector` of distrax's `MaskedCoupling`).

A transformer is a small frozen dataclass with

    masks                           the coupling masks it works with ("channel", "checkerboard")
    num_params(channels) -> int     channels of h it needs for `channels` active channels
    __call__(h, channels, *, param_dtype) -> ElementwiseBijector   T_h (`jaxflows.bijectors.elementwise`)

`Coupling` sizes its network from `num_params` and hands h to `__call__`, which runs inside the
coupling's compact method: a transformer with learned parameters of its own creates Flax modules
there, and they live in the coupling's scope. A new coupling law is one such class (see
docs/layers.md, "A new coupling").
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Protocol

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.bijectors.elementwise import ElementwiseBijector, ScalarAffine, Shift
from jaxflows.core.bijector import Array


class Transformer(Protocol):
    """The element-wise map of a coupling, built from the network output h (see the module doc)."""

    masks: ClassVar[tuple[str, ...]]

    def num_params(self, channels: int) -> int: ...

    def __call__(
        self, h: Array, channels: int, *, param_dtype: DTypeLike = jnp.float32
    ) -> ElementwiseBijector: ...


@dataclasses.dataclass(frozen=True)
class AffineTransformer:
    """Glow's affine law (Kingma & Dhariwal 2018, Table 1; RealNVP Eq. 6): (t, h_s) from h with
    interleaved channels, s = sigmoid(h_s + 2), y = s ⊙ x + t (`ScalarAffine`, log|det| = Σ log s).
    The sigmoid keeps 0 < s < 1 and starts s near 0.88: exp-scale couplings are unstable."""

    masks: ClassVar[tuple[str, ...]] = ("channel", "checkerboard")

    def num_params(self, channels: int) -> int:
        return 2 * channels

    def __call__(self, h: Array, channels: int, *, param_dtype: DTypeLike = jnp.float32) -> ScalarAffine:
        shift, raw_scale = h[..., 0::2], h[..., 1::2]
        return ScalarAffine(shift, jax.nn.log_sigmoid(raw_scale + 2.0))


@dataclasses.dataclass(frozen=True)
class AdditiveTransformer:
    """NICE's additive law (Dinh et al. 2014, Eq. 6): t = h, y = x + t (`Shift`); volume preserving."""

    masks: ClassVar[tuple[str, ...]] = ("channel", "checkerboard")

    def num_params(self, channels: int) -> int:
        return channels

    def __call__(self, h: Array, channels: int, *, param_dtype: DTypeLike = jnp.float32) -> Shift:
        return Shift(h)
