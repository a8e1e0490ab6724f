"""The one registry of the layers `glow()` builds from: channel mixers (`CONVS`) and couplings
(`COUPLINGS`), each a name -> factory table with the label tables and plots print.

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
from jaxflows.core import Bijector
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
