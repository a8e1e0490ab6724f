"""An experiment: the dataset, flow and mesh a config describes, and its initial train state."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxflows.core import Flow
from jaxflows.data import Dataset, batch_indices, load_dataset, validate_batch
from jaxflows.models import VariationalDequantizer, glow
from jaxflows.train.checkpoint import CheckpointStore
from jaxflows.train.config import TrainConfig
from jaxflows.train.evaluate import level_diagnostics
from jaxflows.train.optim import OptimizerSpec, set_hyperparameters
from jaxflows.train.steps import TrainState, jit_init, jit_train_step, make_mesh, replicated

MULTIHOST_ENV = "JAXFLOWS_MULTIHOST"


def maybe_initialize_distributed(multihost: bool = False) -> None:
    """Call `jax.distributed.initialize()` when asked (flag or JAXFLOWS_MULTIHOST=1).

    It must run before any other JAX call. On Cloud TPU, SLURM and similar clusters it discovers the
    coordinator itself; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    Every host then runs the same command; each reads its own share of every batch.
    """
    if multihost or os.environ.get(MULTIHOST_ENV) == "1":
        jax.distributed.initialize()


class Experiment(NamedTuple):
    config: TrainConfig
    dataset: Dataset
    flow: Flow
    mesh: Mesh
    init_batch: np.ndarray | tuple[np.ndarray, np.ndarray]  # pixels, or (pixels, labels) if conditional

    @property
    def conditional(self) -> bool:
        """Whether the flow is class-conditional (batches then carry labels)."""
        return self.flow.num_classes is not None


def build_flow(config: TrainConfig, image_shape: tuple[int, int, int]) -> Flow:
    """The config's Glow (and variational dequantizer), with its network policy."""
    policy = {"network_dtype": jnp.dtype(config.network_dtype), "network_precision": config.network_precision}
    deq = None if config.dequantizer is None else VariationalDequantizer(**config.dequantizer, **policy)
    return glow(tuple(image_shape), **config.model, dequantizer=deq, **policy)


def setup(config: TrainConfig, mesh: Mesh | None = None) -> Experiment:
    """Dataset, flow, mesh and the (identical on every host) initialisation batch."""
    dataset = load_dataset(config.dataset, config.data_dir, config.n_bits)
    flow = build_flow(config, dataset.image_shape)
    if flow.num_classes is not None and flow.num_classes != dataset.num_classes:
        have = "no labels" if dataset.num_classes is None else f"{dataset.num_classes} classes"
        raise ValueError(
            f"model.num_classes={flow.num_classes} but dataset {dataset.name!r} has {have}; a "
            "class-conditional flow needs a labelled dataset with that many classes"
        )
    mesh = make_mesh() if mesh is None else mesh
    if config.batch_size % mesh.devices.size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {mesh.devices.size} devices")
    n_init = min(config.init_batch_size, len(dataset.train))
    idx = batch_indices(len(dataset.train), n_init, 0, config.seed + 1)
    init_pixels = validate_batch(dataset.train[idx], dataset.num_bins, dataset.image_shape, "init batch")
    init_batch = (init_pixels, dataset.train.labels(idx)) if flow.num_classes is not None else init_pixels
    return Experiment(config, dataset, flow, mesh, init_batch)


def init_fn(exp: Experiment) -> Callable[[jax.Array, jax.Array], TrainState]:
    """jit(init_batch, seed) -> TrainState: data-dependent initialisation and a fresh optimiser state
    (hyperparameters 0 until `initial_state` sets them), compiled once per model."""
    c = exp.config
    return jit_init(exp.flow, exp.dataset.num_bins, OptimizerSpec.of(c), c.ema_decay, exp.mesh)


def initial_state(exp: Experiment, store: CheckpointStore | None = None) -> TrainState:
    """The newest verified checkpoint of `store` if there is one, else data-dependent initialisation;
    either way with the optimiser hyperparameters (learning rate, schedule, clipping) of the config."""
    init, c = init_fn(exp), exp.config
    if store is not None and store.steps():
        state = store.restore(jax.eval_shape(init, exp.init_batch, c.seed), replicated(exp.mesh))
    else:
        state = init(exp.init_batch, np.int32(c.seed))
    state = state.replace(opt_state=set_hyperparameters(state.opt_state, c))
    return jax.device_put(state, replicated(exp.mesh))


def compiled_train_step(exp: Experiment):
    """The jitted train step of this experiment's model and optimiser (compiled once per process)."""
    c = exp.config
    return jit_train_step(
        exp.flow, exp.dataset.num_bins, OptimizerSpec.of(c), c.ema_decay, exp.mesh, c.class_loss_weight
    )


DIAGNOSTIC_EXAMPLES = 64


def diagnostics(exp: Experiment, state: TrainState) -> dict[str, float]:
    """Per-level log-det terms and reconstruction errors on the first held-out examples."""
    idx = np.arange(min(DIAGNOSTIC_EXAMPLES, len(exp.dataset.test)))
    pixels, labels = exp.dataset.test[idx], exp.dataset.test.labels(idx) if exp.conditional else None
    variables = state.variables(averaged=True)
    return level_diagnostics(exp.flow, variables, pixels, exp.dataset.num_bins, exp.config.seed, labels)
