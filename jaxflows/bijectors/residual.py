"""Invertible residual block (i-ResNet, Behrmann et al. 2019) on (batch, d) vectors and NHWC images."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from jaxflows.core.bijector import Array, Bijector, sum_except_batch
from jaxflows.core.errors import FixedPointError, InvalidArgumentError, MissingRngError
from jaxflows.core.validation import check_count, check_image_or_vectors, is_concrete
from jaxflows.ops.lipschitz import LOG_DET_RNG, LipschitzLinear, linear
from jaxflows.ops.precision import BIJECTION_PRECISION, bijection_dtype

ACTIVATIONS = {
    "elu": jax.nn.elu,  # 1-Lipschitz (Behrmann et al. 2019)
    "lipswish": lambda x: jax.nn.swish(x) / 1.1,  # Lip(swish) ≈ 1.0998 (Chen et al. 2019)
}
TRACES = ("exact", "hutchinson")


def residual_map(weights: tuple[tuple[Array, Array], ...], activation: str, x: Array) -> Array:
    """g(x) = L_n ∘ φ ∘ … ∘ φ ∘ L_1 (x) for the normalised (kernel, bias) pairs `weights`."""
    for i, (kernel, bias) in enumerate(weights):
        x = linear(kernel, bias, x)
        if i < len(weights) - 1:
            x = ACTIVATIONS[activation](x)
    return x


class FixedPoint(NamedTuple):
    """Result of `contract`: the iterate, the iterations run, and each example's last step
    max|x_k − x_{k−1}|."""

    x: Array
    iterations: Array
    last_step: Array


def _per_example_max(a: Array) -> Array:
    return jnp.max(jnp.abs(a.reshape(a.shape[0], -1)), axis=-1)


def contract(residual, start: Array, scale: Array, tolerance: float, max_iterations: int) -> FixedPoint:
    """x ← x − residual(x) from `start` until every example's step is ≤ tolerance·scale (per
    example) or after `max_iterations`. For residual(x) = x + G(x) − b with Lip(G) ≤ c < 1 the
    iteration x ← b − G(x) contracts by c per step, and the error after a step Δ is ≤ cΔ/(1 − c)."""
    threshold = tolerance * scale

    def unfinished(state):
        i, _, step = state
        return (i < max_iterations) & jnp.any(step > threshold)

    def body(state):
        i, x, _ = state
        delta = residual(x)
        return i + 1, x - delta, _per_example_max(delta)

    inf = jnp.full(start.shape[:1], jnp.inf, start.dtype)
    iterations, x, step = lax.while_loop(unfinished, body, (0, start, inf))
    return FixedPoint(x, iterations, step)


class InvertibleResidual(Bijector):
    """y = x + g(x) with Lip(g) ≤ c < 1 (Behrmann et al. 2019, Eq. 1 and Sec 3).

    g = L_n ∘ φ ∘ … ∘ φ ∘ L_1: dense layers on (batch, d) vectors, k×k, 1×1, …, k×k SAME
    convolutions on NHWC images, each `LipschitzLinear` with spectral norm ≤ c^(1/n) of the operator
    it applies, and φ 1-Lipschitz (ELU or LipSwish), so Lip(g) ≤ c. The power-iteration vectors
    are the `jaxflows.ops.SPECTRAL_NORM` collection, updated only where it is mutable (the training
    step); `forward`, `inverse` and `log_det` are pure functions of the variables.

    Forward: y = x + g(x), log|det(I + J_g)| = Σ_{k≥1} (−1)^{k+1} tr(J_g^k)/k (Eq. 6), truncated
    at `log_det_terms` = n terms: the bias is at most D c^(n+1)/((n+1)(1 − c)) for D dimensions.
    The traces are exact (`trace="exact"`: the full per-example Jacobian and its powers, for small inputs) or
    Hutchinson's estimate vᵀJ_g^k v (`trace="hutchinson"`, Eq. 7: `num_probes` Rademacher probes,
    k Jacobian-vector products each), whose probes come from the rng stream
    `jaxflows.ops.LOG_DET_RNG`: `flow.apply(variables, x, rngs={"log_det": key})`
    (`init` falls back on the "params" key). Training can exploit the truncation (its error has no
    fixed sign), so a flow trained on a short series may score worse under the exact log-det;
    `trace="exact"` with `log_det_terms=None` computes log|det(I + J_g)| itself (slogdet of the
    dense Jacobian), for small inputs.

    Inverse (Algorithm 1): x is the fixed point x = y − g(x), iterated from x = y until each example's
    step is ≤ tolerance·(1 + max|y|), at most `max_iterations` times; the error is then at most
    c/(1 − c) times the tolerance. An example that does not converge raises `FixedPointError`
    when called outside jit, and is NaN under jit (`inverse_iterates` shows the iteration).
    Derivatives of the inverse are implicit ((I + J_g)⁻¹, itself solved by the same iteration).

    Attributes:
      hidden: width (vectors) or channels (images) of g's hidden layers.
      num_layers: n ≥ 2 linear layers in g.
      kernel_size: k of the first and last convolution on images (the middle ones are 1×1).
      lipschitz: c in (0, 1), the bound on Lip(g).
      activation: "elu" or "lipswish".
      log_det_terms: terms of the log-det power series; None (with trace="exact"): no series,
        log|det(I + J_g)| from the dense per-example Jacobian (exact; small inputs).
      trace: "exact" or "hutchinson".
      num_probes: Hutchinson probes per example.
      power_iterations: power-iteration steps per training step, per layer.
      tolerance: relative tolerance of the inverse; None: 1e-6 in float32, 1e-12 in float64.
      max_iterations: cap on the inverse's fixed-point iterations.
      dtype: computation dtype (None: promoted from the input and parameters, at least float32).
      param_dtype: dtype of the parameters at init.
    """

    hidden: int = 64
    num_layers: int = 3
    kernel_size: int = 3
    lipschitz: float = 0.9
    activation: str = "elu"
    log_det_terms: int | None = 10
    trace: str = "exact"
    num_probes: int = 1
    power_iterations: int = 1
    tolerance: float | None = None
    max_iterations: int = 1000
    dtype: DTypeLike | None = dataclasses.field(default=None, kw_only=True)
    param_dtype: DTypeLike = dataclasses.field(default=jnp.float32, kw_only=True)

    def __post_init__(self) -> None:
        for field in ("hidden", "kernel_size", "num_probes", "max_iterations"):
            check_count(getattr(self, field), field, "InvertibleResidual")
        if self.log_det_terms is not None:
            check_count(self.log_det_terms, "log_det_terms", "InvertibleResidual")
        elif self.trace != "exact":
            raise InvalidArgumentError(
                "InvertibleResidual: log_det_terms=None (no series: slogdet of the dense Jacobian) "
                'needs trace="exact"'
            )
        if check_count(self.num_layers, "num_layers", "InvertibleResidual") < 2:
            raise InvalidArgumentError(f"InvertibleResidual: num_layers must be ≥ 2, got {self.num_layers}")
        if not (isinstance(self.lipschitz, int | float) and 0 < self.lipschitz < 1):
            raise InvalidArgumentError(
                "InvertibleResidual: lipschitz must be in (0, 1) for an invertible block, "
                f"got {self.lipschitz!r}"
            )
        for value, allowed, field in (
            (self.activation, ACTIVATIONS, "activation"),
            (self.trace, TRACES, "trace"),
        ):
            if value not in allowed:
                raise InvalidArgumentError(
                    f"InvertibleResidual: {field} must be one of {sorted(allowed)}, got {value!r}"
                )
        if self.tolerance is not None and not (
            isinstance(self.tolerance, int | float) and 0 < self.tolerance < 1
        ):
            raise InvalidArgumentError(
                f"InvertibleResidual: tolerance must be in (0, 1) or None, got {self.tolerance!r}"
            )
        super().__post_init__()

    @nn.compact
    def weights(self, x: Array) -> tuple[tuple[Array, Array], ...]:
        """The normalised (kernel, bias) of g's layers, in the computation dtype for input `x`."""
        check_image_or_vectors(x, "InvertibleResidual")
        images = x.ndim == 4
        bound = self.lipschitz ** (1 / self.num_layers)
        dtype = bijection_dtype(self.dtype, x, jnp.empty((), self.param_dtype))
        shape, layers = x.shape[1:], []
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            features = x.shape[-1] if last else self.hidden
            kernel_size = (self.kernel_size if i in (0, self.num_layers - 1) else 1) if images else None
            layer = LipschitzLinear(
                features,
                bound,
                kernel_size,
                power_iterations=self.power_iterations,
                dtype=dtype,
                param_dtype=self.param_dtype,
                name=f"linear_{i}",
            )
            layers.append(layer(shape))
            shape = (*shape[:-1], features)
        return tuple(layers)

    def _g(self, weights):
        return lambda h: residual_map(weights, self.activation, h)

    def _log_det(self, weights, x: Array) -> Array:
        """Σ_{k=1..n} (−1)^{k+1} tr(J_g(x)^k)/k per example, or log|det(I + J_g(x))| itself."""
        g = self._g(weights)
        if self.trace == "hutchinson":
            return self._hutchinson_series(g, x)
        size = math.prod(x.shape[1:])
        jac = jax.vmap(jax.jacfwd(lambda e: g(e[None])[0]))(x).reshape(x.shape[0], size, size)
        if self.log_det_terms is None:
            return jnp.linalg.slogdet(jnp.eye(size, dtype=x.dtype) + jac)[1]

        def power(p, _):
            p = jnp.matmul(p, jac, precision=BIJECTION_PRECISION)
            return p, jnp.trace(p, axis1=-2, axis2=-1)

        identity = jnp.broadcast_to(jnp.eye(size, dtype=x.dtype), jac.shape)
        _, traces = lax.scan(power, identity, None, length=self.log_det_terms)
        return self._series(traces)

    def _hutchinson_series(self, g, x: Array) -> Array:
        """The series with tr(J_g^k) ≈ mean over probes v of vᵀ J_g^k v (k Jacobian-vector products)."""
        _, jvp = jax.linearize(g, x)
        probes = jax.random.rademacher(self._probe_key(), (self.num_probes, *x.shape), x.dtype)

        def power(w, _):
            w = jax.vmap(jvp)(w)
            return w, jnp.mean(jax.vmap(sum_except_batch)(probes * w), axis=0)

        _, traces = lax.scan(power, probes, None, length=self.log_det_terms)
        return self._series(traces)

    @staticmethod
    def _series(traces: Array) -> Array:
        """Σ_k (−1)^{k+1} t_k / k for traces t_k stacked on the leading axis (k = 1, 2, …)."""
        k = jnp.arange(1, traces.shape[0] + 1, dtype=traces.dtype)
        return jnp.tensordot(
            jnp.where(k % 2 == 1, 1.0, -1.0) / k, traces, axes=1, precision=BIJECTION_PRECISION
        )

    def _probe_key(self) -> Array:
        if self.has_rng(LOG_DET_RNG):
            return self.make_rng(LOG_DET_RNG)
        if self.is_initializing():
            return self.make_rng("params")
        raise MissingRngError(
            f'InvertibleResidual(trace="hutchinson") draws its probes from the rng stream "{LOG_DET_RNG}": '
            f'pass rngs={{"{LOG_DET_RNG}": key}} to apply (or use trace="exact")'
        )

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        weights = self.weights(x)
        x = x.astype(weights[0][0].dtype)
        return x + self._g(weights)(x), self._log_det(weights, x)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        weights = self.weights(y)
        y = y.astype(weights[0][0].dtype)
        x, last_step = self._solve(weights, y)
        converged = last_step <= self._tolerance(y.dtype) * (1 + _per_example_max(y))
        if is_concrete(converged) and not bool(jnp.all(converged)):
            raise FixedPointError(
                f"InvertibleResidual.inverse: the fixed-point iteration did not reach tolerance "
                f"{self._tolerance(y.dtype)} (relative) in {self.max_iterations} iterations "
                f"(largest last step {float(jnp.max(last_step)):.3g}); raise max_iterations or "
                "lower lipschitz"
            )
        x = jnp.where(converged.reshape((-1,) + (1,) * (y.ndim - 1)), x, jnp.nan)
        return x, -self._log_det(weights, x)

    def _tolerance(self, dtype) -> float:
        if self.tolerance is not None:
            return self.tolerance
        return 1e-6 if jnp.finfo(dtype).bits <= 32 else 1e-12

    def _solve(self, weights, y: Array) -> tuple[Array, Array]:
        """x with x + g(x) = y, and each example's last fixed-point step. `lax.custom_root` gives
        implicit derivatives; their systems (I + J_g)δ = b and (I + J_gᵀ)δ = b are solved by the
        same contraction."""
        g = self._g(weights)
        tol, cap = self._tolerance(y.dtype), self.max_iterations

        def solve_linear(matvec, b):
            scale = 1 + _per_example_max(b)
            return contract(lambda d: matvec(d) - b, b, scale, tol, cap).x

        def solve(f, start):
            solved = contract(f, start, 1 + _per_example_max(y), tol, cap)
            return solved.x, solved.last_step

        def tangent_solve(matvec, b):
            return lax.custom_linear_solve(matvec, b, solve_linear, solve_linear)

        return lax.custom_root(lambda x: x + g(x) - y, y, solve, tangent_solve, has_aux=True)

    def inverse_iterates(self, y: Array, num_iterations: int) -> Array:
        """The first `num_iterations` + 1 fixed-point iterates x_0 = y, x_{k+1} = y − g(x_k),
        stacked on a leading axis: ‖x_k − x‖ ≤ Lip(g)^k ‖y − x‖."""
        weights = self.weights(y)
        y = y.astype(weights[0][0].dtype)
        g = self._g(weights)

        def step(x, _):
            x = y - g(x)
            return x, x

        _, xs = lax.scan(step, y, None, length=num_iterations)
        return jnp.concatenate([y[None], xs])
