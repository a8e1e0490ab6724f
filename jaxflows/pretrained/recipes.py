"""How a model card rebuilds its flow: a registered builder's name and keyword arguments, the event
shape and the pipeline arguments, all as JSON (the card's `architecture`, format version 2):

    {"model": {"name": "coupling_flow", "depth": 4, "hidden": 32},   # TrainConfig.model's form
     "event_shape": [2],
     "pipeline": {"data_range": null, "network_dtype": null, "network_precision": "highest"},
     "bins": null}                                                   # levels of discrete data

`pipeline` holds the arguments the training pipeline passes to a builder that names them
(`jaxflows.models.registry.PIPELINE_ARGUMENTS`: the data's range, the network policy, the
dequantizer); a key it lacks takes the builder's default, and `network_dtype: null` lets the networks
follow the maps' dtype (float64 under `jax_enable_x64`). Keyword arguments that JSON cannot hold as
they are travel tagged: a tuple as {"__tuple__": [...]}, a dtype as {"__dtype__": "float32"}.

A flow knows its layers, not the call that built them, so the recipe of a flow is either given
(`save(..., model={"name": ..., ...})`) or remembered from `jaxflows.pretrained.build`/`load`;
either way `save` rebuilds the flow from the recipe and checks that it equals the flow it was given.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.core import Flow
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.models import MODELS, VariationalDequantizer, build_model, check_model_arguments
from jaxflows.models.registry import PIPELINE_ARGUMENTS, builder_arguments
from jaxflows.ops import NetworkPolicy

NETWORK_FIELDS = ("network_dtype", "network_precision")
_MODULE_BOOKKEEPING = ("parent", "name")


class _Unset:
    """The default of an argument the caller did not give (None is a value: "no network dtype")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


class UnregisteredFlowError(InvalidArgumentError):
    """A flow cannot be rebuilt by name: nothing says which registered builder made it (it was built
    by hand, or by a builder called directly), or the recipe given builds a different flow."""


def _is_dtype(value: Any) -> bool:
    """np.dtype("float32"), np.float32 or jnp.float32 (a scalar type that carries its dtype)."""
    if isinstance(value, np.dtype):
        return True
    return isinstance(value, type) and (
        issubclass(value, np.generic) or isinstance(getattr(value, "dtype", None), np.dtype)
    )


def to_json(value: Any, where: str) -> Any:
    """`value` as JSON (tuples and dtypes tagged); anything else JSON cannot hold is an
    InvalidArgumentError naming `where`."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, np.ndarray):
        return value.item() if isinstance(value, np.generic) else value
    if _is_dtype(value):
        return {"__dtype__": jnp.dtype(value).name}
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise InvalidArgumentError(
        f"{where} = {value!r} ({type(value).__name__}) cannot be stored in a model card (JSON: numbers, "
        "strings, lists, tuples, dicts, dtypes); give the builder a name for it instead (e.g. a layer "
        "registered with register_coupling/register_conv)"
    )


def from_json(value: Any) -> Any:
    """The inverse of `to_json`."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(from_json(v) for v in value["__tuple__"])
        if set(value) == {"__dtype__"}:
            return jnp.dtype(value["__dtype__"])
        return {k: from_json(v) for k, v in value.items()}
    return value


def pipeline_arguments(name: str) -> frozenset[str]:
    """The pipeline arguments builder `name` takes (all of them for a builder with **kwargs)."""
    builder = MODELS.lookup(name)
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values()):
        return PIPELINE_ARGUMENTS
    return builder_arguments(name) & PIPELINE_ARGUMENTS


def _pipeline_defaults(name: str) -> dict[str, Any]:
    """The defaults of the pipeline arguments builder `name` names (a card stores them all, so a
    later change of a builder's default does not change a saved model)."""
    parameters = inspect.signature(MODELS.lookup(name)).parameters
    return {
        key: parameters[key].default
        for key in sorted(PIPELINE_ARGUMENTS)
        if key in parameters and parameters[key].default is not inspect.Parameter.empty
    }


def _network_dtype_json(value: Any) -> str | None:
    return None if value is None else jnp.dtype(value).name


def _dequantizer_json(dequantizer: nn.Module | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A `VariationalDequantizer`'s own fields that differ from their defaults (its network policy is
    the flow's), or its keyword arguments as given (TrainConfig.dequantizer); None for none."""
    if dequantizer is None:
        return None
    if isinstance(dequantizer, Mapping):
        return to_json(dict(dequantizer), "dequantizer")
    if type(dequantizer) is not VariationalDequantizer:
        raise InvalidArgumentError(
            f"the flow's dequantizer is a {type(dequantizer).__name__}; a model card stores only "
            "VariationalDequantizer (or none)"
        )
    own = {}
    for field in dataclasses.fields(dequantizer):
        if field.name in (*_MODULE_BOOKKEEPING, *NETWORK_FIELDS):
            continue
        value = getattr(dequantizer, field.name)
        if field.default is dataclasses.MISSING or value != field.default:
            own[field.name] = to_json(value, f"dequantizer.{field.name}")
    return own


def pipeline_to_json(pipeline: Mapping[str, Any]) -> dict[str, Any]:
    """Pipeline arguments (Python values) as the card's JSON."""
    out: dict[str, Any] = {}
    for key, value in pipeline.items():
        if key == "data_range":
            out[key] = value if value is None or isinstance(value, str) else [float(v) for v in value]
        elif key == "network_dtype":
            out[key] = _network_dtype_json(value)
        elif key == "dequantizer":
            out[key] = _dequantizer_json(value)
        elif key == "network_precision":
            out[key] = to_json(value, "network_precision")
        else:
            expected = sorted(PIPELINE_ARGUMENTS)
            raise InvalidArgumentError(f"{key!r} is not a pipeline argument; expected {expected}")
    return out


def pipeline_from_json(pipeline: Mapping[str, Any]) -> dict[str, Any]:
    """The card's pipeline JSON as builder arguments (the dequantizer built with the network policy)."""
    out: dict[str, Any] = {}
    for key, value in pipeline.items():
        if key == "data_range":
            out[key] = value if value is None or isinstance(value, str) else tuple(value)
        elif key == "network_dtype":
            out[key] = None if value is None else jnp.dtype(value)
        elif key != "dequantizer":
            out[key] = from_json(value)
    if pipeline.get("dequantizer") is not None:
        policy = {k: out[k] for k in NETWORK_FIELDS if k in out}
        out["dequantizer"] = VariationalDequantizer(**from_json(pipeline["dequantizer"]), **policy)
    elif "dequantizer" in pipeline:
        out["dequantizer"] = None
    return out


def make_architecture(
    model: Mapping[str, Any],
    event_shape: tuple[int, ...] | int,
    pipeline: Mapping[str, Any],
    bins: int | None,
) -> dict[str, Any]:
    """A card's `architecture` (JSON) from a model dict {"name": ..., **kwargs}, the event shape,
    pipeline arguments (Python values; those the builder does not take are dropped when None) and
    the number of levels of discrete data."""
    if not isinstance(model, Mapping) or not isinstance(model.get("name", "glow"), str):
        raise InvalidArgumentError(
            f"model must be a dict {{'name': <a registered builder>, **its keyword arguments}}, got "
            f"{model!r}; registered: {sorted(MODELS)}"
        )
    if "params" in model:
        raise InvalidArgumentError(
            "model= got a dict with 'params': variables? Call save(path, flow, variables) or "
            "save(path, variables=..., model={'name': ..., ...}, event_shape=...)"
        )
    name = model.get("name", "glow")  # as in TrainConfig.model
    kwargs = {k: v for k, v in model.items() if k != "name"}
    check_model_arguments(name, kwargs)
    single = isinstance(event_shape, (int, np.integer))
    shape = [int(event_shape)] if single else [int(n) for n in event_shape]
    ignored = set(NETWORK_FIELDS)  # a builder without networks ignores the network policy
    taken = pipeline_arguments(name)
    extra = {k: v for k, v in pipeline.items() if k not in taken | ignored and v is not None}
    if extra:
        raise InvalidArgumentError(f"model {name!r} takes no {sorted(extra)}, but the flow has {extra}")
    stored = {**_pipeline_defaults(name), **{k: v for k, v in pipeline.items() if k in taken}}
    return {
        "model": {"name": name, **to_json(kwargs, f"model {name!r}")},
        "event_shape": shape,
        "pipeline": pipeline_to_json(stored),
        "bins": None if bins is None else int(bins),
    }


def upgrade(architecture: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 architecture ({"builder", "image_shape", "kwargs" with the network policy,
    "dequantizer", "bins"}) in format 2; a format-2 one unchanged."""
    if "model" in architecture:
        return dict(architecture)
    kwargs = dict(architecture["kwargs"])
    pipeline = {k: kwargs.pop(k) for k in NETWORK_FIELDS if k in kwargs}
    if architecture.get("dequantizer") is not None:
        pipeline["dequantizer"] = architecture["dequantizer"]
    return {
        "model": {"name": architecture["builder"], **kwargs},
        "event_shape": list(architecture["image_shape"]),
        "pipeline": pipeline,
        "bins": int(architecture.get("bins", 256)),
    }


_RECIPES: dict[int, tuple[weakref.ref, dict[str, Any]]] = {}


def remember(flow: Flow, architecture: Mapping[str, Any]) -> Flow:
    """Records `architecture` as the recipe of `flow` (for `save` without `model=`)."""
    for key in [k for k, (ref, _) in _RECIPES.items() if ref() is None]:
        del _RECIPES[key]
    _RECIPES[id(flow)] = (weakref.ref(flow), dict(architecture))
    return flow


def recipe_of(flow: Flow) -> dict[str, Any] | None:
    """The architecture `flow` was built from by `jaxflows.pretrained.build`/`load`, else None."""
    ref, architecture = _RECIPES.get(id(flow), (None, None))
    return architecture if ref is not None and ref() is flow else None


def build_architecture(architecture: Mapping[str, Any], **overrides: Any) -> Flow:
    """The (untrained) flow `architecture` describes, through the model registry; `overrides`
    (pipeline arguments: network_dtype, network_precision, data_range, dequantizer) replace the
    card's. The flow remembers its recipe (the architecture with the overrides)."""
    architecture = upgrade(architecture)
    pipeline = dict(architecture.get("pipeline", {}))
    name = architecture["model"]["name"]
    if name not in MODELS:
        raise InvalidArgumentError(
            f"the card's model {name!r} is not registered (registered: {sorted(MODELS)}); import the module "
            "that registers it (register_model) before loading"
        )
    taken = pipeline_arguments(name)
    refused = {
        k: v for k, v in overrides.items() if k not in taken and k not in NETWORK_FIELDS and v is not None
    }
    if refused:
        raise InvalidArgumentError(f"model {name!r} takes no {sorted(refused)}, but {refused} was given")
    pipeline.update(pipeline_to_json({k: v for k, v in overrides.items() if k in taken}))
    architecture = {**architecture, "pipeline": pipeline}
    kwargs = from_json({k: v for k, v in architecture["model"].items() if k != "name"})
    flow = build_model(name, tuple(architecture["event_shape"]), kwargs, **pipeline_from_json(pipeline))
    return remember(flow, architecture)


def _modules(value: Any) -> Iterator[nn.Module]:
    """Every module in `value` (a module, or lists, tuples and dicts of them), depth first."""
    if isinstance(value, nn.Module):
        yield value
        for field in dataclasses.fields(value):
            if field.name not in _MODULE_BOOKKEEPING:
                yield from _modules(getattr(value, field.name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _modules(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _modules(item)


def pipeline_of(flow: Flow) -> dict[str, Any]:
    """The pipeline arguments a flow shows: its data range and dequantizer, and the network policy
    when all its networks share one."""
    found: dict[str, Any] = {"data_range": flow.data_range, "dequantizer": flow.dequantizer}
    policies = {
        (_network_dtype_json(m.network_dtype), m.network_precision)
        for m in _modules(flow)
        if isinstance(m, NetworkPolicy)
    }
    if len(policies) == 1:
        ((dtype, precision),) = policies
        found.update(network_dtype=None if dtype is None else jnp.dtype(dtype), network_precision=precision)
    return found


def _parts(value: Any) -> tuple[Any, ...] | None:
    """What makes two callables the same: a partial's function and arguments, a function's code,
    defaults and closure; None for other values."""
    if isinstance(value, functools.partial):
        return (value.func, value.args, value.keywords)
    if isinstance(value, types.FunctionType):
        cells = tuple(cell.cell_contents for cell in value.__closure__ or ())
        return (value.__code__, value.__defaults__, value.__kwdefaults__, cells)
    return None


def first_difference(a: Any, b: Any, path: str = "flow") -> str | None:
    """Where two modules (or values) first differ, e.g. "flow.bijector.length: 4 != 2"; None if
    equal. Layers are compared field by field, partials and functions by what they call with."""
    if a is b:
        return None
    if isinstance(a, nn.Module) and type(a) is type(b):
        a = tuple(getattr(a, f.name) for f in dataclasses.fields(a) if f.name not in _MODULE_BOOKKEEPING)
        names = [f.name for f in dataclasses.fields(b) if f.name not in _MODULE_BOOKKEEPING]
        b = tuple(getattr(b, name) for name in names)
        paths = [f"{path}.{name}" for name in names]
    elif _parts(a) is not None and type(a) is type(b):
        a, b = _parts(a), _parts(b)
        paths = [f"{path}<{i}>" for i in range(len(a))]
    elif isinstance(a, (list, tuple)) and type(a) is type(b) and len(a) == len(b):
        paths = [f"{path}[{i}]" for i in range(len(a))]
    elif isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys():
        paths = [f"{path}[{key!r}]" for key in a]
        a, b = tuple(a.values()), tuple(b[key] for key in a)
    else:
        try:
            arrays = isinstance(a, (np.ndarray, jax.Array)) or isinstance(b, (np.ndarray, jax.Array))
            same = bool(np.array_equal(a, b) if arrays else a == b)
        except (ValueError, TypeError):
            same = False
        return None if same else f"{path}: {a!r} != {b!r}"
    for x, y, where in zip(a, b, paths, strict=True):
        found = first_difference(x, y, where)
        if found:
            return found
    return None
