"""An experiment: the dataset, flow and device mesh a config describes, and how batches are laid out.

Data parallelism uses `jax.sharding`: a 1-D Mesh over every device (all hosts) with axis "batch"
(`DATA_AXIS`); batches are sharded along it, the train state is replicated, and the train step
averages the gradient across it once per step (`steps.make_train_step`). The same code runs on 1
device, many devices or many processes (`host.initialize_distributed`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxflows import pretrained
from jaxflows.core import Flow
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.data import Dataset, batch_indices, load_dataset, validate_batch
from jaxflows.train.config import TrainConfig
from jaxflows.train.errors import ConfigError
from jaxflows.train.rules import model_kwargs, model_name

DATA_AXIS = "batch"


class Experiment(NamedTuple):
    config: TrainConfig
    dataset: Dataset
    flow: Flow
    mesh: Mesh
    init_batch: np.ndarray | tuple[np.ndarray, np.ndarray]  # examples, or (examples, labels) if conditional

    @property
    def conditional(self) -> bool:
        """Whether the flow is class-conditional (batches then carry labels)."""
        return self.flow.num_classes is not None

    @property
    def bins(self) -> int | None:
        """The data's number of levels (discrete: dequantised, bits/dim), None for continuous data."""
        return self.dataset.num_bins


# Fields that only mean something for discrete data (dequantisation, bits/dim, pixel histograms,
# Glow's classifier), with the value that leaves them unset.
DISCRETE_ONLY_FIELDS = {
    "n_bits": None,
    "dequantizer": None,
    "eval_dequant_draws": 1,
    "eval_importance_samples": 1,
    "baseline_smoothing": 1.0,
    "class_loss_weight": 0.0,
}


def check_data_kind(config: TrainConfig, dataset: Dataset) -> None:
    """ConfigError for a discrete-data field set while training on continuous data."""
    if dataset.discrete:
        return
    set_fields = sorted(k for k, unset in DISCRETE_ONLY_FIELDS.items() if getattr(config, k) != unset)
    if set_fields:
        raise ConfigError(
            f"dataset {dataset.name!r} is continuous (float arrays: the objective is -log p(x) in nats), "
            f"but {set_fields} only apply to discrete data (dequantised pixels); leave them unset"
        )


def build_flow(config: TrainConfig, event_shape: tuple[int, ...], discrete: bool = True) -> Flow:
    """The config's model (`MODELS[config.model["name"]]`, default "glow"), with its network policy,
    the data's range (dequantised pixels in [0, 1], continuous data unbounded) and the variational
    dequantizer where the config has one. Built through `jaxflows.pretrained.build`, so the flow
    remembers its recipe: `jaxflows.pretrained.save(path, flow, variables)` needs nothing else."""
    try:
        return pretrained.build(
            {"name": model_name(config.model), **model_kwargs(config.model)},
            event_shape=tuple(event_shape),
            data_range=(0.0, 1.0) if discrete else None,
            dequantizer=config.dequantizer,
            network_dtype=jnp.dtype(config.network_dtype),
            network_precision=config.network_precision,
        )
    except InvalidArgumentError as error:
        raise ConfigError(f"TrainConfig.model: {error}") from None


def setup(config: TrainConfig, mesh: Mesh | None = None) -> Experiment:
    """Dataset, flow, mesh and the (identical on every host) initialisation batch."""
    if isinstance(config.dataset, dict):
        raise ConfigError(
            f"TrainConfig.dataset describes in-memory arrays ({config.dataset}) but holds none: set it "
            "to the same data, e.g. config.replace(dataset=jaxflows.data.array_dataset(train, held_out, "
            "num_bins))"
        )
    dataset = load_dataset(config.dataset, config.data_dir)
    check_data_kind(config, dataset)
    dataset = load_dataset(dataset, n_bits=config.n_bits)
    flow = build_flow(config, dataset.event_shape, dataset.discrete)
    if flow.num_classes is not None and flow.num_classes != dataset.num_classes:
        have = "no labels" if dataset.num_classes is None else f"{dataset.num_classes} classes"
        raise ConfigError(
            f"model.num_classes={flow.num_classes} but dataset {dataset.name!r} has {have}; a "
            "class-conditional flow needs a labelled dataset with that many classes"
        )
    mesh = make_mesh() if mesh is None else mesh
    if config.batch_size % mesh.devices.size:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {mesh.devices.size} devices")
    n_init = min(config.init_batch_size, len(dataset.train))
    idx = batch_indices(len(dataset.train), n_init, 0, config.seed + 1)
    init_pixels = validate_batch(dataset.train[idx], dataset.num_bins, dataset.event_shape, "init batch")
    init_batch = (init_pixels, dataset.train.labels(idx)) if flow.num_classes is not None else init_pixels
    return Experiment(config, dataset, flow, mesh, init_batch)


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis "batch" over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch, mesh: Mesh):
    """Assemble each host's share into one batch-sharded global array (every array of a
    (pixels, labels) batch)."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(lambda a: jax.make_array_from_process_local_data(sharding, a), local_batch)


def likelihood_call(batch, keys: jax.Array, bins: int | None) -> tuple[tuple, str]:
    """The `Flow` method and its positional arguments that give the per-example log-likelihood
    (nats) of `batch`: `discrete_log_prob(pixels, keys, bins, labels)` (one dequantisation draw)
    for discrete data, `log_prob(x, labels)` for continuous data (`bins` None). For
    `flow.init(key, *args, method=...)` and `flow.apply(variables, *args, method=...)`."""
    x, labels = split_batch(batch)
    if bins is None:
        return (x, labels), "log_prob"
    return (x, keys, bins, labels), "discrete_log_prob"


def split_batch(batch) -> tuple[jax.Array, jax.Array | None]:
    """(pixels, labels) of a batch: uint8 pixels alone (labels None), or a (pixels, labels) pair for
    a class-conditional flow."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch, None)
