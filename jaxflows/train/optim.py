"""The optimiser: clipping, Adam/Adamax with warm-up and decay, skipping of non-finite updates; its
numbers live in the optimiser state (optax.inject_hyperparams)."""

from __future__ import annotations

import dataclasses
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


OPTIMIZERS = {"adam": optax.adam, "adamax": optax.adamax}


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """What the optimiser's compiled code depends on. Its numbers (learning rate, warm-up, decay,
    clipping threshold) are hyperparameters held in the optimiser state, so that changing them
    (a learning-rate sweep, a longer run) reuses the compiled train step."""

    name: str = "adam"  # "adam" | "adamax"
    clip: bool = True  # clip gradients by global norm (threshold: hyperparameter `grad_clip_norm`)

    @classmethod
    def of(cls, config: TrainConfig) -> OptimizerSpec:
        return cls(config.optimizer, config.grad_clip_norm is not None)


def hyperparameters(config: TrainConfig) -> dict[str, float]:
    """The optimiser-state hyperparameters of `config` (see `learning_rate_at`)."""
    cosine = config.lr_decay == "cosine"
    warmup = max(config.warmup_steps, 1) if cosine else config.warmup_steps
    return {
        "learning_rate": float(config.learning_rate),
        "warmup_steps": float(warmup),
        "decay_steps": float(max(config.num_steps, warmup + 1)),
        "cosine": float(cosine),
        "grad_clip_norm": float(config.grad_clip_norm or 0.0),
    }


def learning_rate_at(count, learning_rate, warmup_steps, decay_steps, cosine) -> jax.Array:
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps` updates, then constant, or (when
    `cosine` is 1) a cosine decay to 0 at `decay_steps` (optax's warmup_cosine_decay_schedule)."""
    count = jnp.asarray(count, jnp.float32)
    warm = count / jnp.maximum(warmup_steps, 1.0)
    progress = jnp.clip((count - warmup_steps) / jnp.maximum(decay_steps - warmup_steps, 1.0), 0.0, 1.0)
    decay = jnp.where(cosine > 0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)), 1.0)
    return learning_rate * jnp.where(count < warmup_steps, warm, decay)


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """`learning_rate_at` with `config`'s hyperparameters: step -> learning rate."""
    h = hyperparameters(config)
    return lambda count: learning_rate_at(
        count, h["learning_rate"], h["warmup_steps"], h["decay_steps"], h["cosine"]
    )


def build_optimizer(spec: OptimizerSpec, **values: float) -> optax.GradientTransformation:
    """Clipping and Adam/Adamax on `learning_rate_at`, with every number an injected hyperparameter
    (`values`: initial ones, default 0: set them with `set_hyperparameters`), skipping non-finite
    updates, over one flat parameter vector (`optax.flatten`: compiles much faster)."""
    if spec.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec.name!r}; expected one of {sorted(OPTIMIZERS)}")

    def factory(learning_rate, warmup_steps, decay_steps, cosine, grad_clip_norm):
        schedule = lambda count: learning_rate_at(count, learning_rate, warmup_steps, decay_steps, cosine)
        optimizer = OPTIMIZERS[spec.name](schedule)
        return optax.chain(optax.clip_by_global_norm(grad_clip_norm), optimizer) if spec.clip else optimizer

    initial = dict.fromkeys(("learning_rate", "warmup_steps", "decay_steps", "cosine", "grad_clip_norm"), 0.0)
    return optax.flatten(skip_nonfinite(optax.inject_hyperparams(factory)(**{**initial, **values})))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optimiser of `config`, its hyperparameters initialised from it."""
    return build_optimizer(OptimizerSpec.of(config), **hyperparameters(config))


def set_hyperparameters(opt_state: SkipNonFiniteState, config: TrainConfig) -> SkipNonFiniteState:
    """`opt_state` (of `build_optimizer`) with `config`'s hyperparameters: no recompilation."""
    inner = opt_state.inner_state
    values = {k: jnp.asarray(v, inner.hyperparams[k].dtype) for k, v in hyperparameters(config).items()}
    return opt_state._replace(inner_state=inner._replace(hyperparams=values))
