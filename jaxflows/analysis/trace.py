"""Record every bijector call inside a model's forward pass, by variable path."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.flow import Flow


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One `forward` call: the layer (unbound), its input, output and log-det."""

    path: str  # "level1/step3/coupling", relative to the model's bijector; "" is the whole model
    module: Bijector
    inputs: Array
    outputs: Array
    log_det: Array


def _root(model: nn.Module) -> tuple[str, ...]:
    return ("bijector",) if isinstance(model, Flow) else ()


def trace_forward(model: nn.Module, variables: Any, x: Array) -> tuple[list[LayerCall], Array]:
    """Run `model.forward(x)`, recording each bijector's forward call in call order.

    Returns the calls and the model's output (the latent). Works under `jit`, where the records
    hold tracers. Paths are relative to a `Flow`'s bijector: a Glow's layers read
    `level1/step1/actnorm`.
    """
    root = _root(model)
    calls: list[LayerCall | None] = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        path = tuple(module.path)
        if context.method_name != "forward" or not isinstance(module, Bijector) or path[: len(root)] != root:
            return next_fun(*args, **kwargs)
        index = len(calls)
        calls.append(None)  # reserve the slot so calls are listed in the order they start
        out = next_fun(*args, **kwargs)
        name = "/".join(path[len(root) :])
        calls[index] = LayerCall(name, module.clone(parent=None), args[0], out[0], out[1])
        return out

    with nn.intercept_methods(interceptor):
        z, _ = model.apply(variables, x, method="forward")
    return [c for c in calls if c is not None], z


def leaves(calls: list[LayerCall]) -> list[LayerCall]:
    """The calls with no recorded bijector call inside them: the layers whose log-dets add up."""
    paths = [c.path for c in calls]

    def inside(p: str, parent: str) -> bool:
        return p != parent and (parent == "" or p.startswith(parent + "/"))

    return [c for c in calls if not any(inside(p, c.path) for p in paths)]


def layer_variables(model: nn.Module, variables: Any, path: str) -> dict[str, Any]:
    """The variables of the layer at `path` (as named by `trace_forward`), per collection."""
    keys = [*_root(model), *(path.split("/") if path else [])]
    out = {}
    for collection, tree in variables.items():
        node = tree
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        if node is not None:
            out[collection] = node
    return out
