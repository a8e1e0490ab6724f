"""Experiment configuration: TrainConfig, whose fields declare their defaults, their validation and
whether a resumed run may change them; `get_config()` in experiments/configs/*.py fills one."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import difflib
import importlib.util
import inspect
import json
import re
import traceback
import types
import typing
from pathlib import Path
from typing import Any

from jaxflows.core.errors import JaxflowsError
from jaxflows.data import Dataset, array_dataset, describe_dataset
from jaxflows.ops import DEFAULT_NETWORK_PRECISION, NETWORK_PRECISIONS
from jaxflows.train.errors import ConfigError, ConfigFileError
from jaxflows.train.rules import (
    BITS,
    DATASET,
    DECAY,
    DEFAULT_MODEL,
    DEQUANTIZER,
    DEVICES,
    FLAG,
    KWARGS,
    LR_DECAYS,
    NETWORK_DTYPES,
    NON_NEGATIVE,
    OPTIMIZERS,
    PATH,
    POSITIVE,
    POSITIVE_NUMBER,
    PRNG_IMPLS,
    RATE,
    TEMPERATURES,
    WEIGHT,
    Rule,
    is_int,
    is_number,
    model_name,
    one_of,
    setting,
    validate_config,
)


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs; `get_config()` in experiments/configs/*.py fills one.
    Fields marked (resumable) may change when a run resumes; the others must equal the workdir's.

    Data and model:
      dataset: a registered name (`jaxflows.data.DATASETS`): "digits", "fashion_mnist" (discrete
          images), "two_moons", "ring_of_gaussians" (continuous 2-D points), yours
          (`register_dataset`); "auto" (Fashion-MNIST if its files exist, else digits); a tfds name
          ("cifar10", ...); or your own arrays: a `jaxflows.data.Dataset` (`array_dataset(...)`),
          (train, held_out) of float arrays of any event shape (continuous: the objective is
          −log p(x) in nats, no dequantisation), or (train, held_out, levels) of integer arrays or
          `ArraySource`s (discrete: dequantised, bits/dim), checked like the named datasets'
          batches. config.json records such data by its description (shape, levels, counts,
          SHA-256), and a resumed run must pass the same arrays (else ConfigMismatchError).
      model: {"name": a registered model (`jaxflows.models.MODELS`; default "glow"), **its
          builder's keyword arguments}; the event shape comes from the data, the network policy
          from the fields below. Another name starts from that builder's defaults (`--set
          model.name=coupling_flow` drops the other keys); a key the builder does not take is a
          ConfigError naming the builder.
      n_bits: reduce the pixels to 2^n_bits levels (Glow's 5-bit CelebA); None keeps the data's own.
          Image-only fields (n_bits, dequantizer, eval_dequant_draws, eval_importance_samples,
          baseline_smoothing, class_loss_weight) set with continuous data are a ConfigError.
      dequantizer: keyword arguments of `models.VariationalDequantizer` (Flow++'s variational
          dequantisation, e.g. {"hidden": 32, "depth": 2}); None dequantises uniformly.
      network_dtype, network_precision (resumable): the conditioner networks' compute dtype and
          matmul precision (`jaxflows.ops.precision`); the bijection's own maths is float32 at
          HIGHEST whatever these say. "bfloat16" keeps float32 parameters and optimiser state;
          precision "default" is JAX's global setting (TF32 on NVIDIA GPUs, one bfloat16 pass on
          TPUs). They apply to the flow and to a variational dequantizer.
      seed: parameter initialisation, data order and dequantisation noise.

    Optimisation (`jaxflows.train.state`):
      batch_size: examples per update, over all devices and hosts.
      optimizer: "adam" or "adamax".
      learning_rate, warmup_steps (resumable): peak rate, reached linearly over warm-up.
      lr_decay (resumable): after warm-up "constant", or "cosine" (to 0 at num_steps).
      grad_clip_norm (resumable): clip gradients to this global norm; None does not clip.
      ema_decay: evaluation and sampling use the debiased moving average of the parameters with
          this decay (Polyak averaging; MEF uses 0.999); None trains without it.
      num_steps (resumable): updates to train up to.
      init_batch_size: examples for ActNorm's data-dependent initialisation.
      class_loss_weight (resumable): Glow's auxiliary classification loss (weight_y): with model
          {"num_classes": N, "classifier": True}, the loss adds this weight × the top-latent
          classifier's cross-entropy (bits per example).
      label_dropout (resumable): a class-conditional model trains each example with this
          probability on the mean class embedding (uniform class weights 1/K) instead of its
          label, so that classifier-free guidance's unconditional pass is trained (TarFlow's code
          and Ho & Salimans 2022 drop 10%).
      max_consecutive_skips (resumable): after this many consecutive skipped (non-finite) updates
          the run stops with DivergenceError, keeping its last good checkpoint.
      train_time_limit_s (resumable): stop (and checkpoint) once the workdir's training time
          passes this many seconds: the wall time of its steps summed over every resumption,
          without each start's first (compiling) step and the held-out evaluations
          (metrics.csv's `train_seconds`).

    Logging, evaluation and checkpoints (all resumable):
      log_every: steps per row of metrics.csv, TensorBoard and the progress bar.
      eval_every: held-out bits/dim every this many steps and at the last step (0: never).
      eval_every_s: also held-out bits/dim whenever the training time (`train_seconds`) passes a
          multiple of this many seconds, the time limit included (None: by steps only).
      eval_batch_size: examples per held-out evaluation batch.
      eval_dequant_draws: held-out bits/dim averaged over this many dequantisation draws.
      eval_importance_samples: held-out bits/dim as the importance-weighted estimate over this many
          draws per example (1: the training bound); reported next to the bound when > 1.
      checkpoint_every, keep_checkpoints: save every this many steps; keep the newest this many.
      baseline_smoothing: Laplace pseudo-count of the per-pixel histogram baseline.
      sample_temperatures, samples_per_temperature: the sample grid, an 8×8 block per temperature.
      interpolation_steps: images per row of the latent interpolation.
      data_dir: tensorflow-datasets' data_dir.

    Process settings:
      prefetch (resumable): host batches prepared ahead by a background thread.
      prng_impl: jax_default_prng_impl set by experiments/train.py; None leaves JAX's default
          (threefry2x32). "rbg" compiles several times faster on XLA:CPU at equal quality for this
          use; its streams differ from threefry's, so keep one choice per run.
      cpu_devices (resumable): CPU only: expose the host as this many JAX devices so the
          data-parallel step runs one batch shard per core (`jaxflows.train.host`); None keeps one
          device; "cores": one per core (the largest count dividing batch_size).
      reuse_freed_memory (resumable): CPU only: keep freed memory in the process heap so a step
          does not fault its working memory in afresh; faster steps, slower compiles.
      compilation_cache_dir (resumable): JAX's persistent compilation cache, turned on by the
          entry points: a second run loads its compiled programs instead of compiling them
          (None turns it off).
    """

    dataset: str | Dataset | tuple[Any, ...] | dict[str, Any] = setting("digits", DATASET)  # noqa: RUF009
    model: dict[str, Any] = setting(rule=KWARGS, factory=DEFAULT_MODEL.copy)  # noqa: RUF009
    n_bits: int | None = setting(None, BITS.or_none())
    batch_size: int = setting(64, POSITIVE)
    eval_batch_size: int = setting(256, POSITIVE, resumable=True)
    optimizer: str = setting("adam", one_of(OPTIMIZERS))
    learning_rate: float = setting(1e-3, POSITIVE_NUMBER, resumable=True)
    warmup_steps: int = setting(200, NON_NEGATIVE, resumable=True)
    lr_decay: str = setting("constant", one_of(LR_DECAYS), resumable=True)
    grad_clip_norm: float | None = setting(50.0, POSITIVE_NUMBER.or_none(), resumable=True)
    ema_decay: float | None = setting(None, DECAY.or_none())
    num_steps: int = setting(1000, POSITIVE, resumable=True)
    init_batch_size: int = setting(256, POSITIVE)
    eval_every: int = setting(500, Rule("an integer >= 0 (0 turns it off)", NON_NEGATIVE.ok), resumable=True)
    eval_every_s: float | None = setting(None, POSITIVE_NUMBER.or_none(), resumable=True)
    checkpoint_every: int = setting(500, POSITIVE, resumable=True)
    keep_checkpoints: int = setting(3, POSITIVE, resumable=True)
    log_every: int = setting(50, POSITIVE, resumable=True)
    sample_temperatures: tuple[float, ...] = setting((0.5, 0.7, 1.0), TEMPERATURES, resumable=True)
    samples_per_temperature: int = setting(64, POSITIVE, resumable=True)
    seed: int = setting(0, Rule("an integer", is_int))
    data_dir: str | None = setting(None, resumable=True)
    eval_dequant_draws: int = setting(1, POSITIVE, resumable=True)
    dequantizer: dict[str, Any] | None = setting(None, DEQUANTIZER.or_none())  # noqa: RUF009
    eval_importance_samples: int = setting(1, POSITIVE, resumable=True)
    baseline_smoothing: float = setting(1.0, POSITIVE_NUMBER, resumable=True)
    interpolation_steps: int = setting(
        8, Rule("an integer >= 2", lambda v: is_int(v) and v >= 2), resumable=True
    )
    prefetch: int = setting(2, NON_NEGATIVE, resumable=True)
    prng_impl: str | None = setting(None, one_of(PRNG_IMPLS).or_none())
    cpu_devices: int | str | None = setting(None, DEVICES, resumable=True)
    reuse_freed_memory: bool = setting(False, FLAG, resumable=True)
    train_time_limit_s: float | None = setting(None, POSITIVE_NUMBER.or_none(), resumable=True)
    max_consecutive_skips: int = setting(20, POSITIVE, resumable=True)
    class_loss_weight: float = setting(0.0, WEIGHT, resumable=True)
    label_dropout: float = setting(0.0, RATE, resumable=True)
    network_dtype: str = setting("float32", one_of(NETWORK_DTYPES), resumable=True)
    network_precision: str = setting(
        DEFAULT_NETWORK_PRECISION, one_of(tuple(NETWORK_PRECISIONS)), resumable=True
    )
    compilation_cache_dir: str | None = setting("~/.cache/jaxflows/jax", PATH.or_none(), resumable=True)

    def __post_init__(self):
        self.sample_temperatures = tuple(self.sample_temperatures)  # JSON gives a list
        if isinstance(self.dataset, tuple) and not isinstance(self.dataset, Dataset):
            if len(self.dataset) not in (2, 3):
                raise ConfigError(
                    "TrainConfig.dataset as a tuple must be (train, held_out) of float arrays or (train, "
                    f"held_out, levels) of integer arrays, got {len(self.dataset)} items"
                )
            self.dataset = array_dataset(*self.dataset)
        validate_config(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# The fields a resumed run may change; every other one must equal the one the workdir was trained with.
RESUMABLE_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resumable"])


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The fields of `config` as JSON values (config.json); a `Dataset` as `describe_dataset` of it."""
    dataset = describe_dataset(config.dataset) if isinstance(config.dataset, Dataset) else config.dataset
    return json.loads(json.dumps(dataclasses.asdict(config.replace(dataset=dataset))))


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
        if kind is float and is_number(value):
            return float(value)
        if kind is int and is_int(value):
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
            if field == "model" and key == "name" and value != model_name(current):
                current = {}  # another model starts from its builder's defaults
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


def load_config(path: str | Path, smoke: bool = False) -> TrainConfig:
    """Import a config file and call its `get_config()`; with `smoke`, `get_config(smoke=True)`: the
    file's smoke mode, a smaller and shorter run of the same setup (a ConfigError if it has none).

    A file that does not run (a syntax error, a name it does not define, ...) or that sets a field
    TrainConfig does not have is a ConfigFileError of one line naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_jaxflows_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    with _config_file_errors(path):
        spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{path} must define get_config() -> TrainConfig")
    if smoke and "smoke" not in inspect.signature(module.get_config).parameters:
        raise ConfigError(f"{path} has no smoke mode: its get_config() takes no `smoke` argument")
    with _config_file_errors(path):
        config = module.get_config(smoke=True) if smoke else module.get_config()
    if not isinstance(config, TrainConfig):
        raise ConfigFileError(f"{path}: get_config() returned {type(config).__name__}, not TrainConfig")
    unknown = sorted(set(vars(config)) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:  # `config.batch_sise = 32` after construction: Python accepts it silently
        raise ConfigFileError(
            f"{_where(path, _assignment_line(path, unknown[0]))}: {_unknown_field(unknown[0])}"
        )
    return config


_UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '(\w+)'")


def _unknown_field(name: str) -> str:
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(known)}"
    return f"TrainConfig has no field {name!r}{hint}"


def _where(path: Path, line: int | None) -> str:
    return f"{path}, line {line}" if line is not None else str(path)


def _assignment_line(path: Path, attribute: str) -> int | None:
    """The first line of `path` that assigns `<something>.attribute` (None if none is found)."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == attribute and isinstance(node.ctx, ast.Store):
            return node.lineno
    return None


@contextlib.contextmanager
def _config_file_errors(path: Path):
    """Turn an error raised by running a config file into a one-line ConfigFileError naming the
    file and line; the library's own named errors (a ConfigError for a field's value) pass."""
    try:
        yield
    except SyntaxError as error:
        detail = f"{error.msg}: {error.text.strip()}" if error.text else error.msg
        raise ConfigFileError(f"{_where(path, error.lineno)}: syntax error: {detail}") from None
    except JaxflowsError:
        raise
    except Exception as error:
        frames = [
            f
            for f in traceback.extract_tb(error.__traceback__)
            if Path(f.filename).resolve() == path.resolve()
        ]
        line = frames[-1].lineno if frames else None
        unknown = _UNEXPECTED_KEYWORD.search(str(error)) if isinstance(error, TypeError) else None
        message = _unknown_field(unknown.group(1)) if unknown else f"{type(error).__name__}: {error}"
        raise ConfigFileError(f"{_where(path, line)}: {message}") from None
