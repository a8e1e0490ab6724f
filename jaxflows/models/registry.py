"""The one registry of model builders (`MODELS`: "glow", the vector flows, ...) and of the layers
`glow()` builds from: channel mixers (`CONVS`) and couplings (`COUPLINGS`), each a name -> factory
table with the label tables and plots print.

A model builder is called as builder(event_shape, **model_kwargs) and returns a `Flow`; its first
positional argument is the shape of one example (a tuple; vector builders also take an int d).
Training (`TrainConfig.model = {"name": ..., **kwargs}`), saving and loading
(`jaxflows.pretrained`) build every model by its registered name:

    register_model("my_flow", my_flow)   # my_flow(event_shape, *, ..., data_range=None) -> Flow

`glow(conv=..., coupling=...)`, the experiments and the benchmarks all read these two tables, so a
layer registered here (built-in or the user's) is usable everywhere by its name:

    register_conv("my_conv", MyConv)                         # factory(dtype=, param_dtype=, **conv_kwargs)
    register_coupling("my_law", transformer_coupling(MyLaw))  # a new element-wise law: one line

A conv factory is called as factory(dtype=, param_dtype=, **conv_kwargs) (only the fields a layer
class has are passed: a permutation has no dtype); a coupling factory as factory(hidden=, mask=,
parity=, dtype=, param_dtype=, network_dtype=, network_precision=, **coupling_kwargs).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from jaxflows.bijectors import (
    AdditiveCoupling,
    AffineCoupling,
    Conv1x1,
    Conv1x1LU,
    Conv1x1QR,
    Coupling,
    EmergingConv,
    MatrixExpConv1x1,
    MatrixExpCoupling,
    PeriodicConv,
    RationalQuadraticSpline,
    ReversePermutation,
    ShufflePermutation,
)
from jaxflows.core import Bijector, Flow
from jaxflows.core.errors import InvalidArgumentError

Factory = Callable[..., Bijector]


class LayerRegistry(dict[str, Factory]):
    """name -> factory of one kind of layer ("conv" or "coupling"), and each name's label."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.labels: dict[str, str] = {}

    def register(
        self, name: str, factory: Factory, *, label: str | None = None, replace: bool = False
    ) -> Factory:
        """Adds `factory` under `name` (label: the name shown in tables; default `name` with spaces
        for underscores). A name already taken is an error unless `replace`."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if not callable(factory):
            raise InvalidArgumentError(f"register_{self.kind}({name!r}, ...): the factory must be callable")
        if name in self and not replace:
            raise InvalidArgumentError(
                f"{self.kind} {name!r} is already registered; pass replace=True to replace it"
            )
        self[name] = factory
        self.labels[name] = label if label is not None else name.replace("_", " ")
        return factory

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self.labels.pop(name, None)

    def lookup(self, name: str) -> Factory:
        """The factory registered under `name`, or an error listing the registered names."""
        if name not in self:
            raise InvalidArgumentError(f"unknown {self.kind} {name!r}; expected one of {sorted(self)}")
        return self[name]

    def label(self, name: str) -> str:
        """The name tables and plots print for `name`."""
        self.lookup(name)
        return self.labels.get(name, name.replace("_", " "))


CONVS = LayerRegistry("conv")
COUPLINGS = LayerRegistry("coupling")
MODELS = LayerRegistry("model")

# Keyword arguments the training pipeline and the model loader pass to a builder that names them
# (never set in a config's `model`): the data's range, the network policy, the dequantizer.
PIPELINE_ARGUMENTS = frozenset({"data_range", "network_dtype", "network_precision", "dequantizer"})


def register_model(
    name: str, builder: Callable[..., Flow], *, label: str | None = None, replace: bool = False
) -> Callable[..., Flow]:
    """Registers a model builder under `name` for `TrainConfig.model={"name": name, ...}`,
    `jaxflows.pretrained.save/load` and the CLI: builder(event_shape, **kwargs) -> Flow."""
    return MODELS.register(name, builder, label=label, replace=replace)


def builder_arguments(name: str) -> frozenset[str]:
    """The named arguments of model `name`'s builder after the event shape."""
    parameters = list(inspect.signature(MODELS.lookup(name)).parameters.values())[1:]
    return frozenset(p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def _takes_any_keyword(builder: Callable[..., Flow]) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values())


def check_model_arguments(name: str, kwargs: dict[str, Any]) -> None:
    """Raise InvalidArgumentError naming the builder when `kwargs` has keys builder `name` does not
    take (or keys the pipeline sets itself: data range, network policy, dequantizer)."""
    builder = MODELS.lookup(name)
    pipeline = sorted(PIPELINE_ARGUMENTS & set(kwargs))
    if pipeline:
        raise InvalidArgumentError(
            f"model {name!r}: {pipeline} are set by the pipeline (the data's kind, the network policy, "
            "the dequantizer field), not in the model's keyword arguments"
        )
    if _takes_any_keyword(builder):
        return
    known = builder_arguments(name) - PIPELINE_ARGUMENTS
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InvalidArgumentError(
            f"model {name!r} ({builder.__module__}.{builder.__qualname__}) takes no argument(s) "
            f"{unknown}; it takes {sorted(known)}"
        )


def build_model(name: str, event_shape: tuple[int, ...], kwargs: dict[str, Any], **pipeline: Any) -> Flow:
    """Model `name` for examples of `event_shape` with `kwargs`, plus the `pipeline` arguments
    (data_range, network_dtype, network_precision, dequantizer) its builder names; a pipeline
    argument it does not take must be None or its default (else InvalidArgumentError)."""
    check_model_arguments(name, kwargs)
    builder = MODELS.lookup(name)
    parameters = inspect.signature(builder).parameters
    passed = {}
    for key, value in pipeline.items():
        if key in parameters or _takes_any_keyword(builder):
            passed[key] = value
        elif value is not None and key not in ("network_dtype", "network_precision"):
            raise InvalidArgumentError(f"model {name!r} takes no {key!r}, but this run needs {key}={value!r}")
    flow = builder(tuple(event_shape), **kwargs, **passed)
    if not isinstance(flow, Flow):
        raise InvalidArgumentError(f"model {name!r}: the builder returned {type(flow).__name__}, not a Flow")
    return flow


def register_conv(name: str, factory: Factory, *, label: str | None = None, replace: bool = False) -> Factory:
    """Registers a channel mixer for `glow(conv=name)`: factory(dtype=, param_dtype=, **conv_kwargs)."""
    return CONVS.register(name, factory, label=label, replace=replace)


def register_coupling(
    name: str, factory: Factory, *, label: str | None = None, replace: bool = False
) -> Factory:
    """Registers a coupling for `glow(coupling=name)`: factory(hidden=, mask=, parity=, dtype=,
    param_dtype=, network_dtype=, network_precision=, **coupling_kwargs). A new element-wise law is
    `register_coupling(name, transformer_coupling(TransformerClass))`."""
    return COUPLINGS.register(name, factory, label=label, replace=replace)


def transformer_coupling(transformer_class: type) -> Factory:
    """A coupling factory for a transformer dataclass: keyword arguments naming its fields build the
    transformer (e.g. `coupling_kwargs={"bins": 8}`), the others go to `Coupling`."""
    names = {field.name for field in dataclasses.fields(transformer_class)}

    def make(**kwargs: Any) -> Coupling:
        own = {key: kwargs.pop(key) for key in list(kwargs) if key in names}
        return Coupling(transformer=transformer_class(**own), **kwargs)

    return make


register_conv("plain", Conv1x1)
register_conv("lu", Conv1x1LU, label="LU")
register_conv("qr", Conv1x1QR, label="QR")
register_conv("emerging", EmergingConv)  # conv_kwargs: kernel_size (3), inverse_method ("pixels" | "rows")
register_conv("periodic", PeriodicConv)  # conv_kwargs: kernel_size (3)
register_conv("matrix_exp", MatrixExpConv1x1)
register_conv("reverse", ReversePermutation)  # fixed permutations (Glow Fig. 3): no parameters, log-det 0
register_conv("shuffle", ShufflePermutation)

register_coupling("affine", AffineCoupling)
register_coupling("additive", AdditiveCoupling)
register_coupling("matrix_exp", MatrixExpCoupling)  # channel mask only; rejects mask="checkerboard"
register_coupling("spline", transformer_coupling(RationalQuadraticSpline))  # coupling_kwargs: bins, bound
