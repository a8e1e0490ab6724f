"""The pure, jit-compiled steps: the training step (loss = bits/dim of the dequantised batch for
discrete data, −log p(x) in nats for continuous data) and the held-out evaluation steps,
data-parallel over an experiment's mesh (`experiment.make_mesh`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, PartitionSpec

from jaxflows.core import Flow
from jaxflows.core.objective import discrete_bits_per_dim, example_keys, is_key_batch
from jaxflows.ops import LOG_DET_RNG, SPECTRAL_NORM
from jaxflows.train.errors import ConfigError
from jaxflows.train.experiment import (
    DATA_AXIS,
    Experiment,
    batch_sharding,
    likelihood_call,
    replicated,
    split_batch,
)
from jaxflows.train.state import (
    COMPILED_FUNCTIONS,
    INTERMEDIATES,
    OptimizerSpec,
    TrainState,
    build_optimizer,
    check_counts_skips,
    check_decay,
    update_ema,
)


def importance_weighted_log_prob(
    flow: Flow, variables, batch, key: jax.Array, bins: int, samples: int
) -> jax.Array:
    """log (1/S) Σ_s P̂_s(x) over S dequantisation draws (Burda et al. 2016): a lower bound on
    log P(x) that tightens as S grows and equals the one-draw bound at S = 1 (nats, per example).
    `key` is one key, or one per example (`example_keys`): then each example's S draws come from
    its own key."""
    pixels, labels = split_batch(batch)
    if is_key_batch(key):
        draw_keys = jax.vmap(lambda k: jax.random.split(k, samples), out_axes=1)(key)
    else:
        draw_keys = jax.random.split(key, samples)
    draws = jax.lax.map(
        lambda k: flow.apply(
            variables, pixels, k, bins, labels, method="discrete_log_prob", rngs={LOG_DET_RNG: log_det_key(k)}
        ),
        draw_keys,
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
        raise ConfigError(
            f"expected one sown class_logits (a glow built with classifier=True), found {len(found)}"
        )
    return found[0][0]


def _example_bits_per_dim(flow: Flow, log_prob: jax.Array) -> jax.Array:
    """Bits/dim of a discrete log-probability (nats) of one example of `flow`."""
    return discrete_bits_per_dim(log_prob, math.prod(flow.event_shape))


def example_scores(flow: Flow, log_prob: jax.Array, bins: int | None) -> jax.Array:
    """The per-example number training minimises and evaluation reports: bits/dim of a discrete
    log-probability, or the negative log-likelihood in nats for continuous data (`bins` None)."""
    return -log_prob if bins is None else _example_bits_per_dim(flow, log_prob)


def score_metrics(flow: Flow, score: jax.Array, bins: int | None) -> dict[str, jax.Array]:
    """A batch's mean score under its metric names: bits_per_dim, or nats and nats_per_dim."""
    if bins is not None:
        return {"bits_per_dim": score}
    return {"nats": score, "nats_per_dim": score / math.prod(flow.event_shape)}


def batch_example_keys(key: jax.Array, batch) -> jax.Array:
    """One key per example of a global batch, `fold_in(key, position)`: an example's randomness
    (dequantisation noise) depends on its position in the global batch, not on how the batch is
    split over processes and devices."""
    pixels, _ = split_batch(batch)
    return example_keys(key, jnp.arange(pixels.shape[0]))


def log_det_key(keys: jax.Array) -> jax.Array:
    """The key of stochastic log-det estimates (`LOG_DET_RNG`) for a batch drawn with `keys` (one
    key, or one per example: then the first example's), apart from its dequantisation noise."""
    return jax.random.fold_in(keys[0] if is_key_batch(keys) else keys, 1)


LABEL_DROPOUT_STREAM = 2  # fold_in of an example's key for its label dropout (its noise: the key itself)


def drop_labels(batch, keys: jax.Array, rate: float, num_classes: int):
    """(pixels, class weights): each example's one-hot label, replaced with probability `rate` by
    the uniform weights 1/K that condition on the mean class embedding, the unconditional pass of
    classifier-free guidance (label dropout; Ho & Salimans 2022). `keys`: one per example."""
    pixels, labels = split_batch(batch)
    draw = lambda k: jax.random.bernoulli(jax.random.fold_in(k, LABEL_DROPOUT_STREAM), rate)
    dropped = jax.vmap(draw)(keys)
    weights = jnp.where(dropped[:, None], 1.0 / num_classes, jax.nn.one_hot(labels, num_classes))
    return pixels, weights


def make_train_step(
    flow: Flow,
    optimizer: optax.GradientTransformation,
    bins: int | None,
    mesh: Mesh,
    ema_decay: float | None = None,
    class_loss_weight: float = 0.0,
    label_dropout: float = 0.0,
) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """jit(state, batch) -> (state, metrics); loss = mean bits/dim of the dequantised batch (pixels,
    or (pixels, labels) for a class-conditional flow: then of log P(x | y)), or with `bins` None
    (continuous data) the mean −log p(x) in nats of the float batch.

    `metrics` holds "loss", the score's metrics (`score_metrics`: "bits_per_dim", or "nats" and
    "nats_per_dim"), "class_loss_bits" with a classifier, "grad_norm", "skipped_updates" and
    "skipped_in_a_row"; a new metric is one more key (the loop reduces them by name,
    `jaxflows.train.loop.LAST_VALUE_METRICS`).

    Non-parameter collections the flow updates in training (`SPECTRAL_NORM`: the power-iteration
    vectors of `InvertibleResidual`) are updated in `state.constants`; stochastic log-det estimates
    draw from the `LOG_DET_RNG` stream (`log_det_key`).

    With `ema_decay` the step also updates `state.ema_params` (from `init_state(..., ema_decay)`).
    With `class_loss_weight` > 0 (a class-conditional glow built with `classifier=True`) the loss adds
    that weight × the auxiliary classifier's cross-entropy in bits per example (Glow's `weight_y`);
    the metrics then report it as `class_loss` and `loss` stays the bits/dim. With `label_dropout`
    > 0 a class-conditional flow sees the mean class embedding instead of an example's label with
    that probability (`drop_labels`; the classifier still learns the true labels).
    """
    check_decay(ema_decay)
    classify = class_loss_weight > 0

    def loss_fn(params, constants, batch, keys):
        conditioned = drop_labels(batch, keys, label_dropout, flow.num_classes) if label_dropout else batch
        args, method = likelihood_call(conditioned, keys, bins)
        log_prob, sown = flow.apply(
            {"params": params, **constants},
            *args,
            method=method,
            mutable=[INTERMEDIATES, SPECTRAL_NORM],
            rngs={LOG_DET_RNG: log_det_key(keys)},
        )
        updated = {k: v for k, v in sown.items() if k in constants}
        score = jnp.mean(example_scores(flow, log_prob, bins))
        metrics = score_metrics(flow, score, bins)
        if not classify:
            return score, (metrics, updated)
        labels = split_batch(batch)[1]
        logits = class_logits(sown[INTERMEDIATES])
        cross_entropy = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)) / math.log(
            2.0
        )
        return score + class_loss_weight * cross_entropy, (
            {**metrics, "class_loss_bits": cross_entropy},
            updated,
        )

    def shard_gradient(params, constants, batch, keys):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (metrics, updated)), grads = grad_fn(params, constants, batch, keys)
        flat, unflatten = ravel_pytree((grads, metrics))
        # The updated constants (power-iteration vectors) depend on the parameters only: every
        # shard computes the same values.
        return unflatten(jax.lax.pmean(flat, DATA_AXIS)), updated

    # Each device differentiates its shard's loss; the gradient tree and the losses, as one
    # vector, are averaged across the data axis once, after the whole flow (not once per scanned
    # flow step); one buffer makes one message between processes.
    mean_gradient = jax.shard_map(
        shard_gradient,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(DATA_AXIS), PartitionSpec(DATA_AXIS)),
        out_specs=(PartitionSpec(), PartitionSpec()),
        check_vma=False,
    )

    def train_step(state: TrainState, batch):
        keys = batch_example_keys(jax.random.fold_in(state.rng, state.step), batch)
        (grads, score_and_losses), updated = mean_gradient(state.params, state.constants, batch, keys)
        check_counts_skips(state.opt_state)  # at trace time
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_decay is not None:
            if ema_params is None:
                raise ConfigError("make_train_step(ema_decay=...) needs init_state(..., ema_decay=...)")
            ema_params = update_ema(ema_params, params, ema_decay, state.step + 1)
        score = score_and_losses["bits_per_dim" if bins is not None else "nats"]
        metrics = {
            "loss": score,
            **score_and_losses,
            "grad_norm": optax.tree.norm(grads),
            "skipped_updates": opt_state.skipped,
            "skipped_in_a_row": opt_state.skipped_in_a_row,
        }
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            constants={**state.constants, **updated},
            opt_state=opt_state,
            ema_params=ema_params,
        )
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=0,
    )


def compiled_train_step(exp: Experiment):
    """The jitted train step of this experiment's model and optimiser (compiled once per process;
    the optimiser's numbers come from the state)."""
    c = exp.config
    spec = OptimizerSpec.of(c)
    return _jit_train_step(
        exp.flow, exp.dataset.num_bins, spec, c.ema_decay, exp.mesh, c.class_loss_weight, c.label_dropout
    )


@functools.lru_cache(COMPILED_FUNCTIONS)
def _jit_train_step(flow, bins, optimizer: OptimizerSpec, ema_decay, mesh, class_loss_weight, label_dropout):
    optimizer = build_optimizer(optimizer)
    return make_train_step(flow, optimizer, bins, mesh, ema_decay, class_loss_weight, label_dropout)


def held_out_log_prob(
    flow: Flow, variables, batch, keys: jax.Array, bins: int | None, samples: int = 1
) -> jax.Array:
    """Per-example log-likelihood (nats) for evaluation: the importance-weighted bound over
    `samples` dequantisation draws for discrete data, log p(x) for continuous data (`bins` None);
    `keys` one per example."""
    if bins is not None:
        return importance_weighted_log_prob(flow, variables, batch, keys, bins, samples)
    args, method = likelihood_call(batch, keys, bins)
    return flow.apply(variables, *args, method=method, rngs={LOG_DET_RNG: log_det_key(keys)})


@functools.lru_cache(COMPILED_FUNCTIONS)
def make_eval_step(flow: Flow, bins: int | None, mesh: Mesh, samples: int = 1):
    """jit(variables, batch, weights, indices, key) -> (Σ weight·score, Σ weight, # non-finite), the
    score bits/dim (discrete data; with `samples` > 1 the importance-weighted estimate over that
    many draws) or nats (continuous data, `bins` None). Example i's randomness is keyed by
    `fold_in(key, indices[i])`, its index in the split, so the result does not depend on the batch
    size or layout. `batch` is examples, or (examples, labels) for a class-conditional flow."""

    def eval_step(variables, batch, weights, indices, key):
        keys = example_keys(key, indices)
        score = example_scores(flow, held_out_log_prob(flow, variables, batch, keys, bins, samples), bins)
        finite = jnp.isfinite(score)
        return (
            jnp.sum(jnp.where(weights > 0, score, 0.0) * weights),
            jnp.sum(weights),
            jnp.sum(jnp.where(weights > 0, ~finite, False)),
        )

    return jax.jit(
        eval_step,
        in_shardings=(
            replicated(mesh),
            batch_sharding(mesh),
            batch_sharding(mesh),
            batch_sharding(mesh),
            replicated(mesh),
        ),
        out_shardings=replicated(mesh),
    )


@functools.lru_cache(COMPILED_FUNCTIONS)
def make_class_log_probs_step(flow: Flow, bins: int, mesh: Mesh):
    """jit(variables, pixels, key) -> log P(x | c) for every class, (batch, classes) (`class_log_probs`)."""
    return jax.jit(
        functools.partial(class_log_probs, flow, bins=bins),
        in_shardings=(replicated(mesh), batch_sharding(mesh), replicated(mesh)),
        out_shardings=batch_sharding(mesh),
    )
