"""Planar flow (Rezende & Mohamed 2015, Sec 4.1 and Appendix A) on (batch, d) vectors, and the
monotone scalar root finder it shares with the Sylvester flow."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.errors import InputDtypeError, InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_count
from jaxflows.ops.precision import BIJECTION_PRECISION, bijection_dtype

# Added to softplus so 1 + (the constrained wᵀû or r_ii r̃_ii) stays ≥ MIN_MARGIN in float32.
MIN_MARGIN = 1e-6
# softplus(x + UNIT_SLOPE_SHIFT) = 1 at x = 0: a layer whose free product is 0 has unit slope.
UNIT_SLOPE_SHIFT = math.log(math.e - 1.0)


def slope_margin(free: Array) -> Array:
    """1 + the constrained product (wᵀû, or r_ii r̃_ii) = softplus(free + log(e − 1)) + 1e-6 > 0:
    Rezende & Mohamed's m(x) = −1 + softplus(x) shifted so that m(0) = 0, so a layer with its free
    product near 0 (as initialised) starts with unit slope along w instead of contracting by
    softplus(0) = 0.69 (a 32-layer planar flow would start 12 nats from its base)."""
    return jax.nn.softplus(free + UNIT_SLOPE_SHIFT) + MIN_MARGIN


def check_vectors(x: Array, layer: str) -> None:
    """Require a floating batch of vectors, shape (batch, d)."""
    if jnp.ndim(x) != 2:
        raise ShapeError(f"{layer}: expected a batch of vectors (batch, d), got shape {jnp.shape(x)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputDtypeError(f"{layer}: expected a floating dtype, got {x.dtype}")


def tanh_log_det_factor(pre: Array, margin: Array) -> Array:
    """log(1 + h'(pre)·s) for h = tanh and s = −1 + margin, written as log(tanh² + margin·h') so
    that it stays finite as s → −1 (matrix determinant lemma, one factor)."""
    t = jnp.tanh(pre)
    return jnp.log(t * t + margin * (1 - t * t))


def solve_scalar(target: Array, scale: Array, slope: Array, offset: Array, margin: Array, tol, steps: int):
    """α with α + scale·tanh(slope·α + offset) = target, elementwise, where scale·slope = −1 + margin
    (margin > 0: the map is strictly increasing). Newton steps safeguarded by bisection inside the
    bracket [target − |scale|, target + |scale|], until the bracket, the residual or the last step
    is below tol·(1 + |target|) or after `steps` iterations; then one Newton step with gradients, so
    derivatives are those of the implicit solution (1 / g'(α))."""

    def g(alpha, target, scale, slope, offset, margin):
        t = jnp.tanh(slope * alpha + offset)
        return alpha + scale * t - target, t * t + margin * (1 - t * t)

    frozen = tuple(lax.stop_gradient(a) for a in (target, scale, slope, offset, margin))
    width = tol * (1 + jnp.abs(frozen[0]))

    def unfinished(carry):
        i, alpha, low, high, moved = carry
        residual, _ = g(alpha, *frozen)
        open_ = (high - low > width) & (jnp.abs(residual) > width) & (moved > width)
        return (i < steps) & jnp.any(open_)

    def step(carry):
        i, alpha, low, high, _ = carry
        residual, slope_g = g(alpha, *frozen)
        low = jnp.where(residual < 0, alpha, low)
        high = jnp.where(residual > 0, alpha, high)
        newton = alpha - residual / slope_g
        new = jnp.where((newton > low) & (newton < high), newton, (low + high) / 2)
        return i + 1, new, low, high, jnp.abs(new - alpha)

    start, reach = frozen[0], jnp.abs(frozen[1])
    carry = (0, start, start - reach, start + reach, jnp.full_like(start, jnp.inf))
    _, alpha, _, _, _ = lax.while_loop(unfinished, step, carry)
    residual, slope_g = g(lax.stop_gradient(alpha), target, scale, slope, offset, margin)
    return alpha - residual / slope_g


class RootFindingBijector(Bijector):
    """Base of layers inverted by monotone root finding.

    Attributes:
      tolerance: stop when the bracket or the residual is below tolerance·(1 + |target|); None:
        4 ulps of the computation dtype. Round trips then agree to about 1e-6 in float32 and
        1e-12 in float64 for inputs of order one.
      max_iterations: cap on the safeguarded Newton iterations of each scalar solve.
      dtype: computation dtype (None: promoted from the input and parameters, at least float32).
      param_dtype: dtype of the parameters at init.
    """

    tolerance: float | None = dataclasses.field(default=None, kw_only=True)
    max_iterations: int = dataclasses.field(default=100, kw_only=True)
    dtype: DTypeLike | None = dataclasses.field(default=None, kw_only=True)
    param_dtype: DTypeLike = dataclasses.field(default=jnp.float32, kw_only=True)

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_count(self.max_iterations, "max_iterations", name)
        if self.tolerance is not None and not (
            isinstance(self.tolerance, int | float) and 0 < self.tolerance < 1
        ):
            raise InvalidArgumentError(
                f"{name}: tolerance must be a float in (0, 1) or None, got {self.tolerance!r}"
            )
        super().__post_init__()

    def solver_tolerance(self, dtype) -> float:
        return self.tolerance if self.tolerance is not None else 4 * float(jnp.finfo(dtype).eps)

    def inverse_residual(self, y: Array, context: Array | None = None) -> Array:
        """max |forward(inverse(y)) − y| per example, shape (batch,): how well the root finding did."""
        x, _ = self.inverse(y, context)
        y_back, _ = self.forward(x, context)
        return jnp.max(jnp.abs(y_back - y.astype(y_back.dtype)), axis=-1)


class Planar(RootFindingBijector):
    """Planar flow z' = z + û tanh(wᵀz + b) (Rezende & Mohamed 2015, Eq. 10).

    Forward: log|det| = log(1 + h'(wᵀz + b) wᵀû) by the matrix determinant lemma (Eq. 11).
    Invertibility (Appendix A): û = u + (m(wᵀu) − wᵀu) w/‖w‖², m(x) = −1 + softplus(x + log(e − 1))
    (+1e-6; the paper's m shifted so that m(0) = 0, `slope_margin`), so wᵀû > −1 and the map is
    strictly increasing along w; at initialisation (wᵀu ≈ 0) its slope along w is ≈ 1.
    Inverse: α = wᵀz solves α + wᵀû tanh(α + b) = wᵀz' (one monotone scalar equation per example,
    `solve_scalar`), then z = z' − û tanh(α + b). `inverse_residual` reports the achieved residual.

    d is taken from the input at init.

    Attributes:
      tolerance, max_iterations: of the inverse's root finding (`RootFindingBijector`).
      dtype: computation dtype (None: promoted from the input and parameters, at least float32).
      param_dtype: dtype of u, w and b at init.
    """

    @nn.compact
    def _variables(self, x: Array):
        d = x.shape[-1]
        init = lambda key, shape: 0.1 * jax.random.normal(key, shape, self.param_dtype)
        w = self.param("w", init, (d,))
        u = self.param("u", init, (d,))
        b = self.param("b", jax.nn.initializers.zeros, (), self.param_dtype)
        dtype = bijection_dtype(self.dtype, x, w, u, b)
        w, u, b = (a.astype(dtype) for a in (w, u, b))
        wu = jnp.dot(w, u, precision=BIJECTION_PRECISION)
        margin = slope_margin(wu)  # 1 + wᵀû
        norm2 = jnp.maximum(jnp.dot(w, w, precision=BIJECTION_PRECISION), jnp.finfo(dtype).tiny)
        u_hat = u + (margin - 1 - wu) * w / norm2
        return w, u_hat, b, margin, dtype

    def _shift(self, pre: Array, u_hat: Array, margin: Array) -> tuple[Array, Array]:
        """û tanh(pre) and the forward log-det at pre-activation `pre` (batch,)."""
        return jnp.tanh(pre)[:, None] * u_hat, tanh_log_det_factor(pre, margin)

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_vectors(x, "Planar")
        w, u_hat, b, margin, dtype = self._variables(x)
        x = x.astype(dtype)
        shift, log_det = self._shift(jnp.matmul(x, w, precision=BIJECTION_PRECISION) + b, u_hat, margin)
        return x + shift, log_det

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_vectors(y, "Planar")
        w, u_hat, b, margin, dtype = self._variables(y)
        y = y.astype(dtype)
        target = jnp.matmul(y, w, precision=BIJECTION_PRECISION)
        alpha = solve_scalar(
            target, margin - 1, 1.0, b, margin, self.solver_tolerance(dtype), self.max_iterations
        )
        shift, log_det = self._shift(alpha + b, u_hat, margin)
        return y - shift, -log_det
