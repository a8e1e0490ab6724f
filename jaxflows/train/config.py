"""Experiment configuration: a dataclass, filled by `get_config()` in experiments/configs/*.py."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import inspect
import math
import types
import typing
from pathlib import Path
from typing import Any

from jaxflows.models import glow
from jaxflows.ops import DEFAULT_NETWORK_PRECISION, NETWORK_PRECISIONS
from jaxflows.train.errors import ConfigError

# models.glow's keyword arguments a config's `model` may set (the image shape comes from the data;
# the network policy from TrainConfig.network_dtype / network_precision)
NETWORK_POLICY = ("network_dtype", "network_precision")
GLOW_ARGUMENTS = frozenset(inspect.signature(glow).parameters) - {
    "image_shape",
    "dequantizer",
    *NETWORK_POLICY,
}
NETWORK_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adamax")
LR_DECAYS = ("constant", "cosine")
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs. `model` holds keyword arguments of `models.glow`."""

    dataset: str = "digits"  # "digits" | "fashion_mnist" | "auto" | a tfds name ("cifar10", ...)
    model: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"levels": 2, "depth": 4, "hidden": 64, "conv": "lu"}
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
    samples_per_temperature: int = 64  # an 8×8 block per temperature
    seed: int = 0
    data_dir: str | None = None  # tfds data_dir
    eval_dequant_draws: int = 1  # held-out bits/dim averaged over this many dequantisation draws
    # Variational dequantisation (Flow++): keyword arguments of models.VariationalDequantizer
    # (e.g. {"hidden": 32, "depth": 2}); None dequantises uniformly.
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
    # CPU only: expose the host as this many JAX devices so the data-parallel step runs one batch
    # shard per core (jaxflows.train.host): None keeps JAX's one device; "cores": one per core
    # (the largest count dividing batch_size). Pays off for large steps, not for tiny models.
    cpu_devices: int | str | None = None
    # CPU only: keep freed memory in the process heap (jaxflows.train.host.reuse_freed_memory) so a
    # step does not fault its working memory in afresh; faster steps, slower compiles.
    reuse_freed_memory: bool = False
    train_time_limit_s: float | None = None  # stop (and checkpoint) early after this much training time
    # Divergence: after this many consecutive skipped (non-finite) updates the run stops with
    # DivergenceError, keeping its last good checkpoint.
    max_consecutive_skips: int = 20
    # Glow's auxiliary classification loss (weight_y): with model {"num_classes": N, "classifier": True},
    # the loss adds this weight × the top-latent classifier's cross-entropy (bits per example).
    class_loss_weight: float = 0.0
    # The conditioner networks' compute dtype and matmul precision (jaxflows.ops.precision); the
    # bijection's own maths is float32 at HIGHEST whatever these say. "bfloat16" keeps float32
    # parameters and optimiser state; precision "default" is JAX's global setting (TF32 on NVIDIA
    # GPUs, one bfloat16 pass on TPUs). Applies to the flow and to a variational dequantizer.
    network_dtype: str = "float32"  # "float32" | "bfloat16"
    network_precision: str = DEFAULT_NETWORK_PRECISION  # "highest" | "high" | "default"
    # JAX's persistent compilation cache, turned on by the entry points (jaxflows.train.host): a
    # second run loads its compiled programs instead of compiling them. None: off.
    compilation_cache_dir: str | None = "~/.cache/jaxflows/jax"

    def __post_init__(self):
        self.sample_temperatures = tuple(self.sample_temperatures)  # JSON gives a list
        validate_config(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


_POSITIVE = ("num_steps", "batch_size", "eval_batch_size", "init_batch_size", "log_every", "checkpoint_every",
             "keep_checkpoints", "samples_per_temperature", "eval_dequant_draws", "eval_importance_samples",
             "max_consecutive_skips")  # fmt: skip
_NON_NEGATIVE = ("eval_every", "warmup_steps", "prefetch")
# finite numbers > 0: field -> whether None is allowed
_POSITIVE_NUMBERS = {"learning_rate": False, "baseline_smoothing": False, "grad_clip_norm": True,
                     "train_time_limit_s": True}  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def validate_config(config: TrainConfig) -> None:
    """Raise ConfigError naming the first field no run can use (before any data is read or compiled)."""

    def fail(field: str, expected: str) -> None:
        raise ConfigError(f"TrainConfig.{field} must be {expected}, got {getattr(config, field)!r}")

    for field in _POSITIVE:
        if not _is_int(getattr(config, field)) or getattr(config, field) <= 0:
            fail(field, "a positive integer")
    for field in _NON_NEGATIVE:
        if not _is_int(getattr(config, field)) or getattr(config, field) < 0:
            fail(field, "an integer >= 0 (0 turns it off)" if field == "eval_every" else "an integer >= 0")
    if not _is_int(config.seed):
        fail("seed", "an integer")
    if not _is_int(config.interpolation_steps) or config.interpolation_steps < 2:
        fail("interpolation_steps", "an integer >= 2")
    if not isinstance(config.dataset, str) or not config.dataset:
        fail("dataset", "a dataset name")
    if not isinstance(config.model, dict):
        fail("model", "a dict of models.glow keyword arguments")
    for name in NETWORK_POLICY:
        if name in config.model or name in (config.dequantizer or {}):
            raise ConfigError(
                f"set the network policy with TrainConfig.{name} (--set {name}=...), not in model"
            )
    unknown = sorted(set(config.model) - GLOW_ARGUMENTS)
    if unknown:
        raise ConfigError(
            f"TrainConfig.model has unknown key(s) {unknown}; models.glow takes {sorted(GLOW_ARGUMENTS)}"
        )
    if not _is_number(config.class_loss_weight) or config.class_loss_weight < 0:
        fail("class_loss_weight", "a number >= 0")
    if config.class_loss_weight > 0 and not (
        config.model.get("classifier") and config.model.get("num_classes")
    ):
        fail(
            "class_loss_weight",
            "0 unless model has num_classes and classifier=True (the classifier it trains)",
        )
    if config.dequantizer is not None and not isinstance(config.dequantizer, dict):
        fail("dequantizer", "None or a dict of VariationalDequantizer keyword arguments")
    if config.n_bits is not None and (not _is_int(config.n_bits) or not 1 <= config.n_bits <= 16):
        fail("n_bits", "None or an integer in 1..16")
    for field, optional in _POSITIVE_NUMBERS.items():
        value = getattr(config, field)
        if not (optional and value is None) and (not _is_number(value) or value <= 0):
            fail(field, f"{'None or ' if optional else ''}a finite number > 0")
    if config.ema_decay is not None and (not _is_number(config.ema_decay) or not 0 < config.ema_decay < 1):
        fail("ema_decay", "None or a number in (0, 1)")
    if config.network_dtype not in NETWORK_DTYPES:
        fail("network_dtype", f"one of {NETWORK_DTYPES}")
    if config.network_precision not in NETWORK_PRECISIONS:
        fail("network_precision", f"one of {tuple(NETWORK_PRECISIONS)}")
    if config.optimizer not in OPTIMIZERS:
        fail("optimizer", f"one of {OPTIMIZERS}")
    if config.lr_decay not in LR_DECAYS:
        fail("lr_decay", f"one of {LR_DECAYS}")
    cpu_devices = config.cpu_devices
    if not (cpu_devices is None or cpu_devices == "cores" or (_is_int(cpu_devices) and cpu_devices >= 1)):
        fail("cpu_devices", 'None, "cores" or an integer >= 1')
    if _is_int(cpu_devices) and config.batch_size % cpu_devices:
        fail("cpu_devices", f"a count that divides batch_size {config.batch_size}")
    if not isinstance(config.reuse_freed_memory, bool):
        fail("reuse_freed_memory", "True or False")
    if config.compilation_cache_dir is not None and not (
        isinstance(config.compilation_cache_dir, str) and config.compilation_cache_dir
    ):
        fail("compilation_cache_dir", "None or a directory path")
    if config.prng_impl is not None and config.prng_impl not in PRNG_IMPLS:
        fail("prng_impl", f"None or one of {PRNG_IMPLS}")
    temperatures = config.sample_temperatures
    if not temperatures or not all(_is_number(t) and t > 0 for t in temperatures):
        fail("sample_temperatures", "a non-empty sequence of temperatures > 0")


def config_from_dict(fields: dict[str, Any], source: str = "config") -> TrainConfig:
    """A TrainConfig from a dict (e.g. a workdir's config.json); unknown fields are a ConfigError."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}")
    return TrainConfig(**fields)


def _coerce(field: str, raw: str, value: Any, annotation: Any) -> Any:
    """`value` as the type `annotation` of TrainConfig.`field` wants, or a ConfigError."""
    options = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    for option in options:
        kind = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return None
        if kind is float and _is_number(value):
            return float(value)
        if kind is int and _is_int(value):
            return value
        if kind is bool and isinstance(value, bool):
            return value
        if kind is str and isinstance(value, str):
            return value
        if kind is tuple and isinstance(value, list | tuple):
            return tuple(value)
        if kind is dict and isinstance(value, dict):
            return value
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"--set {field}={raw}: expected {expected}, got {type(value).__name__} {value!r}")


def _parse_value(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare word: a string


def apply_overrides(config: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """`config` with `field=value` overrides (`model.hidden=64` sets one key of a dict field).

    Values are Python literals (`1e-3`, `(0.7, 1.0)`, `None`, `{"hidden": 8}`) or bare words
    (strings); each is checked against the field's type. An unknown field, a value of the wrong
    type or a value the field cannot take is a ConfigError.
    """
    hints = typing.get_type_hints(TrainConfig)
    changes: dict[str, Any] = {}
    for item in overrides:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--set expects field=value, got {item!r}")
        field, _, key = name.partition(".")
        if field not in hints:
            raise ConfigError(f"--set {item}: TrainConfig has no field {field!r}; fields: {sorted(hints)}")
        value = _parse_value(raw.strip())
        if key:
            current = changes.get(field, getattr(config, field))
            if not isinstance(current, dict):
                raise ConfigError(f"--set {item}: {field} is {current!r}, not a dict with keys")
            changes[field] = {**current, key: value}
        else:
            changes[field] = _coerce(field, raw, value, hints[field])
    return config.replace(**changes)


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    """`--set FIELD=VALUE ...` (repeatable) on a command line; apply it with `apply_overrides`."""
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="FIELD=VALUE",
        help="override any TrainConfig field, e.g. --set num_steps=500 model.hidden=64 learning_rate=1e-3",
    )  # fmt: skip


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
