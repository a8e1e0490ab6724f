"""Training: configs, the training loop, checkpoints, evaluation and sampling."""

from jaxflows.train.commands import (
    evaluate,
    restore_for_inference,
    write_curve,
    write_interpolation,
    write_samples,
)
from jaxflows.train.config import TrainConfig, load_config
from jaxflows.train.errors import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointStructureError,
    ConfigError,
    ConfigMismatchError,
    DivergenceError,
    TrainingError,
    WorkdirLockedError,
    WorkdirWriteError,
)
from jaxflows.train.evaluate import (
    evaluate_bits_per_dim,
    fit_pixel_histogram,
    histogram_bits_per_dim,
    pixel_baseline_bits_per_dim,
    reconstruction_warnings,
)
from jaxflows.train.experiment import (
    Experiment,
    build_flow,
    compiled_train_step,
    init_fn,
    maybe_initialize_distributed,
    setup,
)
from jaxflows.train.host import apply_process_settings, split_cpu_into_devices
from jaxflows.train.loop import TrainResult, train
from jaxflows.train.optim import make_optimizer, skip_nonfinite
from jaxflows.train.steps import (
    TrainState,
    importance_weighted_log_prob,
    init_state,
    make_mesh,
    make_train_step,
)
from jaxflows.train.workdir import load_workdir_config

__all__ = [
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointStructureError",
    "ConfigError",
    "ConfigMismatchError",
    "DivergenceError",
    "Experiment",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingError",
    "WorkdirLockedError",
    "WorkdirWriteError",
    "apply_process_settings",
    "build_flow",
    "compiled_train_step",
    "evaluate",
    "evaluate_bits_per_dim",
    "fit_pixel_histogram",
    "histogram_bits_per_dim",
    "importance_weighted_log_prob",
    "init_fn",
    "init_state",
    "load_config",
    "load_workdir_config",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "maybe_initialize_distributed",
    "pixel_baseline_bits_per_dim",
    "reconstruction_warnings",
    "restore_for_inference",
    "setup",
    "skip_nonfinite",
    "split_cpu_into_devices",
    "train",
    "write_curve",
    "write_interpolation",
    "write_samples",
]
