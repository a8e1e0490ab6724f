"""Training: `fit` fits a flow to arrays in one call; `train` runs a config. Read in this order:
a config (`config`, its fields' rules in `rules`) describes an experiment (`experiment`: data,
flow, mesh); its train state (`state`: variables, optimiser, moving average) is advanced by pure
jit-compiled steps (`steps`) inside the loop (`loop`), which keeps checkpoints (`checkpoint`,
`workdir`) and metrics (`metrics`, with the throughput timer). After training: evaluation
(`evaluate`), the workdir commands (`commands`, `sampling`) and the checkpoint format converter
(`convert`). Process-wide settings live in `host`, named errors in `errors`; `fit` is in `fit`.
"""

from jaxflows.train.commands import (
    evaluate,
    restore_for_inference,
    restore_pretrained,
    write_curve,
    write_interpolation,
    write_samples,
)
from jaxflows.train.config import (
    TrainConfig,
    add_override_argument,
    apply_overrides,
    config_from_dict,
    load_config,
)
from jaxflows.train.errors import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointStructureError,
    ConfigError,
    ConfigFileError,
    ConfigMismatchError,
    DistributedInitError,
    DivergenceError,
    ProcessSettingsError,
    TrainingError,
    WorkdirLockedError,
    WorkdirWriteError,
)
from jaxflows.train.evaluate import (
    evaluate_bits_per_dim,
    evaluate_held_out,
    pixel_baseline_bits_per_dim,
    reconstruction_warnings,
)
from jaxflows.train.experiment import Experiment, global_batch, make_mesh, replicated, setup
from jaxflows.train.fit import fit
from jaxflows.train.host import (
    HEARTBEAT_TIMEOUT_S,
    INIT_TIMEOUT_S,
    apply_process_settings,
    initialize_distributed,
    maybe_initialize_distributed,
    reuse_freed_memory,
    split_cpu_into_devices,
)
from jaxflows.train.loop import TrainResult, train
from jaxflows.train.metrics import read_metrics
from jaxflows.train.rules import model_name
from jaxflows.train.sampling import attribute_grid, image_grid, sample_grid, sample_key
from jaxflows.train.state import (
    TrainState,
    abstract_inputs,
    init_fn,
    init_state,
    make_optimizer,
    skip_nonfinite,
)
from jaxflows.train.steps import class_log_probs, importance_weighted_log_prob, make_train_step
from jaxflows.train.workdir import checkpoint_dirs, load_workdir_config

__all__ = [
    "HEARTBEAT_TIMEOUT_S",
    "INIT_TIMEOUT_S",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointStructureError",
    "ConfigError",
    "ConfigFileError",
    "ConfigMismatchError",
    "DistributedInitError",
    "DivergenceError",
    "Experiment",
    "ProcessSettingsError",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingError",
    "WorkdirLockedError",
    "WorkdirWriteError",
    "abstract_inputs",
    "add_override_argument",
    "apply_overrides",
    "apply_process_settings",
    "attribute_grid",
    "checkpoint_dirs",
    "class_log_probs",
    "config_from_dict",
    "convert_workdir",
    "evaluate",
    "evaluate_bits_per_dim",
    "evaluate_held_out",
    "fit",
    "global_batch",
    "image_grid",
    "importance_weighted_log_prob",
    "init_fn",
    "init_state",
    "initialize_distributed",
    "load_config",
    "load_workdir_config",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "maybe_initialize_distributed",
    "model_name",
    "pixel_baseline_bits_per_dim",
    "read_metrics",
    "reconstruction_warnings",
    "replicated",
    "restore_for_inference",
    "restore_pretrained",
    "reuse_freed_memory",
    "sample_grid",
    "sample_key",
    "setup",
    "skip_nonfinite",
    "split_cpu_into_devices",
    "train",
    "write_curve",
    "write_interpolation",
    "write_samples",
]


def __getattr__(name: str):
    # The converter is imported on first use, so `python -m jaxflows.train.convert` runs a module
    # the package has not imported already.
    if name == "convert_workdir":
        from jaxflows.train.convert import convert

        return convert
    raise AttributeError(f"module 'jaxflows.train' has no attribute {name!r}")
