"""The train state: the flow's variables, the optimiser and the parameters' moving average.

The optimiser is clipping, then Adam/Adamax with warm-up and decay, skipping non-finite updates,
over one flat parameter vector; its numbers (learning rate, warm-up, decay, clipping threshold) live
in the optimiser state (`optax.inject_hyperparams`), so changing them reuses the compiled step.

Polyak averaging keeps a debiased exponential moving average of the parameters. With decay d, the
average after t updates of the parameters p_1, ..., p_t is

    ema_t = (1 - d) Σ_s d^(t-s) p_s / (1 - d^t),

the zero-initialised average divided by its total weight (Adam's bias correction), so ema_1 = p_1
and no average is pulled towards an initial value. Written as an update of the debiased average:

    ema_t = ema_(t-1) + w_t (p_t - ema_(t-1)),    w_t = (1 - d) / (1 - d^t).

MEF (Xiao & Liu 2020) evaluates with d = 0.999, as PixelCNN++ does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from jaxflows.core import Flow
from jaxflows.train.config import TrainConfig
from jaxflows.train.errors import ConfigError
from jaxflows.train.experiment import Experiment, batch_sharding, likelihood_call, replicated

# The compiled functions of the train package are cached on their arguments (hashable: flows are
# frozen modules of tuples, optimisers an `OptimizerSpec`, meshes hash), so a process that trains,
# resumes or evaluates the same model again reuses them.
COMPILED_FUNCTIONS = 16
INTERMEDIATES = "intermediates"  # values layers sow (the auxiliary classifier's logits); never state


class TrainState(struct.PyTreeNode):
    """Everything a training step reads and writes (a pytree; checkpoints store it whole).

    step: int32 scalar, the updates done so far (skipped ones included).
    params: the flow's "params" collection, the variables the optimiser updates.
    constants: every other variable collection (e.g. "constants", the LU permutations): never
        optimised.
    opt_state: the optimiser's state (a `SkipNonFiniteState`: it counts skipped updates).
    rng: raw uint32 key; the dequantisation key of step s is `fold_in(rng, s)`.
    ema_params: the debiased moving average of params (`TrainConfig.ema_decay`), or None.

    `variables()` gives the dict for `flow.apply(state.variables(), ...)`.
    """

    step: jax.Array
    params: Any
    constants: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None

    def variables(self, averaged: bool = False) -> dict[str, Any]:
        """The flow's variables ({"params": ..., **constants}) for `flow.apply`; `averaged` uses the
        parameters' moving average when there is one."""
        params = self.ema_params if averaged and self.ema_params is not None else self.params
        return {"params": params, **self.constants}


def init_state(
    flow: Flow,
    optimizer: optax.GradientTransformation,
    init_batch,
    bins: int | None,
    seed: int,
    ema_decay: float | None = None,
    *,
    key: jax.Array | None = None,
    variables: dict[str, Any] | None = None,
) -> TrainState:
    """Variables from ActNorm's data-dependent init on `init_batch` (examples, or (examples, labels)
    for a conditional flow; integer pixels with `bins` levels, or floats with `bins` None), a
    fresh optimiser state, and (with `ema_decay`) a moving average of the parameters.

    `key` (raw uint32 key data) replaces `PRNGKey(seed)`; `variables` are used as they are instead
    of initialising (a warm start: `init_batch` is then unused).

    `optimizer` must count skipped updates, as `make_train_step` reads them: `make_optimizer(config)`,
    or any optax optimiser wrapped as `skip_nonfinite(optax.adam(2e-3))`; pass the same one to
    `make_train_step`. A plain optax optimiser is a ConfigError saying so.
    """
    check_decay(ema_decay)
    k_init, k_dequant, k_train = jax.random.split(jax.random.PRNGKey(seed) if key is None else key, 3)
    if variables is None:
        args, method = likelihood_call(jax.tree_util.tree_map(jnp.asarray, init_batch), k_dequant, bins)
        variables = flow.init(k_init, *args, method=method)
    variables = {k: v for k, v in variables.items() if k != INTERMEDIATES}
    params = variables["params"]
    constants = {k: v for k, v in variables.items() if k != "params"}
    opt_state = optimizer.init(params)
    check_counts_skips(opt_state)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        constants=constants,
        opt_state=opt_state,
        rng=k_train,
        ema_params=None if ema_decay is None else jax.tree_util.tree_map(jnp.copy, params),
    )


def abstract_inputs(
    flow: Flow,
    optimizer: optax.GradientTransformation,
    bins: int,
    batch_size: int,
    mesh: Mesh,
    ema_decay: float | None = None,
) -> tuple[TrainState, jax.ShapeDtypeStruct]:
    """Shapes, dtypes and shardings of (state, batch) for `make_train_step(...).lower(...)`; the
    batch is (pixels, labels) for a class-conditional flow.

    Nothing is computed: use it to compile ahead of time, or to read a step's cost or memory
    analysis without initialising the model.
    """
    dtype = jnp.float32 if bins is None else jnp.uint8  # continuous data (bins None) is float
    pixels = jax.ShapeDtypeStruct((batch_size, *flow.event_shape), dtype, sharding=batch_sharding(mesh))
    if flow.num_classes is not None:
        pixels = (pixels, jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batch_sharding(mesh)))
    state = jax.eval_shape(lambda p: init_state(flow, optimizer, p, bins, 0, ema_decay), pixels)
    state = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)), state
    )
    return state, pixels


def init_fn(exp: Experiment) -> Callable[[jax.Array, jax.Array], TrainState]:
    """jit(init_batch, seed) -> TrainState of `exp`: data-dependent initialisation and a fresh
    optimiser state (hyperparameters 0 until `set_hyperparameters`), compiled once per model."""
    c = exp.config
    return _jit_init(exp.flow, exp.dataset.num_bins, OptimizerSpec.of(c), c.ema_decay, exp.mesh)


@functools.lru_cache(COMPILED_FUNCTIONS)
def _jit_init(flow: Flow, bins: int, optimizer: OptimizerSpec, ema_decay: float | None, mesh: Mesh):
    tx = build_optimizer(optimizer)
    init = lambda pixels, seed: init_state(flow, tx, pixels, bins, seed, ema_decay)
    return jax.jit(init, out_shardings=replicated(mesh))


# --- the optimiser -------------------------------------------------------------------------------


class SkipNonFiniteState(NamedTuple):
    inner_state: optax.OptState
    skipped: jax.Array  # int32: updates skipped so far because a gradient or update was not finite
    skipped_in_a_row: jax.Array  # int32: consecutive skipped updates up to now (0 after an applied one)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def check_counts_skips(opt_state: Any) -> None:
    """A ConfigError unless `opt_state` is `skip_nonfinite`'s (the train step reads its counts of
    skipped updates)."""
    if not isinstance(opt_state, SkipNonFiniteState):
        raise ConfigError(
            f"the optimiser's state is {type(opt_state).__name__}, not the SkipNonFiniteState that "
            "make_train_step reads (skipped updates): wrap it, e.g. "
            "jaxflows.train.skip_nonfinite(optax.adam(2e-3)), and pass the same one to init_state "
            "and make_train_step"
        )


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Like `optax.apply_if_finite`, but a non-finite update is never applied, however many in a row.

    On a non-finite gradient or update the returned update is zero, the inner state is left as it
    was and `skipped` and `skipped_in_a_row` grow by one; an applied update resets `skipped_in_a_row`
    (the training loop stops a run whose count reaches `TrainConfig.max_consecutive_skips`).
    """

    def init(params):
        return SkipNonFiniteState(inner.init(params), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        updates, new_inner = inner.update(grads, state.inner_state, params)
        finite = jnp.logical_and(_all_finite(grads), _all_finite(updates))
        updates = jax.tree_util.tree_map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        new_inner = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_inner, state.inner_state)
        bad = (~finite).astype(jnp.int32)
        return updates, SkipNonFiniteState(new_inner, state.skipped + bad, (state.skipped_in_a_row + 1) * bad)

    return optax.GradientTransformation(init, update)


OPTIMIZERS = {"adam": optax.adam, "adamax": optax.adamax}
HYPERPARAMETERS = ("learning_rate", "warmup_steps", "decay_steps", "cosine", "grad_clip_norm")


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """What the optimiser's compiled code depends on; its numbers are hyperparameters held in the
    optimiser state, so that changing them (a learning-rate sweep, a longer run) reuses the step."""

    name: str = "adam"  # "adam" | "adamax"
    clip: bool = True  # clip gradients by global norm (threshold: hyperparameter `grad_clip_norm`)

    @classmethod
    def of(cls, config: TrainConfig) -> OptimizerSpec:
        return cls(config.optimizer, config.grad_clip_norm is not None)


def hyperparameters(config: TrainConfig) -> dict[str, float]:
    """The optimiser-state hyperparameters of `config` (see `_learning_rate_at`)."""
    cosine = config.lr_decay == "cosine"
    warmup = max(config.warmup_steps, 1) if cosine else config.warmup_steps
    return {
        "learning_rate": float(config.learning_rate),
        "warmup_steps": float(warmup),
        "decay_steps": float(max(config.num_steps, warmup + 1)),
        "cosine": float(cosine),
        "grad_clip_norm": float(config.grad_clip_norm or 0.0),
    }


def _learning_rate_at(count, learning_rate, warmup_steps, decay_steps, cosine, xp=jnp) -> jax.Array:
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps` updates, then constant, or (when
    `cosine` is 1) a cosine decay to 0 at `decay_steps` (optax's warmup_cosine_decay_schedule).
    `xp`: jax.numpy inside the optimiser, numpy on the host (no device programs)."""
    count = xp.asarray(count, xp.float32)
    warm = count / xp.maximum(warmup_steps, 1.0)
    progress = xp.clip((count - warmup_steps) / xp.maximum(decay_steps - warmup_steps, 1.0), 0.0, 1.0)
    decay = xp.where(cosine > 0, 0.5 * (1.0 + xp.cos(xp.pi * progress)), 1.0)
    return learning_rate * xp.where(count < warmup_steps, warm, decay)


def learning_rate_schedule(config: TrainConfig) -> Callable[[int], float]:
    """`_learning_rate_at` with `config`'s hyperparameters: step -> learning rate, computed on the
    host with NumPy (the loop logs it: eager jnp ops would compile a program per operation)."""
    h = hyperparameters(config)
    args = (h["learning_rate"], h["warmup_steps"], h["decay_steps"], h["cosine"])
    return lambda count: float(_learning_rate_at(count, *args, xp=np))


def build_optimizer(spec: OptimizerSpec, **values: float) -> optax.GradientTransformation:
    """Clipping and Adam/Adamax on `_learning_rate_at`, with every number an injected hyperparameter
    (`values`: initial ones, default 0: set them with `set_hyperparameters`), skipping non-finite
    updates, over one flat parameter vector (`optax.flatten`: compiles much faster)."""
    if spec.name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {spec.name!r}; expected one of {sorted(OPTIMIZERS)}")

    def factory(learning_rate, warmup_steps, decay_steps, cosine, grad_clip_norm):
        schedule = lambda count: _learning_rate_at(count, learning_rate, warmup_steps, decay_steps, cosine)
        optimizer = OPTIMIZERS[spec.name](schedule)
        return optax.chain(optax.clip_by_global_norm(grad_clip_norm), optimizer) if spec.clip else optimizer

    initial = {**dict.fromkeys(HYPERPARAMETERS, 0.0), **values}
    return optax.flatten(skip_nonfinite(optax.inject_hyperparams(factory)(**initial)))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optimiser of `config`, its hyperparameters initialised from it."""
    return build_optimizer(OptimizerSpec.of(config), **hyperparameters(config))


def set_hyperparameters(opt_state: SkipNonFiniteState, config: TrainConfig) -> SkipNonFiniteState:
    """`opt_state` (of `build_optimizer`) with `config`'s hyperparameters: no recompilation."""
    inner = opt_state.inner_state
    values = {k: jnp.asarray(v, inner.hyperparams[k].dtype) for k, v in hyperparameters(config).items()}
    return opt_state._replace(inner_state=inner._replace(hyperparams=values))


# --- Polyak averaging ----------------------------------------------------------------------------


def check_decay(decay: float | None) -> None:
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ConfigError(f"ema_decay must be in [0, 1) (or None for no averaging), got {decay}")


def ema_weight(decay: float, count: jax.Array) -> jax.Array:
    """w_t = (1 - d) / (1 - d^t): the weight of the t-th parameters in the debiased average."""
    count = jnp.maximum(jnp.asarray(count, jnp.float32), 1.0)
    if decay == 0:
        return jnp.ones_like(count)
    # d^t = exp(t log d) with log d taken in float64: float32(d) alone is off by 3e-5 relative to 1 - d
    weight = (1.0 - decay) / -jnp.expm1(count * jnp.float32(math.log(decay)))
    return jnp.where(count == 1, 1.0, weight)


def update_ema(ema: Any, params: Any, decay: float, count: jax.Array) -> Any:
    """The debiased average after the `count`-th parameters `params` (count ≥ 1)."""
    weight = ema_weight(decay, count)
    return jax.tree_util.tree_map(lambda a, p: a + (weight * (p - a)).astype(a.dtype), ema, params)
