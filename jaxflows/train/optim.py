"""The optimiser: clipping, Adam/Adamax with linear warm-up, and skipping of non-finite updates."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxflows.train.config import TrainConfig


class SkipNonFiniteState(NamedTuple):
    inner_state: optax.OptState
    skipped: jax.Array  # int32: updates skipped so far because a gradient or update was not finite
    skipped_in_a_row: jax.Array  # int32: consecutive skipped updates up to now (0 after an applied one)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


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


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then constant, or with
    `lr_decay="cosine"` a cosine decay to 0 at `num_steps`."""
    if config.lr_decay not in ("constant", "cosine"):
        raise ValueError(f"lr_decay must be 'constant' or 'cosine', got {config.lr_decay!r}")
    if config.lr_decay == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0,
            config.learning_rate,
            max(config.warmup_steps, 1),
            max(config.num_steps, config.warmup_steps + 1),
        )
    if config.warmup_steps <= 0:
        return optax.constant_schedule(config.learning_rate)
    return optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    optimizers = {"adam": optax.adam, "adamax": optax.adamax}
    if config.optimizer not in optimizers:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; expected one of {sorted(optimizers)}")
    chain = []
    if config.grad_clip_norm is not None:
        chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
    chain.append(optimizers[config.optimizer](learning_rate_schedule(config)))
    return optax.flatten(skip_nonfinite(optax.chain(*chain)))
