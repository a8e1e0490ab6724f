"""Checkpoints with orbax: save every N steps, keep the last K, restore into a sharded template."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding

from jaxflows.train.steps import TrainState


def checkpoint_manager(workdir: Path, every: int, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every, create=True)
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def save(manager: ocp.CheckpointManager, state: TrainState, force: bool = False) -> bool:
    """Save `state` under its step (if the interval says so, or `force`)."""
    return manager.save(int(state.step), args=ocp.args.StandardSave(state), force=force)


def restore(manager: ocp.CheckpointManager, template: TrainState, sharding: NamedSharding, step=None):
    """Restore the latest (or `step`) checkpoint into the structure of `template` (arrays or shapes)."""
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template
    )
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))
