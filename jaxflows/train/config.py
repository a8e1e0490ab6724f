"""Experiment configuration: TrainConfig, whose fields declare their defaults, their validation and
whether a resumed run may change them; `get_config()` in experiments/configs/*.py fills one."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import inspect
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from jaxflows.models import glow
from jaxflows.ops import DEFAULT_NETWORK_PRECISION, NETWORK_PRECISIONS
from jaxflows.train.errors import ConfigError, ConfigFileError

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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


class Rule(NamedTuple):
    """What a field's value must be: `expected` (for the error message) and the test `ok`."""

    expected: str
    ok: Callable[[Any], bool]

    def or_none(self) -> Rule:
        return Rule(f"None or {self.expected}", lambda value: value is None or self.ok(value))


def one_of(choices: tuple[str, ...]) -> Rule:
    return Rule(f"one of {choices}", lambda value: value in choices)


POSITIVE = Rule("a positive integer", lambda v: _is_int(v) and v > 0)
NON_NEGATIVE = Rule("an integer >= 0", lambda v: _is_int(v) and v >= 0)
POSITIVE_NUMBER = Rule("a finite number > 0", lambda v: _is_number(v) and v > 0)
NAME = Rule("a dataset name", lambda v: isinstance(v, str) and bool(v))
PATH = Rule("a directory path", lambda v: isinstance(v, str) and bool(v))
KWARGS = Rule("a dict of models.glow keyword arguments", lambda v: isinstance(v, dict))
DEQUANTIZER = Rule("a dict of VariationalDequantizer keyword arguments", lambda v: isinstance(v, dict))
BITS = Rule("an integer in 1..16", lambda v: _is_int(v) and 1 <= v <= 16)
DECAY = Rule("a number in (0, 1)", lambda v: _is_number(v) and 0 < v < 1)
WEIGHT = Rule("a number >= 0", lambda v: _is_number(v) and v >= 0)
TEMPERATURES = Rule("a non-empty sequence of temperatures > 0",
                    lambda v: bool(v) and all(_is_number(t) and t > 0 for t in v))  # fmt: skip
DEFAULT_MODEL = {"levels": 2, "depth": 4, "hidden": 64, "conv": "lu"}
DEVICES = Rule('None, "cores" or an integer >= 1', lambda v: v is None or v == "cores" or POSITIVE.ok(v))


def setting(default: Any = dataclasses.MISSING, rule: Rule | None = None, *, resumable: bool = False,
            factory: Callable[[], Any] | None = None) -> Any:  # fmt: skip
    """A TrainConfig field with its validation `rule` and whether a resumed run may change it
    (`resumable`: it alters neither the model, the data, its order, nor the structure of the
    optimiser state)."""
    return dataclasses.field(default=default, default_factory=factory or dataclasses.MISSING,
                             metadata={"rule": rule, "resumable": resumable})  # fmt: skip


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs. `model` holds keyword arguments of `models.glow`."""

    # "digits" | "fashion_mnist" | "auto" | a tfds name ("cifar10", ...)
    dataset: str = setting("digits", NAME)
    model: dict[str, Any] = setting(rule=KWARGS, factory=DEFAULT_MODEL.copy)  # noqa: RUF009
    n_bits: int | None = setting(None, BITS.or_none())  # None: the dataset's own bit depth
    batch_size: int = setting(64, POSITIVE)
    eval_batch_size: int = setting(256, POSITIVE, resumable=True)
    optimizer: str = setting("adam", one_of(OPTIMIZERS))
    learning_rate: float = setting(1e-3, POSITIVE_NUMBER, resumable=True)
    warmup_steps: int = setting(200, NON_NEGATIVE, resumable=True)
    # after warm-up: "constant", or "cosine" (to 0 at num_steps)
    lr_decay: str = setting("constant", one_of(LR_DECAYS), resumable=True)
    grad_clip_norm: float | None = setting(50.0, POSITIVE_NUMBER.or_none(), resumable=True)
    # Polyak averaging (jaxflows.train.state): evaluation and sampling use the debiased moving
    # average of the parameters with this decay (MEF uses 0.999); None trains without it.
    ema_decay: float | None = setting(None, DECAY.or_none())
    num_steps: int = setting(1000, POSITIVE, resumable=True)
    init_batch_size: int = setting(256, POSITIVE)  # examples for ActNorm's data-dependent initialisation
    eval_every: int = setting(500, Rule("an integer >= 0 (0 turns it off)", NON_NEGATIVE.ok), resumable=True)
    checkpoint_every: int = setting(500, POSITIVE, resumable=True)
    keep_checkpoints: int = setting(3, POSITIVE, resumable=True)
    log_every: int = setting(50, POSITIVE, resumable=True)
    sample_temperatures: tuple[float, ...] = setting((0.5, 0.7, 1.0), TEMPERATURES, resumable=True)
    samples_per_temperature: int = setting(64, POSITIVE, resumable=True)  # an 8×8 block per temperature
    seed: int = setting(0, Rule("an integer", _is_int))
    data_dir: str | None = setting(None, resumable=True)  # tfds data_dir
    # held-out bits/dim averaged over this many dequantisation draws
    eval_dequant_draws: int = setting(1, POSITIVE, resumable=True)
    # Variational dequantisation (Flow++): keyword arguments of models.VariationalDequantizer
    # (e.g. {"hidden": 32, "depth": 2}); None dequantises uniformly.
    dequantizer: dict[str, Any] | None = setting(None, DEQUANTIZER.or_none())  # noqa: RUF009
    # Held-out bits/dim as the importance-weighted estimate over this many dequantisation draws
    # per example (1: the training bound). Reported next to the bound when > 1.
    eval_importance_samples: int = setting(1, POSITIVE, resumable=True)
    # Laplace pseudo-count of the per-pixel histogram baseline
    baseline_smoothing: float = setting(1.0, POSITIVE_NUMBER, resumable=True)
    interpolation_steps: int = setting(
        8, Rule("an integer >= 2", lambda v: _is_int(v) and v >= 2), resumable=True
    )
    # host batches prepared ahead by a background thread
    prefetch: int = setting(2, NON_NEGATIVE, resumable=True)
    # jax_default_prng_impl set by experiments/train.py; None leaves JAX's default (threefry2x32).
    # "rbg" compiles several times faster on XLA:CPU (threefry's hash is unrolled) at equal quality
    # for this use; its streams differ from threefry's, so keep one choice per run.
    prng_impl: str | None = setting(None, one_of(PRNG_IMPLS).or_none())
    # CPU only: expose the host as this many JAX devices so the data-parallel step runs one batch
    # shard per core (jaxflows.train.host): None keeps JAX's one device; "cores": one per core
    # (the largest count dividing batch_size). Pays off for large steps, not for tiny models.
    cpu_devices: int | str | None = setting(None, DEVICES, resumable=True)
    # CPU only: keep freed memory in the process heap (jaxflows.train.host.reuse_freed_memory) so a
    # step does not fault its working memory in afresh; faster steps, slower compiles.
    reuse_freed_memory: bool = setting(
        False, Rule("True or False", lambda v: isinstance(v, bool)), resumable=True
    )
    # stop (and checkpoint) early after this much training time
    train_time_limit_s: float | None = setting(None, POSITIVE_NUMBER.or_none(), resumable=True)
    # Divergence: after this many consecutive skipped (non-finite) updates the run stops with
    # DivergenceError, keeping its last good checkpoint.
    max_consecutive_skips: int = setting(20, POSITIVE, resumable=True)
    # Glow's auxiliary classification loss (weight_y): with model {"num_classes": N, "classifier": True},
    # the loss adds this weight × the top-latent classifier's cross-entropy (bits per example).
    class_loss_weight: float = setting(0.0, WEIGHT, resumable=True)
    # The conditioner networks' compute dtype and matmul precision (jaxflows.ops.precision); the
    # bijection's own maths is float32 at HIGHEST whatever these say. "bfloat16" keeps float32
    # parameters and optimiser state; precision "default" is JAX's global setting (TF32 on NVIDIA
    # GPUs, one bfloat16 pass on TPUs). Applies to the flow and to a variational dequantizer.
    network_dtype: str = setting("float32", one_of(NETWORK_DTYPES), resumable=True)
    network_precision: str = setting(
        DEFAULT_NETWORK_PRECISION, one_of(tuple(NETWORK_PRECISIONS)), resumable=True
    )
    # JAX's persistent compilation cache, turned on by the entry points (jaxflows.train.host): a
    # second run loads its compiled programs instead of compiling them. None: off.
    compilation_cache_dir: str | None = setting("~/.cache/jaxflows/jax", PATH.or_none(), resumable=True)

    def __post_init__(self):
        self.sample_temperatures = tuple(self.sample_temperatures)  # JSON gives a list
        _validate_config(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# The fields a resumed run may change; every other one must equal the one the workdir was trained with.
RESUMABLE_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resumable"])


def _validate_config(config: TrainConfig) -> None:
    """Raise ConfigError naming the first field no run can use (before any data is read or compiled):
    each field's own rule, then the rules that tie fields together."""

    def fail(field: str, expected: str) -> None:
        raise ConfigError(f"TrainConfig.{field} must be {expected}, got {getattr(config, field)!r}")

    for f in dataclasses.fields(config):
        rule = f.metadata["rule"]
        if rule is not None and not rule.ok(getattr(config, f.name)):
            fail(f.name, rule.expected)
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
    if config.class_loss_weight > 0 and not (
        config.model.get("classifier") and config.model.get("num_classes")
    ):
        fail(
            "class_loss_weight",
            "0 unless model has num_classes and classifier=True (the classifier it trains)",
        )
    if _is_int(config.cpu_devices) and config.batch_size % config.cpu_devices:
        fail("cpu_devices", f"a count that divides batch_size {config.batch_size}")


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


def load_config(path: str | Path, smoke: bool = False) -> TrainConfig:
    """Import a config file and call its `get_config()`; with `smoke`, `get_config(smoke=True)`: the
    file's smoke mode, a smaller and shorter run of the same setup (a ConfigError if it has none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_jaxflows_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{path} must define get_config() -> TrainConfig")
    if smoke and "smoke" not in inspect.signature(module.get_config).parameters:
        raise ConfigError(f"{path} has no smoke mode: its get_config() takes no `smoke` argument")
    config = module.get_config(smoke=True) if smoke else module.get_config()
    if not isinstance(config, TrainConfig):
        raise ConfigFileError(f"{path}: get_config() returned {type(config).__name__}, not TrainConfig")
    return config
