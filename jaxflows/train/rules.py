"""What a TrainConfig field's value must be: a `Rule` (the expected value, for the error message,
and its test), `setting` (the dataclass field that carries the rule and its resumability) and
`validate_config`, which checks every field's rule and the rules that tie fields together."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

from jaxflows.core.errors import InvalidArgumentError
from jaxflows.data import Dataset
from jaxflows.data.arrays import is_description
from jaxflows.models import MODELS, check_model_arguments
from jaxflows.train.errors import ConfigError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


class Rule(NamedTuple):
    """What a field's value must be: `expected` (for the error message) and the test `ok`."""

    expected: str
    ok: Callable[[Any], bool]

    def or_none(self) -> Rule:
        return Rule(f"None or {self.expected}", lambda value: value is None or self.ok(value))


def one_of(choices: tuple[str, ...]) -> Rule:
    return Rule(f"one of {choices}", lambda value: value in choices)


POSITIVE = Rule("a positive integer", lambda v: is_int(v) and v > 0)
NON_NEGATIVE = Rule("an integer >= 0", lambda v: is_int(v) and v >= 0)
POSITIVE_NUMBER = Rule("a finite number > 0", lambda v: is_number(v) and v > 0)
PATH = Rule("a directory path", lambda v: isinstance(v, str) and bool(v))
KWARGS = Rule(
    'a dict {"name": a registered model (default "glow"), **its builder\'s keyword arguments}',
    lambda v: isinstance(v, dict),
)
DEQUANTIZER = Rule("a dict of VariationalDequantizer keyword arguments", lambda v: isinstance(v, dict))
BITS = Rule("an integer in 1..16", lambda v: is_int(v) and 1 <= v <= 16)
DECAY = Rule("a number in (0, 1)", lambda v: is_number(v) and 0 < v < 1)
RATE = Rule("a number in [0, 1)", lambda v: is_number(v) and 0 <= v < 1)
WEIGHT = Rule("a number >= 0", lambda v: is_number(v) and v >= 0)
TEMPERATURES = Rule(
    "a non-empty sequence of temperatures > 0", lambda v: bool(v) and all(is_number(t) and t > 0 for t in v)
)
DEVICES = Rule('None, "cores" or an integer >= 1', lambda v: v is None or v == "cores" or POSITIVE.ok(v))
FLAG = Rule("True or False", lambda v: isinstance(v, bool))


# The network policy comes from TrainConfig.network_dtype / network_precision, never from `model`.
NETWORK_POLICY = ("network_dtype", "network_precision")
DEFAULT_MODEL_NAME = "glow"


def model_name(model: dict[str, Any]) -> str:
    """The registered builder a config's `model` names ("glow" when it names none)."""
    return model.get("name", DEFAULT_MODEL_NAME)


def model_kwargs(model: dict[str, Any]) -> dict[str, Any]:
    """A config's `model` without its name: the builder's keyword arguments."""
    return {key: value for key, value in model.items() if key != "name"}


def normalized_model(model: Any) -> Any:
    """`model` with its name filled in, so {"levels": 2} and {"name": "glow", "levels": 2} compare
    equal (workdirs written before the registry record no name)."""
    return {"name": model_name(model), **model} if isinstance(model, dict) else model


NETWORK_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adamax")
LR_DECAYS = ("constant", "cosine")
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
DEFAULT_MODEL = {"levels": 2, "depth": 4, "hidden": 64, "conv": "lu"}
DATASET = Rule(
    "a dataset name, a jaxflows.data.Dataset, (train, held_out) of float arrays (continuous), "
    "(train, held_out, levels) of integer arrays or ArraySources (discrete), or the dataset "
    "description a workdir's config.json records",
    lambda v: (isinstance(v, str) and bool(v)) or isinstance(v, Dataset) or is_description(v),
)


def setting(
    default: Any = dataclasses.MISSING,
    rule: Rule | None = None,
    *,
    resumable: bool = False,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A TrainConfig field with its validation `rule` and whether a resumed run may change it
    (`resumable`: it alters neither the model, the data, its order, nor the structure of the
    optimiser state)."""
    return dataclasses.field(
        default=default,
        default_factory=factory or dataclasses.MISSING,
        metadata={"rule": rule, "resumable": resumable},
    )


def validate_config(config: Any) -> None:
    """Raise ConfigError naming the first field no run can use (before any data is read or compiled):
    each field's own rule, then the rules that tie fields together."""

    def fail(field: str, expected: str) -> None:
        value = getattr(config, field)
        shown = f"{type(value).__name__} {value!r}"[:200] if field == "dataset" else repr(value)
        raise ConfigError(f"TrainConfig.{field} must be {expected}, got {shown}")

    for f in dataclasses.fields(config):
        rule = f.metadata["rule"]
        if rule is not None and not rule.ok(getattr(config, f.name)):
            fail(f.name, rule.expected)
    for name in NETWORK_POLICY:
        if name in config.model or name in (config.dequantizer or {}):
            raise ConfigError(
                f"set the network policy with TrainConfig.{name} (--set {name}=...), not in model"
            )
    name = model_name(config.model)
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"TrainConfig.model names model {name!r}; registered models: {sorted(MODELS)}")
    try:
        check_model_arguments(name, model_kwargs(config.model))
    except InvalidArgumentError as error:
        raise ConfigError(f"TrainConfig.model: {error}") from None
    if config.class_loss_weight > 0 and not (
        config.model.get("classifier") and config.model.get("num_classes")
    ):
        fail(
            "class_loss_weight",
            "0 unless model has num_classes and classifier=True (the classifier it trains)",
        )
    if config.label_dropout > 0 and not config.model.get("num_classes"):
        fail("label_dropout", "0 unless model has num_classes (a class-conditional model's labels)")
    if is_int(config.cpu_devices) and config.batch_size % config.cpu_devices:
        fail("cpu_devices", f"a count that divides batch_size {config.batch_size}")
