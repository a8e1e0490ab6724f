"""Continuous-time flows (FFJORD, Grathwohl et al. 2019) on (batch, d) vectors and NHWC images, solved
with diffrax."""

from __future__ import annotations

import dataclasses
import math

import diffrax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.core.bijector import Array, Bijector, sum_except_batch
from jaxflows.core.errors import InvalidArgumentError, JaxflowsError, MissingRngError
from jaxflows.core.validation import check_count, check_image_or_vectors, is_concrete
from jaxflows.ops.lipschitz import LOG_DET_RNG
from jaxflows.ops.precision import NetworkPolicy, bijection_dtype, network_policy, network_scope

SOLVERS = {"dopri5": diffrax.Dopri5, "tsit5": diffrax.Tsit5, "bosh3": diffrax.Bosh3, "dopri8": diffrax.Dopri8}
ADJOINTS = ("checkpoint", "backsolve")
TRACES = ("exact", "hutchinson")
ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus}


class ODESolveError(JaxflowsError, RuntimeError):
    """An ODE solve stopped before its end time (it ran out of `max_steps`, or the step size
    collapsed)."""


class ConcatSquash(nn.Module):
    """FFJORD's concatsquash layer on (batch, d): (W h + b)·σ(W_g t + b_g) + w_b t."""

    features: int
    zero_init: bool = False
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: object = None

    @nn.compact
    def __call__(self, t: Array, h: Array) -> Array:
        policy = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        zero = dict(kernel_init=nn.initializers.zeros) if self.zero_init else {}
        t = jnp.reshape(t, (1, 1)).astype(h.dtype)
        gate = jax.nn.sigmoid(nn.Dense(self.features, name="gate", **policy)(t))
        shift = nn.Dense(self.features, use_bias=False, name="shift", **policy, **zero)(t)
        return nn.Dense(self.features, name="dense", **policy, **zero)(h) * gate + shift


class ConcatConv(nn.Module):
    """FFJORD's time-concatenated convolution on NHWC: a k×k SAME convolution of [t, h]."""

    features: int
    kernel_size: int = 3
    zero_init: bool = False
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: object = None

    @nn.compact
    def __call__(self, t: Array, h: Array) -> Array:
        zero = dict(kernel_init=nn.initializers.zeros) if self.zero_init else {}
        time = jnp.broadcast_to(jnp.asarray(t, h.dtype), (*h.shape[:-1], 1))
        conv = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            padding="SAME",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            name="conv",
            **zero,
        )
        return conv(jnp.concatenate([time, h], axis=-1))


class ODENetwork(nn.Module):
    """The dynamics f(z, t): `num_layers` concatsquash layers (vectors) or time-concatenated
    convolutions (images) with `activation` between them; the last layer starts at zero, so the
    flow starts as the identity."""

    hidden: int
    num_layers: int
    kernel_size: int
    activation: str
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: object = None

    @nn.compact
    def __call__(self, t: Array, z: Array) -> Array:
        policy = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        h = z
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            features = z.shape[-1] if last else self.hidden
            if z.ndim == 2:
                h = ConcatSquash(features, zero_init=last, name=f"layer_{i}", **policy)(t, h)
            else:
                h = ConcatConv(features, self.kernel_size, zero_init=last, name=f"layer_{i}", **policy)(t, h)
            if not last:
                h = ACTIVATIONS[self.activation](h)
        return h


def _basis(z: Array) -> Array:
    """The D standard basis vectors of one example's shape, broadcast over the batch (D, batch, …)."""
    size = math.prod(z.shape[1:])
    basis = jnp.eye(size, dtype=z.dtype).reshape(size, 1, *z.shape[1:])
    return jnp.broadcast_to(basis, (size, *z.shape))


@dataclasses.dataclass(frozen=True)
class Dynamics:
    """d/dt (z, log_det) = (f(z, t), Σ_v ⟨v, (∂f/∂z) v⟩): diffrax's vector field, with f's
    parameters and the probes v (the basis vectors: the exact trace; or one fixed Hutchinson probe)
    in `args`. f runs under the network policy and its output is cast to the state's dtype."""

    network: ODENetwork

    def __call__(self, t: Array, state: tuple[Array, Array], args) -> tuple[Array, Array]:
        params, probes = args

        def f(h):
            with network_scope():
                return self.network.apply({"params": params}, t, h).astype(h.dtype)

        dz, jvp = jax.linearize(f, state[0])
        trace = jnp.sum(jax.vmap(lambda v: sum_except_batch(v * jvp(v)))(probes), axis=0)
        return dz, trace


class ContinuousFlow(Bijector, NetworkPolicy):
    """A continuous normalizing flow (FFJORD, Grathwohl et al. 2019): z(0) = x, dz/dt = f(z, t),
    y = z(T), with f a network (`ODENetwork`: concatsquash layers on (batch, d) vectors,
    time-concatenated k×k convolutions on NHWC images) run under the network policy.

    Forward (data → latent): z(0) = x integrated from 0 to T. Inverse: z(T) = y integrated from T
    back to 0. One solve, two directions. The log-det is integrated beside z (instantaneous
    change of variables, Eq. 4):
    d/dt log|det ∂z(t)/∂x| = tr(∂f/∂z(t)), so the forward's log-det is +∫_0^T tr(∂f/∂z) dt and the
    inverse's, integrated from T to 0, is its negative. `trace="exact"`: the trace of the Jacobian
    (D Jacobian-vector products per evaluation of f; small D). `trace="hutchinson"`: vᵀ(∂f/∂z)v with
    one Rademacher probe v per example per solve, drawn from the rng stream "log_det"
    (`jaxflows.ops.LOG_DET_RNG`: `apply(..., rngs={"log_det": key})`; `init` uses the params key)
    and held fixed along the trajectory (Eq. 7): an unbiased estimate of the log-det of the solver's
    map.

    The solution is diffrax's adaptive `solver` with a PID step-size controller at `rtol`/`atol`
    (None: 1e-5 in float32, 1e-12 in float64), one step size for the batch; the map, its inverse
    and its log-det are exact only to the solver's tolerance (a round trip is off by about that
    much). A solve that does not reach T in `max_steps` raises `ODESolveError` outside jit and is NaN
    under jit. Gradients: `adjoint="checkpoint"` (diffrax's `RecursiveCheckpointAdjoint`: the
    exact derivative of the discretised solve, reverse mode only) or "backsolve" (the continuous
    adjoint of Chen et al. 2018 that FFJORD uses: O(1) memory, derivative exact only to the
    backward solve's tolerance).

    Attributes:
      hidden: width (vectors) or channels (images) of f's hidden layers.
      num_layers: layers of f (≥ 1).
      kernel_size: k of the image convolutions.
      activation: "tanh" (FFJORD's 2-D and tabular runs) or "softplus" (its images).
      time: the integration time T > 0.
      solver: "dopri5" (default, FFJORD's), "tsit5", "bosh3" or "dopri8".
      rtol, atol: the step-size controller's tolerances (None: by dtype, above).
      max_steps: cap on the solver's steps per solve.
      trace: "exact" or "hutchinson".
      adjoint: "checkpoint" or "backsolve".
      dtype, param_dtype, network_dtype, network_precision: as `NetworkPolicy` (f's output is cast
        to the map's dtype).
    """

    hidden: int = 64
    num_layers: int = 3
    kernel_size: int = 3
    activation: str = "tanh"
    time: float = 1.0
    solver: str = "dopri5"
    rtol: float | None = None
    atol: float | None = None
    max_steps: int = 4096
    trace: str = "exact"
    adjoint: str = "checkpoint"
    dtype: DTypeLike | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        for field in ("hidden", "num_layers", "kernel_size", "max_steps"):
            check_count(getattr(self, field), field, "ContinuousFlow")
        for value, allowed, field in (
            (self.activation, ACTIVATIONS, "activation"),
            (self.solver, SOLVERS, "solver"),
            (self.trace, TRACES, "trace"),
            (self.adjoint, ADJOINTS, "adjoint"),
        ):
            if value not in allowed:
                raise InvalidArgumentError(
                    f"ContinuousFlow: {field} must be one of {sorted(allowed)}, got {value!r}"
                )
        for field in ("time", "rtol", "atol"):
            value = getattr(self, field)
            if (value is not None or field == "time") and not (isinstance(value, int | float) and value > 0):
                raise InvalidArgumentError(f"ContinuousFlow: {field} must be a number > 0, got {value!r}")
        super().__post_init__()

    def network(self) -> ODENetwork:
        policy = network_policy(self)
        return ODENetwork(
            self.hidden,
            self.num_layers,
            self.kernel_size,
            self.activation,
            dtype=policy["dtype"],
            param_dtype=self.param_dtype,
            precision=policy["precision"],
            parent=None,
        )

    @nn.compact
    def dynamics_params(self, z: Array):
        """f's parameters (one collection entry, "dynamics"), initialised on inputs shaped like z."""
        check_image_or_vectors(z, "ContinuousFlow")
        network = self.network()
        return self.param("dynamics", lambda key: network.init(key, jnp.zeros((), z.dtype), z)["params"])

    def tolerances(self, dtype) -> tuple[float, float]:
        """(rtol, atol) of the step-size controller for a state of `dtype`."""
        default = 1e-5 if jnp.finfo(dtype).bits <= 32 else 1e-12
        return (self.rtol or default, self.atol or default)

    def _probes(self, z: Array) -> Array:
        """The probes v (probes, batch, …) whose ⟨v, (∂f/∂z) v⟩ sum to the trace (basis vectors) or
        estimate it (one Rademacher probe, fixed for the solve)."""
        if self.trace == "exact":
            return _basis(z)
        if self.has_rng(LOG_DET_RNG):
            key = self.make_rng(LOG_DET_RNG)
        elif self.is_initializing():
            key = self.make_rng("params")
        else:
            raise MissingRngError(
                f'ContinuousFlow(trace="hutchinson") draws its probe from the rng stream "{LOG_DET_RNG}": '
                f'pass rngs={{"{LOG_DET_RNG}": key}} to apply (or use trace="exact")'
            )
        return jax.random.rademacher(key, (1, *z.shape), z.dtype)

    def _solve(self, z: Array, start: float, end: float) -> diffrax.Solution:
        """diffrax's solution of d/dt (z, log_det) = (f(z, t), tr(∂f/∂z)) from (z, 0) at t = start
        to t = end (saved at end only)."""
        params = self.dynamics_params(z)
        dtype = bijection_dtype(self.dtype, z, *jax.tree_util.tree_leaves(params))
        z = z.astype(dtype)
        rtol, atol = self.tolerances(dtype)
        solver = SOLVERS[self.solver]()
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        if self.adjoint == "backsolve":
            adjoint = diffrax.BacksolveAdjoint(solver=solver, stepsize_controller=controller)
        else:
            adjoint = diffrax.RecursiveCheckpointAdjoint()
        return diffrax.diffeqsolve(
            diffrax.ODETerm(Dynamics(self.network())),
            solver,
            t0=start,
            t1=end,
            dt0=None,
            y0=(z, jnp.zeros(z.shape[:1], dtype)),
            args=(params, self._probes(z)),
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=self.max_steps,
            throw=False,
        )

    def _integrate(self, z: Array, start: float, end: float) -> tuple[Array, Array]:
        """(z(end), ∫_start^end tr(∂f/∂z) dt) from z(start) = z; NaN where the solve failed."""
        solution = self._solve(z, start, end)
        solved = solution.result == diffrax.RESULTS.successful
        if is_concrete(solved) and not bool(solved):
            raise ODESolveError(
                f"ContinuousFlow: the ODE solve from t={start} to t={end} stopped early "
                f"({solution.result}); raise max_steps or loosen rtol/atol"
            )
        z_end, log_det = (jnp.where(solved, a[0], jnp.nan) for a in solution.ys)
        return z_end, log_det

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._integrate(x, 0.0, float(self.time))

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._integrate(y, float(self.time), 0.0)

    def num_steps(self, x: Array) -> Array:
        """The solver's steps, accepted and rejected (each 6 evaluations of f for dopri5 and
        tsit5, with the first-same-as-last reuse), of the forward solve from x; the inverse's cost,
        from y, is about the same."""
        stats = self._solve(x, 0.0, float(self.time)).stats
        return stats["num_accepted_steps"] + stats["num_rejected_steps"]
