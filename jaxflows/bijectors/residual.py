"""Invertible residual block (i-ResNet, Behrmann et al. 2019; Residual Flows, Chen et al. 2019) on
(batch, d) vectors and NHWC images."""

from __future__ import annotations

import dataclasses
import functools
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


def learned_lipswish(x: Array, beta: Array) -> Array:
    """LipSwish with a learnable β (Chen et al. 2019, Sec 4): x·σ(softplus(β)·x)/1.1. For every slope
    b > 0, max_x d/dx[x·σ(bx)] ≈ 1.0998 (substitute z = bx), so the map is 1-Lipschitz."""
    return x * jax.nn.sigmoid(jax.nn.softplus(beta) * x) / 1.1


ACTIVATIONS = {
    "elu": jax.nn.elu,  # 1-Lipschitz (Behrmann et al. 2019)
    "lipswish": lambda x: jax.nn.swish(x) / 1.1,  # Lip(swish) ≈ 1.0998 (Chen et al. 2019)
}
LEARNED_ACTIVATIONS = {"learned_lipswish": learned_lipswish}  # φ(x, β), one scalar β per activation
LEARNED_ACTIVATION_INIT = 0.5  # β at init (Chen et al. 2019)
TRACES = ("exact", "hutchinson")
ESTIMATORS = ("series", "roulette")
ROULETTES = {"geometric": 0.5, "poisson": 2.0}  # N's distribution -> its default parameter (p, λ)
LOG_DET_GRADIENTS = ("neumann", "backward_in_forward", "scan")
EVALUATION_EXACT_TERMS = 20  # Chen et al. 2019 evaluate with 20 exact terms, then the roulette


class ResidualWeights(NamedTuple):
    """g's parameters as applied: the normalised (kernel, bias) of each linear layer, and the β of
    each learned activation (empty for fixed activations)."""

    layers: tuple[tuple[Array, Array], ...]
    betas: tuple[Array, ...] = ()


def residual_map(
    weights: tuple[tuple[Array, Array], ...], activation: str, x: Array, betas: tuple[Array, ...] = ()
) -> Array:
    """g(x) = L_n ∘ φ ∘ … ∘ φ ∘ L_1 (x) for the normalised (kernel, bias) pairs `weights` (and the
    learned activations' `betas`, one per φ)."""
    for i, (kernel, bias) in enumerate(weights):
        x = linear(kernel, bias, x)
        if i < len(weights) - 1:
            if activation in LEARNED_ACTIVATIONS:
                x = LEARNED_ACTIVATIONS[activation](x, betas[i])
            else:
                x = ACTIVATIONS[activation](x)
    return x


# --- The Russian-roulette estimator (Chen et al. 2019, Sec 3.1) ----------------------------------
#
# log det(I + J) = Σ_{k≥1} (−1)^{k+1} tr(J^k)/k. With N ~ p(N) drawn once per batch and the first n
# terms always computed, Σ_{k=1}^{n+N} (−1)^{k+1} vᵀJ^k v / (k·P(N ≥ k − n)) is unbiased: term k
# enters with probability P(N ≥ k − n) and is divided by it (Eq. 8). Its derivative, by the cyclic
# trace, has the expectation of the Neumann series ∂ log det(I + J) = tr((I + J)⁻¹ ∂J) =
# Σ_{k≥0} (−1)^k tr(J^k ∂J), whose term k (from the log-det's term k + 1) is reweighted the same way
# (Eq. 9): uᵀ ∂(J v) with u = Σ_{k=0}^{n+N−1} (−1)^k (Jᵀ)^k v / P(N ≥ k + 1 − n).


def survival_probability(roulette: str, parameter: float, j: Array, dtype) -> Array:
    """P(N ≥ j) for N ~ Geometric(p) on {1, 2, …} ((1 − p)^(j−1)) or Poisson(λ) on {0, 1, …} (the
    regularised lower incomplete gamma function P(j, λ)); 1 for j ≤ 0."""
    j = jnp.asarray(j, dtype)
    if roulette == "geometric":
        tail = (1 - jnp.asarray(parameter, dtype)) ** jnp.maximum(j - 1, 0)
    else:
        tail = jax.scipy.special.gammainc(jnp.maximum(j, 1), jnp.asarray(parameter, dtype))
    return jnp.where(j <= 0, 1, tail)


def draw_roulette(roulette: str, parameter: float, key: Array, cap: int, dtype) -> Array:
    """min(N, cap) for N ~ Geometric(p) on {1, 2, …} or Poisson(λ) on {0, 1, …}, one int32 for the
    whole batch, by inversion: N = #{j ≥ 1: U < P(N ≥ j)} for U ~ Uniform(0, 1) (any PRNG
    implementation; `jax.random.poisson` needs threefry)."""
    u = jax.random.uniform(key, (), dtype)
    tails = survival_probability(roulette, parameter, jnp.arange(1, cap + 1), dtype)
    return jnp.sum(u < tails, dtype=jnp.int32)


def _probe_dot(probes: Array, w: Array) -> Array:
    """Σ_p ⟨v_p, w_p⟩ per example, for probes and w shaped (probes, batch, …)."""
    return jnp.sum(jax.vmap(sum_except_batch)(probes * w), axis=0)


@dataclasses.dataclass(frozen=True)
class Roulette:
    """The roulette estimate of log det(I + J_g) for g(params, x), with probes v (probes, batch, …)
    averaged with `probe_weight` (1/probes for Hutchinson, 1 for the basis vectors: exact traces),
    `exact_terms` = n and N's distribution `survival`."""

    g: object  # g(params, x)
    roulette: str
    parameter: float
    exact_terms: int
    probe_weight: float

    def survival(self, j: Array, dtype) -> Array:
        return survival_probability(self.roulette, self.parameter, j, dtype)

    def coefficient(self, k: Array, dtype) -> Array:
        """(−1)^{k+1} / (k·P(N ≥ k − n)): the weight of the log-det series' term k ≥ 1."""
        k = jnp.asarray(k, dtype)
        return jnp.where(k % 2 == 1, 1, -1) / (k * self.survival(k - self.exact_terms, dtype))

    def estimate(self, params, x: Array, probes: Array, terms: Array) -> Array:
        """Σ_{k=1}^{terms} coefficient(k)·vᵀJ^k v per example (a `while_loop` of JVPs)."""
        _, jvp = jax.linearize(functools.partial(self.g, params), x)

        def body(state):
            k, w, total = state
            w = jax.vmap(jvp)(w)
            return k + 1, w, total + self.coefficient(k + 1, x.dtype) * _probe_dot(probes, w)

        total = jnp.zeros(x.shape[:1], x.dtype)
        _, _, total = lax.while_loop(lambda s: s[0] < terms, body, (0, probes, total))
        return self.probe_weight * total

    def masked_estimate(self, params, x: Array, probes: Array, terms: Array, cap: int) -> Array:
        """The same sum as a `scan` over k = 1..cap whose terms beyond `terms` are zero:
        reverse-differentiable, biased only where N > cap − n."""
        _, jvp = jax.linearize(functools.partial(self.g, params), x)

        def step(w, k):
            w = jax.vmap(jvp)(w)
            coefficient = jnp.where(k <= terms, self.coefficient(jnp.minimum(k, terms), x.dtype), 0)
            return w, coefficient * _probe_dot(probes, w)

        _, contributions = lax.scan(step, probes, jnp.arange(1, cap + 1))
        return self.probe_weight * jnp.sum(contributions, axis=0)

    def neumann_vector(self, params, x: Array, probes: Array, terms: Array) -> Array:
        """u = Σ_{k<terms} (−1)^k (Jᵀ)^k v / P(N ≥ k + 1 − n) for each probe v (a `while_loop` of
        VJPs on the primal values only)."""
        _, vjp = jax.vjp(functools.partial(self.g, params), x)

        def body(state):
            k, w, u = state
            a = jnp.where(k % 2 == 0, 1, -1) / self.survival(k + 1 - self.exact_terms, x.dtype)
            return k + 1, jax.vmap(lambda c: vjp(c)[0])(w), u + a.astype(x.dtype) * w

        _, _, u = lax.while_loop(lambda s: s[0] < terms, body, (0, probes, jnp.zeros_like(probes)))
        return lax.stop_gradient(u)

    def directional(self, params, x: Array, probes: Array, u: Array) -> Array:
        """Σ_p ⟨u_p, J_g(x) v_p⟩ per example: its derivative with u fixed is the Neumann estimate
        uᵀ ∂(J v) of ∂ log det(I + J_g)."""
        jv = jax.vmap(lambda v: jax.jvp(functools.partial(self.g, params), (x,), (v,))[1])(probes)
        return self.probe_weight * _probe_dot(u, jv)

    def neumann_gradient(self, params, x: Array, probes: Array, terms: Array, cotangent: Array):
        """The Neumann-series gradient of Σ_b cotangent_b·log det(I + J_g(x_b)) w.r.t. (params, x)."""
        u = self.neumann_vector(params, x, probes, terms)
        return jax.vjp(lambda p, h: self.directional(p, h, probes, u), params, x)[1](cotangent)

    def differentiable(self, mode: str):
        """estimate(params, x, probes, terms) whose derivative is the Neumann series: "neumann", a
        `custom_jvp` (forward and reverse mode; reverse mode keeps u and g's linearisation, nothing
        per term), or "backward_in_forward", a `custom_vjp` (reverse mode only) that computes the
        gradient in the forward pass for a cotangent that is the same for every example and keeps
        only the gradients."""
        if mode == "neumann":

            @jax.custom_jvp
            def estimate(params, x, probes, terms):
                return self.estimate(params, x, probes, terms)

            @estimate.defjvp
            def estimate_jvp(primals, tangents):
                params, x, probes, terms = primals
                d_params, d_x = tangents[:2]
                u = self.neumann_vector(params, x, probes, terms)
                directional = lambda p, h: self.directional(p, h, probes, u)
                _, tangent = jax.jvp(directional, (params, x), (d_params, d_x))
                return self.estimate(params, x, probes, terms), tangent

            return estimate

        @jax.custom_vjp
        def estimate_in_forward(params, x, probes, terms):
            return self.estimate(params, x, probes, terms)

        def forward(params, x, probes, terms):
            ones = jnp.ones(x.shape[:1], x.dtype)
            gradients = self.neumann_gradient(params, x, probes, terms, ones)
            return self.estimate(params, x, probes, terms), gradients

        def backward(gradients, cotangent):
            grad_params, grad_x = gradients
            scale = jnp.mean(cotangent)  # the parameters' share assumes one cotangent for all examples
            grad_params = jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), grad_params)
            grad_x = grad_x * cotangent.reshape((-1,) + (1,) * (grad_x.ndim - 1)).astype(grad_x.dtype)
            return grad_params, grad_x, None, None

        estimate_in_forward.defvjp(forward, backward)
        return estimate_in_forward


def basis_probes(x: Array) -> Array:
    """The D standard basis vectors of one example's shape, broadcast over the batch (D, batch, …):
    Σ_i e_iᵀ A e_i = tr(A) exactly."""
    size = math.prod(x.shape[1:])
    basis = jnp.eye(size, dtype=x.dtype).reshape(size, 1, *x.shape[1:])
    return jnp.broadcast_to(basis, (size, *x.shape))


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

    Residual Flows (Chen et al. 2019), `estimator="roulette"`: the series' first `exact_terms` = n
    terms always, then a random number N ~ `roulette` (geometric p or Poisson λ, `roulette_param`)
    more, one N per batch from the "log_det" stream, each term k > n divided by P(N ≥ k − n) (Eq. 8):
    the forward returns this unbiased estimate of log|det(I + J_g)| (exactly so for trace="exact",
    whose traces sum the basis vectors; in expectation over the probes for "hutchinson"). Its
    gradient (`log_det_gradient`) is the Neumann series (Eq. 9) in a `custom_vjp`, recomputed in
    the backward pass ("neumann") or computed during the forward pass ("backward_in_forward":
    nothing but the gradients is kept; the parameters' gradient assumes one cotangent for every
    example, a batch-mean or batch-sum loss, and uses the cotangents' mean), or autodiff of a `scan`
    of `max_terms` masked terms ("scan"). At most `max_terms` terms are ever computed, so the
    estimate's mean is the series truncated there: biased by at most D c^(m+1)/((m+1)(1 − c)), m =
    `max_terms`, reached only with probability P(N > m − n) (2^-62 for the defaults).
    `evaluation=True` computes 20 exact terms before the roulette (the paper's evaluation).

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
        log|det(I + J_g)| from the dense per-example Jacobian (exact; small inputs). Unused by the
        roulette estimator.
      trace: "exact" or "hutchinson".
      num_probes: Hutchinson probes per example.
      power_iterations: power-iteration steps per training step, per layer.
      tolerance: relative tolerance of the inverse; None: 1e-6 in float32, 1e-12 in float64.
      max_iterations: cap on the inverse's fixed-point iterations.
      estimator: "series" (truncated at log_det_terms) or "roulette" (unbiased, Chen et al. 2019).
      exact_terms: terms the roulette estimator always computes (n; the paper's 2).
      roulette: "geometric" (on {1, 2, …}; the paper's 2-D runs, p = 0.5) or "poisson" (on
        {0, 1, …}; the paper's images, λ = 2).
      roulette_param: p or λ; None: 0.5 (geometric) or 2.0 (Poisson).
      log_det_gradient: "neumann", "backward_in_forward" or "scan" (roulette only; see above).
      max_terms: the most terms the roulette estimator computes (its "scan" always computes these).
      evaluation: roulette only: 20 exact terms (the paper's evaluation) instead of exact_terms.
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
    estimator: str = "series"
    exact_terms: int = 2
    roulette: str = "geometric"
    roulette_param: float | None = None
    log_det_gradient: str = "neumann"
    max_terms: int = 64
    evaluation: bool = False
    dtype: DTypeLike | None = dataclasses.field(default=None, kw_only=True)
    param_dtype: DTypeLike = dataclasses.field(default=jnp.float32, kw_only=True)

    def __post_init__(self) -> None:
        for field in ("hidden", "kernel_size", "num_probes", "max_iterations"):
            check_count(getattr(self, field), field, "InvertibleResidual")
        if self.log_det_terms is not None:
            check_count(self.log_det_terms, "log_det_terms", "InvertibleResidual")
        elif self.trace != "exact" and self.estimator != "roulette":  # the roulette does not use it
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
            (self.activation, {**ACTIVATIONS, **LEARNED_ACTIVATIONS}, "activation"),
            (self.trace, TRACES, "trace"),
            (self.estimator, ESTIMATORS, "estimator"),
            (self.roulette, ROULETTES, "roulette"),
            (self.log_det_gradient, LOG_DET_GRADIENTS, "log_det_gradient"),
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
        self._check_roulette()
        super().__post_init__()

    def _check_roulette(self) -> None:
        check_count(self.exact_terms, "exact_terms", "InvertibleResidual")
        check_count(self.max_terms, "max_terms", "InvertibleResidual")
        exact = max(self.exact_terms, EVALUATION_EXACT_TERMS if self.evaluation else 0)
        if self.estimator == "roulette" and self.max_terms <= exact:
            raise InvalidArgumentError(
                f"InvertibleResidual: max_terms ({self.max_terms}) must exceed the exact terms ({exact})"
            )
        parameter = self.roulette_parameter()
        valid = 0 < parameter < 1 if self.roulette == "geometric" else parameter > 0
        if not valid:
            expected = "p in (0, 1)" if self.roulette == "geometric" else "λ > 0"
            raise InvalidArgumentError(
                f"InvertibleResidual: roulette_param of the {self.roulette} roulette must be {expected}, "
                f"got {self.roulette_param!r}"
            )

    def roulette_parameter(self) -> float:
        """p (geometric) or λ (Poisson) of the number of roulette terms."""
        if self.roulette_param is None:
            return ROULETTES.get(self.roulette, 0.5)
        if not isinstance(self.roulette_param, int | float):
            raise InvalidArgumentError(
                f"InvertibleResidual: roulette_param must be a number or None, got {self.roulette_param!r}"
            )
        return float(self.roulette_param)

    @nn.compact
    def weights(self, x: Array) -> ResidualWeights:
        """The normalised (kernel, bias) of g's layers and the learned activations' β, in the
        computation dtype for input `x`."""
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
        betas = ()
        if self.activation in LEARNED_ACTIVATIONS:
            init = nn.initializers.constant(LEARNED_ACTIVATION_INIT)
            betas = tuple(
                self.param(f"beta_{i}", init, (), self.param_dtype).astype(dtype)
                for i in range(self.num_layers - 1)
            )
        return ResidualWeights(tuple(layers), betas)

    def residual_function(self):
        """g(weights, x) as a pure function of the `ResidualWeights`."""
        return lambda weights, h: residual_map(weights.layers, self.activation, h, weights.betas)

    def _g(self, weights: ResidualWeights):
        return functools.partial(self.residual_function(), weights)

    def _log_det(self, weights: ResidualWeights, x: Array) -> Array:
        """Σ_{k=1..n} (−1)^{k+1} tr(J_g(x)^k)/k per example, or log|det(I + J_g(x))| itself, or
        the roulette estimate."""
        if self.estimator == "roulette":
            return self._roulette(weights, x)
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

    def _roulette(self, weights: ResidualWeights, x: Array) -> Array:
        """The unbiased roulette estimate, one N for the batch (Chen et al. 2019, Eq. 8)."""
        exact = EVALUATION_EXACT_TERMS if self.evaluation else self.exact_terms
        key_terms, key_probes = jax.random.split(self._probe_key())
        if self.trace == "exact":
            probes, probe_weight = basis_probes(x), 1.0
        else:
            shape = (self.num_probes, *x.shape)
            probes, probe_weight = jax.random.rademacher(key_probes, shape, x.dtype), 1 / self.num_probes
        parameter = self.roulette_parameter()
        terms = exact + draw_roulette(self.roulette, parameter, key_terms, self.max_terms - exact, x.dtype)
        roulette = Roulette(self.residual_function(), self.roulette, parameter, exact, probe_weight)
        if self.log_det_gradient == "scan":
            return roulette.masked_estimate(weights, x, probes, terms, self.max_terms)
        return roulette.differentiable(self.log_det_gradient)(weights, x, probes, terms)

    def _probe_key(self) -> Array:
        if self.has_rng(LOG_DET_RNG):
            return self.make_rng(LOG_DET_RNG)
        if self.is_initializing():
            return self.make_rng("params")
        what = "the roulette's number of terms" if self.estimator == "roulette" else "its probes"
        raise MissingRngError(
            f'InvertibleResidual(trace="{self.trace}", estimator="{self.estimator}") draws {what} from the '
            f'rng stream "{LOG_DET_RNG}": pass rngs={{"{LOG_DET_RNG}": key}} to apply (or use '
            'trace="exact", estimator="series")'
        )

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        weights = self.weights(x)
        x = x.astype(weights.layers[0][0].dtype)
        return x + self._g(weights)(x), self._log_det(weights, x)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        weights = self.weights(y)
        y = y.astype(weights.layers[0][0].dtype)
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
        y = y.astype(weights.layers[0][0].dtype)
        g = self._g(weights)

        def step(x, _):
            x = y - g(x)
            return x, x

        _, xs = lax.scan(step, y, None, length=num_iterations)
        return jnp.concatenate([y[None], xs])
