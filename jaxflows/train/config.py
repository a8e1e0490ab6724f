"""Experiment configuration: a dataclass, filled by `get_config()` in experiments/configs/*.py."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs. `model` holds keyword arguments of `models.glow`."""

    dataset: str = "digits"  # "digits" | "fashion_mnist" | "auto" | a tfds name ("cifar10", ...)
    model: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"levels": 2, "steps": 4, "hidden": 64, "conv": "lu"}
    )
    n_bits: int | None = None  # None: the dataset's own bit depth
    batch_size: int = 64
    eval_batch_size: int = 256
    optimizer: str = "adam"  # "adam" | "adamax"
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    lr_decay: str = "constant"  # after warm-up: "constant", or "cosine" (to 0 at num_steps)
    grad_clip_norm: float | None = 50.0
    # Polyak averaging (jaxflows.train.ema): evaluation and sampling use the debiased moving
    # average of the parameters with this decay (MEF uses 0.999); None trains without it.
    ema_decay: float | None = None
    num_steps: int = 1000
    init_batch_size: int = 256  # examples for ActNorm's data-dependent initialisation
    eval_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 50
    sample_temperatures: tuple[float, ...] = (0.5, 0.7, 1.0)
    samples_per_temperature: int = 8
    seed: int = 0
    data_dir: str | None = None  # tfds data_dir
    eval_dequant_draws: int = 1  # held-out bits/dim averaged over this many dequantisation draws
    # Variational dequantisation (Flow++): keyword arguments of models.VariationalDequantizer
    # (e.g. {"hidden": 32, "steps": 2}); None dequantises uniformly.
    dequantizer: dict[str, Any] | None = None
    # Held-out bits/dim as the importance-weighted estimate over this many dequantisation draws
    # per example (1: the training bound). Reported next to the bound when > 1.
    eval_importance_samples: int = 1
    baseline_smoothing: float = 1.0  # Laplace pseudo-count of the per-pixel histogram baseline
    interpolation_steps: int = 8
    prefetch: int = 2  # host batches prepared ahead by a background thread
    # jax_default_prng_impl set by experiments/train.py; None leaves JAX's default (threefry2x32).
    # "rbg" compiles several times faster on XLA:CPU (threefry's hash is unrolled) at equal quality
    # for this use; its streams differ from threefry's, so keep one choice per run.
    prng_impl: str | None = None
    train_time_limit_s: float | None = None  # stop (and checkpoint) early after this much training time

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def load_config(path: str | Path) -> TrainConfig:
    """Import a config file and call its `get_config()`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_jaxflows_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{path} must define get_config() -> TrainConfig")
    config = module.get_config()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"{path}: get_config() returned {type(config).__name__}, not TrainConfig")
    return config
