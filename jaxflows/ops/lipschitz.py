"""Lipschitz-constrained linear layers for contractive residual flows (i-ResNet, Behrmann et al.
2019, Sec 3; spectral normalisation, Miyato et al. 2018).

A `LipschitzLinear` is a dense layer or a k×k SAME convolution whose applied operator has spectral
norm at most `bound`: the kernel is scaled by min(1, bound/σ̂), σ̂ = ‖K v‖ the norm of the operator
K actually applied (for a convolution, the convolution of the layer's input shape with its zero
padding, not the kernel reshaped to a matrix, whose norm differs by up to a factor k) at a unit
vector v from power iteration (v ← KᵀK v/‖KᵀK v‖).

The vectors v live in their own collection, `SPECTRAL_NORM`. `init` runs `init_iterations` power
iterations on the initial kernel; afterwards v changes only where that collection is mutable
(`apply(..., mutable=[SPECTRAL_NORM])`, which the training step does: `power_iterations` more per
step, on the stopped-gradient kernel). Everywhere else the layer is a pure function of its
variables. σ̂ ≤ σ(K) with a relative gap of order (σ₂/σ₁)^(2·iterations), so the bound holds to
the power iteration's convergence; σ̂ is differentiated through K with v fixed.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_count
from jaxflows.ops.conv import conv2d
from jaxflows.ops.precision import BIJECTION_PRECISION, bijection_dtype

Array = jax.Array

SPECTRAL_NORM = "spectral_norm"  # collection of the power-iteration vectors
LOG_DET_RNG = "log_det"  # rng stream of stochastic log-det estimates (Hutchinson probes)


def linear(kernel: Array, bias: Array, x: Array) -> Array:
    """x K + b: a dense layer (kernel (in, out), x (batch, in)) or a stride-1 SAME convolution
    (kernel (k, k, in, out), x NHWC, `conv2d`: its fast formulation per backend), at
    `BIJECTION_PRECISION`."""
    if kernel.ndim == 2:
        return jnp.matmul(x, kernel, precision=BIJECTION_PRECISION) + bias
    return conv2d(x, kernel, precision=BIJECTION_PRECISION) + bias


def _operator(kernel: Array, v: Array) -> Array:
    """The linear operator K of one example (no bias): v has the example's shape."""
    return linear(kernel, jnp.zeros((), kernel.dtype), v[None])[0]


def _normalise(v: Array) -> Array:
    return v / jnp.maximum(jnp.linalg.norm(v.ravel()), jnp.finfo(v.dtype).tiny)


@functools.partial(jax.jit, static_argnums=2)
def power_iteration(kernel: Array, v: Array, iterations: int) -> Array:
    """`iterations` steps of v ← KᵀK v/‖KᵀK v‖ for the operator K of `kernel` on inputs shaped like v.
    Jitted: called outside jit (an eager training loop) it compiles once per shape, not per kernel."""
    op = functools.partial(_operator, kernel)
    transpose = jax.linear_transpose(op, v)

    def step(v, _):
        return _normalise(transpose(op(v))[0]), None

    v, _ = lax.scan(step, _normalise(v), None, length=iterations)
    return v


def operator_norm_estimate(kernel: Array, v: Array) -> Array:
    """σ̂ = ‖K v‖/‖v‖, a lower bound on the spectral norm of K, tight when v is its top right
    singular vector."""
    return jnp.linalg.norm(_operator(kernel, v).ravel()) / jnp.linalg.norm(v.ravel())


class LipschitzLinear(nn.Module):
    """A dense layer or k×k convolution with spectral norm ≤ `bound`; calling it with an example's
    input shape returns its normalised (kernel, bias), applied by `linear(kernel, bias, x)`.

    Attributes:
      features: output width (dense) or channels (convolution).
      bound: the spectral-norm bound, > 0.
      kernel_size: None for a dense layer on (batch, d); k for a k×k convolution of NHWC images.
      power_iterations: iterations per call where `SPECTRAL_NORM` is mutable (the training step).
      init_iterations: iterations at `init`, from a random vector.
      dtype: computation dtype (None: promoted from the parameters, at least float32).
      param_dtype: dtype of the kernel and bias (and of the stored vector).
    """

    features: int
    bound: float
    kernel_size: int | None = None
    power_iterations: int = dataclasses.field(default=1, kw_only=True)
    init_iterations: int = dataclasses.field(default=100, kw_only=True)
    dtype: DTypeLike | None = dataclasses.field(default=None, kw_only=True)
    param_dtype: DTypeLike = dataclasses.field(default=jnp.float32, kw_only=True)

    def __post_init__(self) -> None:
        check_count(self.features, "features", "LipschitzLinear")
        check_count(self.power_iterations, "power_iterations", "LipschitzLinear")
        check_count(self.init_iterations, "init_iterations", "LipschitzLinear")
        if self.kernel_size is not None:
            check_count(self.kernel_size, "kernel_size", "LipschitzLinear")
        if not (isinstance(self.bound, int | float) and self.bound > 0):
            raise InvalidArgumentError(f"LipschitzLinear: bound must be a number > 0, got {self.bound!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, input_shape: tuple[int, ...]) -> tuple[Array, Array]:
        fan_in = input_shape[-1]
        if self.kernel_size is None:
            shape = (fan_in, self.features)
        else:
            shape = (self.kernel_size, self.kernel_size, fan_in, self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)

        def initial_vector():
            v = jax.random.normal(self.make_rng("params"), input_shape, self.param_dtype)
            return power_iteration(kernel, v, self.init_iterations)

        vector = self.variable(SPECTRAL_NORM, "vector", initial_vector)
        if vector.value.shape != tuple(input_shape):
            raise ShapeError(
                f"LipschitzLinear: initialised on inputs of shape {vector.value.shape}, applied to "
                f"{tuple(input_shape)}; the operator's norm depends on the input's size"
            )
        if self.is_mutable_collection(SPECTRAL_NORM) and not self.is_initializing():
            vector.value = power_iteration(lax.stop_gradient(kernel), vector.value, self.power_iterations)
        dtype = bijection_dtype(self.dtype, kernel)
        kernel = kernel.astype(dtype)
        sigma = operator_norm_estimate(kernel, lax.stop_gradient(vector.value).astype(dtype))
        return kernel * jnp.minimum(1.0, self.bound / sigma), bias.astype(dtype)
