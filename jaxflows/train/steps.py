"""Training state, the jit-compiled data-parallel train step and the evaluation step.

Data parallelism uses `jax.sharding`: a 1-D Mesh over every device (all hosts) with axis "batch";
batches are sharded along it, the state is replicated, and XLA inserts the gradient all-reduce. The
same code runs on 1 device, many devices or many hosts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxflows.core import Flow
from jaxflows.core.objective import discrete_bits_per_dim
from jaxflows.train.ema import check_decay, update_ema
from jaxflows.train.optim import OptimizerSpec, build_optimizer

# The compiled functions below are cached on their arguments (hashable: flows are frozen modules of
# tuples, optimisers an `OptimizerSpec`, meshes hash), so a process that trains, resumes or
# evaluates the same model again reuses them, and nothing outside the arguments can change them.
_COMPILED_FUNCTIONS = 16


class TrainState(struct.PyTreeNode):
    step: jax.Array  # int32 scalar: updates done so far (skipped ones included)
    params: Any  # the "params" collection: optimised
    constants: Any  # every other variable collection (e.g. LU permutations): never optimised
    opt_state: Any
    rng: jax.Array  # raw uint32 key; the key of step s is fold_in(rng, s)
    ema_params: Any = None  # debiased moving average of params (jaxflows.train.ema), or None

    def variables(self, averaged: bool = False) -> dict[str, Any]:
        """The flow's variables; `averaged` uses the parameters' moving average when there is one."""
        params = self.ema_params if averaged and self.ema_params is not None else self.params
        return {"params": params, **self.constants}


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis "batch" over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("batch",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("batch"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch, mesh: Mesh):
    """Assemble each host's share into one batch-sharded global array (every array of a
    (pixels, labels) batch)."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(lambda a: jax.make_array_from_process_local_data(sharding, a), local_batch)


def split_batch(batch) -> tuple[jax.Array, jax.Array | None]:
    """(pixels, labels) of a batch: uint8 pixels alone (labels None), or a (pixels, labels) pair for
    a class-conditional flow."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch, None)


def num_dims(flow: Flow) -> int:
    return math.prod(flow.event_shape)


def to_bits_per_dim(flow: Flow, log_prob: jax.Array) -> jax.Array:
    """Bits/dim of a discrete log-probability (nats) of one example of `flow`."""
    return discrete_bits_per_dim(log_prob, num_dims(flow))


def importance_weighted_log_prob(
    flow: Flow, variables, batch, key: jax.Array, bins: int, samples: int
) -> jax.Array:
    """log (1/S) Σ_s P̂_s(x) over S dequantisation draws (Burda et al. 2016): a lower bound on
    log P(x) that tightens as S grows and equals the one-draw bound at S = 1 (nats, per example)."""
    pixels, labels = split_batch(batch)
    draws = jax.lax.map(
        lambda k: flow.apply(variables, pixels, k, bins, labels, method="discrete_log_prob"),
        jax.random.split(key, samples),
    )
    return jax.nn.logsumexp(draws, axis=0) - math.log(samples)


def class_log_probs(flow: Flow, variables, pixels: jax.Array, key: jax.Array, bins: int) -> jax.Array:
    """log P(x | c) for every class c, (batch, num_classes), all from the same dequantisation draw
    (so differences between classes are not dequantisation noise)."""
    classes = jnp.arange(flow.num_classes, dtype=jnp.int32)
    per_class = jax.lax.map(
        lambda c: flow.apply(
            variables, pixels, key, bins, jnp.full(pixels.shape[:1], c), method="discrete_log_prob"
        ),
        classes,
    )
    return per_class.T


INTERMEDIATES = "intermediates"  # values layers sow (the auxiliary classifier's logits); never state


def class_logits(intermediates) -> jax.Array:
    """The auxiliary classifier's logits sown by the top prior (`LearnedPrior(num_classes=...)`)."""
    found = [
        value
        for path, value in jax.tree_util.tree_leaves_with_path(
            intermediates, is_leaf=lambda v: isinstance(v, tuple)
        )
        if getattr(path[-1], "key", None) == "class_logits"
    ]
    if len(found) != 1:
        raise ValueError(
            f"expected one sown class_logits (a glow built with classifier=True), found {len(found)}"
        )
    return found[0][0]


def init_state(
    flow: Flow,
    optimizer: optax.GradientTransformation,
    init_batch,
    bins: int,
    seed: int,
    ema_decay: float | None = None,
) -> TrainState:
    """Variables from ActNorm's data-dependent init on `init_batch` (pixels, or (pixels, labels)
    for a class-conditional flow), a fresh optimiser state, and (with `ema_decay`) a moving average
    of the parameters."""
    check_decay(ema_decay)
    k_init, k_dequant, k_train = jax.random.split(jax.random.PRNGKey(seed), 3)
    pixels, labels = split_batch(init_batch)
    variables = flow.init(k_init, jnp.asarray(pixels), k_dequant, bins, labels, method="discrete_log_prob")
    variables = {k: v for k, v in variables.items() if k != INTERMEDIATES}
    params = variables["params"]
    constants = {k: v for k, v in variables.items() if k != "params"}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        constants=constants,
        opt_state=optimizer.init(params),
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
    pixels = jax.ShapeDtypeStruct((batch_size, *flow.event_shape), jnp.uint8, sharding=batch_sharding(mesh))
    if flow.num_classes is not None:
        pixels = (pixels, jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batch_sharding(mesh)))
    state = jax.eval_shape(lambda p: init_state(flow, optimizer, p, bins, 0, ema_decay), pixels)
    state = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)), state
    )
    return state, pixels


def make_train_step(
    flow: Flow,
    optimizer: optax.GradientTransformation,
    bins: int,
    mesh: Mesh,
    ema_decay: float | None = None,
    class_loss_weight: float = 0.0,
) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """jit(state, batch) -> (state, metrics); loss = mean bits/dim of the dequantised batch (pixels,
    or (pixels, labels) for a class-conditional flow: then of log P(x | y)).

    With `ema_decay` the step also updates `state.ema_params` (from `init_state(..., ema_decay)`).
    With `class_loss_weight` > 0 (a class-conditional glow built with `classifier=True`) the loss adds
    that weight × the auxiliary classifier's cross-entropy in bits per example (Glow's `weight_y`);
    the metrics then report it as `class_loss` and `loss` stays the bits/dim.
    """
    check_decay(ema_decay)
    classify = class_loss_weight > 0

    def loss_fn(params, state: TrainState, batch, key):
        variables = {"params": params, **state.constants}
        pixels, labels = split_batch(batch)
        log_prob, sown = flow.apply(
            variables, pixels, key, bins, labels, method="discrete_log_prob", mutable=[INTERMEDIATES]
        )
        bpd = jnp.mean(to_bits_per_dim(flow, log_prob))
        if not classify:
            return bpd, (bpd, jnp.zeros(()))
        logits = class_logits(sown[INTERMEDIATES])
        cross_entropy = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)) / math.log(
            2.0
        )
        return bpd + class_loss_weight * cross_entropy, (bpd, cross_entropy)

    def train_step(state: TrainState, pixels: jax.Array):
        key = jax.random.fold_in(state.rng, state.step)
        (_, (loss, class_loss)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state, pixels, key
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_decay is not None:
            if ema_params is None:
                raise ValueError("make_train_step(ema_decay=...) needs init_state(..., ema_decay=...)")
            ema_params = update_ema(ema_params, params, ema_decay, state.step + 1)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "skipped_updates": opt_state.skipped,
            "skipped_in_a_row": opt_state.skipped_in_a_row,
        }
        if classify:
            metrics["class_loss"] = class_loss
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params
        )
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=0,
    )


@functools.lru_cache(_COMPILED_FUNCTIONS)
def jit_init(
    flow: Flow, bins: int, optimizer: OptimizerSpec, ema_decay: float | None, mesh: Mesh
) -> Callable[[jax.Array, jax.Array], TrainState]:
    """jit(init_batch, seed) -> replicated TrainState, the seed traced (one compile per model).
    The optimiser hyperparameters are left at 0: set them with `optim.set_hyperparameters`."""
    tx = build_optimizer(optimizer)
    init = lambda pixels, seed: init_state(flow, tx, pixels, bins, seed, ema_decay)
    return jax.jit(init, out_shardings=replicated(mesh))


@functools.lru_cache(_COMPILED_FUNCTIONS)
def jit_train_step(
    flow: Flow,
    bins: int,
    optimizer: OptimizerSpec,
    ema_decay: float | None,
    mesh: Mesh,
    class_loss_weight: float = 0.0,
):
    """`make_train_step` with `build_optimizer(optimizer)`: its numbers come from the state."""
    return make_train_step(flow, build_optimizer(optimizer), bins, mesh, ema_decay, class_loss_weight)


@functools.lru_cache(_COMPILED_FUNCTIONS)
def make_eval_step(flow: Flow, bins: int, mesh: Mesh, samples: int = 1):
    """jit(variables, batch, weights, key) -> (Σ weight·bits/dim, Σ weight, # non-finite); with
    `samples` > 1 the bits/dim are the importance-weighted estimate over that many draws. `batch` is
    pixels, or (pixels, labels) for a class-conditional flow."""

    def eval_step(variables, pixels, weights, key):
        log_prob = importance_weighted_log_prob(flow, variables, pixels, key, bins, samples)
        bpd = to_bits_per_dim(flow, log_prob)
        finite = jnp.isfinite(bpd)
        return (
            jnp.sum(jnp.where(weights > 0, bpd, 0.0) * weights),
            jnp.sum(weights),
            jnp.sum(jnp.where(weights > 0, ~finite, False)),
        )

    return jax.jit(
        eval_step,
        in_shardings=(replicated(mesh), batch_sharding(mesh), batch_sharding(mesh), replicated(mesh)),
        out_shardings=replicated(mesh),
    )


@functools.lru_cache(_COMPILED_FUNCTIONS)
def make_class_log_probs_step(flow: Flow, bins: int, mesh: Mesh):
    """jit(variables, pixels, key) -> log P(x | c) for every class, (batch, classes) (`class_log_probs`)."""
    return jax.jit(
        functools.partial(class_log_probs, flow, bins=bins),
        in_shardings=(replicated(mesh), batch_sharding(mesh), replicated(mesh)),
        out_shardings=batch_sharding(mesh),
    )
