"""Element-wise maps with parameters given as arrays: the inner bijectors of coupling layers.

A coupling layer's network produces, from the conditioning part, the parameters of an invertible
map T of the active part (Distrax's `MaskedCoupling` hands T to an inner bijector the same way).
Each map here is a plain frozen dataclass of arrays with

    forward_and_log_det(x) -> (T(x), log|∂T/∂x| per entry)
    inverse_and_log_det(y) -> (T⁻¹(y), log|∂T⁻¹/∂y| per entry)

each returning its own direction's log-det terms, broadcastable to its output; the layer that uses
the map only sums them.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax.numpy as jnp

from jaxflows.core.bijector import Array


class ElementwiseBijector(Protocol):
    """An invertible map of arrays whose log|det| terms broadcast against its output."""

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]: ...

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]: ...


@dataclasses.dataclass(frozen=True)
class ScalarAffine:
    """y = x · exp(log_scale) + shift, entry by entry (RealNVP Eq. 6, Glow Table 1).

    Forward: y = x · e^{log_scale} + shift, log|∂y/∂x| = log_scale.
    Inverse: x = (y − shift) · e^{−log_scale}, log|∂x/∂y| = −log_scale.

    Attributes:
      shift: the translation t, broadcastable to the input.
      log_scale: log s, broadcastable to the input (s > 0 by construction).
    """

    shift: Array
    log_scale: Array

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        return x * jnp.exp(self.log_scale) + self.shift, self.log_scale

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        return (y - self.shift) * jnp.exp(-self.log_scale), -self.log_scale


@dataclasses.dataclass(frozen=True)
class Shift:
    """y = x + shift (NICE's additive coupling law, Dinh et al. 2014 Eq. 6); volume preserving.

    Forward: y = x + shift. Inverse: x = y − shift. log|det| = 0 both ways.

    Attributes:
      shift: the translation t, broadcastable to the input.
    """

    shift: Array

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        y = x + self.shift
        return y, jnp.zeros((), y.dtype)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        x = y - self.shift
        return x, jnp.zeros((), x.dtype)
