"""Coupling transformers: how a coupling turns its network's output h into the invertible
element-wise map T_h of its active part (the "transformer" of Durkan et al. 2019 and flowjax; the
inner `bijector` of distrax's `MaskedCoupling`).

A transformer is a small frozen dataclass with

    masks                           the coupling masks it works with ("channel", "checkerboard")
    entrywise                       True when T_h maps each entry alone, from that entry's own
                                    num_params(1) values of h (grouped by entry, contiguous);
                                    `MaskedAutoregressive` takes only such transformers
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
from jaxflows.core.errors import InvalidArgumentError


class Transformer(Protocol):
    """The element-wise map of a coupling, built from the network output h (see the module doc)."""

    masks: ClassVar[tuple[str, ...]]
    entrywise: ClassVar[bool]

    def num_params(self, channels: int) -> int: ...

    def __call__(
        self, h: Array, channels: int, *, param_dtype: DTypeLike = jnp.float32
    ) -> ElementwiseBijector: ...


SCALE_LAWS = ("sigmoid", "exp", "jet")


def affine_law(
    shift_raw: Array, scale_raw: Array, scale: str, alpha_bound: float | None = None
) -> ScalarAffine:
    """The map y = x·e^{log s} + t of one scale law, from the raw network outputs (h_t, h_s):

    - "sigmoid" (Glow, Kingma & Dhariwal 2018 Table 1): s = sigmoid(h_s + 2), y = s·x + h_t.
    - "exp" (MAF, Papamakarios et al. 2017; TarFlow): z = (x − μ)·exp(−α) with μ = h_t,
      α = h_s, or α = b·tanh(h_s / b) with `alpha_bound` b (a soft clamp: |α| < b, unchanged near
      0): log s = −α, t = −μ·e^{−α}. The identity at h = 0.
    - "jet" (Kolesnikov et al. 2024): s = 2·sigmoid(h_s), y = (x + b)·s with b = h_t: t = b·s.
      The identity at h = 0.
    """
    if scale == "sigmoid":
        return ScalarAffine(shift_raw, jax.nn.log_sigmoid(scale_raw + 2.0))
    if scale == "exp":
        alpha = scale_raw if alpha_bound is None else alpha_bound * jnp.tanh(scale_raw / alpha_bound)
        return ScalarAffine(-shift_raw * jnp.exp(-alpha), -alpha)
    log_scale = jnp.log(2.0) + jax.nn.log_sigmoid(scale_raw)
    return ScalarAffine(shift_raw * jnp.exp(log_scale), log_scale)


@dataclasses.dataclass(frozen=True)
class AffineTransformer:
    """The affine law y = s ⊙ x + t, (h_t, h_s) from h with interleaved channels (each entry's two
    values contiguous), s by one of three scale laws (`affine_law`), log|det| = Σ log s:

    - "sigmoid" (default; Glow, Kingma & Dhariwal 2018 Table 1; RealNVP Eq. 6): s = sigmoid(h_s + 2),
      t = h_t. Keeps 0 < s < 1 and starts s near 0.88: exp-scale couplings are unstable.
    - "exp" (MAF, Papamakarios et al. 2017; TarFlow, Zhai et al. 2024): z = (x − μ)·exp(−α),
      (μ, α) = (h_t, h_s); the identity when the network outputs zeros. With `alpha_bound` b,
      α = b·tanh(h_s / b): each layer scales by at most e^b, so a point far from the data cannot
      overflow a stack of layers (an unbounded α made a trained MAF's log-density non-finite there).
    - "jet" (Jet, Kolesnikov et al. 2024): s = 2·sigmoid(h_s), y = (x + b)·s, b = h_t; the identity
      at h = 0, 0 < s < 2.

    Attributes:
      scale: "sigmoid" | "exp" | "jet".
      alpha_bound: the exp law's soft clamp b > 0 on α (None: unbounded); only with scale="exp".
    """

    masks: ClassVar[tuple[str, ...]] = ("channel", "checkerboard")
    entrywise: ClassVar[bool] = True
    scale: str = "sigmoid"
    alpha_bound: float | None = None

    def __post_init__(self) -> None:
        if self.scale not in SCALE_LAWS:
            raise InvalidArgumentError(
                f"AffineTransformer: scale must be one of {SCALE_LAWS}, got {self.scale!r}"
            )
        if self.alpha_bound is not None and (self.scale != "exp" or not self.alpha_bound > 0):
            raise InvalidArgumentError(
                "AffineTransformer: alpha_bound bounds the exp law's α and must be > 0 with scale='exp', "
                f"got alpha_bound={self.alpha_bound!r} with scale={self.scale!r}"
            )

    def num_params(self, channels: int) -> int:
        return 2 * channels

    def __call__(self, h: Array, channels: int, *, param_dtype: DTypeLike = jnp.float32) -> ScalarAffine:
        return affine_law(h[..., 0::2], h[..., 1::2], self.scale, self.alpha_bound)


@dataclasses.dataclass(frozen=True)
class AdditiveTransformer:
    """NICE's additive law (Dinh et al. 2014, Eq. 6): t = h, y = x + t (`Shift`); volume preserving."""

    masks: ClassVar[tuple[str, ...]] = ("channel", "checkerboard")
    entrywise: ClassVar[bool] = True

    def num_params(self, channels: int) -> int:
        return channels

    def __call__(self, h: Array, channels: int, *, param_dtype: DTypeLike = jnp.float32) -> Shift:
        return Shift(h)
