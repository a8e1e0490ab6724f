"""Record every bijector call inside a model's forward pass, by variable path.

Layers that run their steps as pure functions (a `Repeat`'s `lax.scan`, a `Chain` with
gradient="remat" or "invertible") are expanded step by step instead, so every step is recorded
like an ordinary layer: step k of the `Repeat` at `level1/flow_steps` is `level1/flow_steps/k`, and its
variables are the k-th slice of the stacked ones (`layer_variables` reads either form).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxflows.core.bijector import Array, Bijector, Chain
from jaxflows.core.flow import Flow
from jaxflows.core.repeat import Repeat, select


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One `forward` call: the layer (unbound), its variables, input, output and log-det, and the
    context it received (None for an unconditional model; the flow's one-hot labels or context
    array inside a conditional one)."""

    path: str  # "level1/flow_steps/2/coupling", relative to the model's bijector; "" is the whole model
    module: Bijector
    variables: Any
    inputs: Array
    outputs: Array
    log_det: Array
    context: Array | None = None


def _root(model: nn.Module) -> tuple[str, ...]:
    return ("bijector",) if isinstance(model, Flow) else ()


def _runs_steps_functionally(module: nn.Module) -> bool:
    return isinstance(module, Repeat) or (isinstance(module, Chain) and module.gradient != "standard")


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _context_argument(args: tuple, kwargs: dict) -> Any:
    return args[1] if len(args) > 1 else kwargs.get("context")


def _trace(model: nn.Module, variables: Any, x: Array, context: Any, root: tuple[str, ...], prefix: str):
    calls: list[LayerCall | None] = []
    expanding = False  # inside an expansion the nested trace records the calls

    def interceptor(next_fun, args, kwargs, context):
        nonlocal expanding
        module = context.module
        if module.scope is None:  # an unbound copy (e.g. a clone validating its fields): not a layer call
            return next_fun(*args, **kwargs)
        path = tuple(module.path)
        if (
            expanding
            or context.method_name != "forward"
            or not isinstance(module, Bijector)
            or path[: len(root)] != root
        ):
            return next_fun(*args, **kwargs)
        index = len(calls)
        calls.append(None)  # reserve the slot so calls are listed in the order they start
        name = _join(prefix, "/".join(path[len(root) :]))
        layer_context = _context_argument(args, kwargs)
        if _runs_steps_functionally(module):
            expanding = True
            try:
                h, total = args[0], jnp.zeros(args[0].shape[0], args[0].dtype)
                for step_name, layer, step_vars in module.unrolled_steps():
                    sub_calls, (h, log_det) = _trace(
                        layer, step_vars, h, layer_context, (), _join(name, step_name)
                    )
                    calls.extend(sub_calls)
                    total = total + log_det
                out = (h, total)
            finally:
                expanding = False
        else:
            out = next_fun(*args, **kwargs)
        own = {c: v for c, v in module.variables.items()} if module.scope is not None else {}
        calls[index] = LayerCall(name, module.clone(parent=None), own, args[0], out[0], out[1], layer_context)
        return out

    with nn.intercept_methods(interceptor):
        out = model.apply(variables, x, context, method="forward")
    return [c for c in calls if c is not None], out


def trace_forward(
    model: nn.Module, variables: Any, x: Array, context: Any = None
) -> tuple[list[LayerCall], Array]:
    """Run `model.forward(x, context)`, recording each bijector's forward call in call order.

    Returns the calls and the model's output (the latent). Works under `jit`, where the records
    hold tracers. Paths are relative to a `Flow`'s bijector: a Glow's layers read
    `level1/flow_steps/0/actnorm` (step 0 of level 1's repeated steps).
    """
    calls, (z, _) = _trace(model, variables, x, context, _root(model), "")
    return calls, z


def leaves(calls: list[LayerCall]) -> list[LayerCall]:
    """The calls with no recorded bijector call inside them: the layers whose log-dets add up."""
    paths = [c.path for c in calls]

    def inside(p: str, parent: str) -> bool:
        return p != parent and (parent == "" or p.startswith(parent + "/"))

    return [c for c in calls if not any(inside(p, c.path) for p in paths)]


def layer_variables(model: nn.Module, variables: Any, path: str) -> dict[str, Any]:
    """The variables of the layer at `path` (as named by `trace_forward`), per collection.

    A numeric segment k where the variables have no key k selects step k of stacked variables
    (a `Repeat`): `level1/flow_steps/2/coupling` is slice 2 of `level1/flow_steps/coupling`.
    """
    keys = [*_root(model), *(path.split("/") if path else [])]
    out = {}
    for collection, tree in variables.items():
        node = tree
        for key in keys:
            if not hasattr(node, "get"):
                node = None
            elif key in node:
                node = node[key]
            elif key.isdigit():
                node = select(node, int(key))
            else:
                node = None
            if node is None:
                break
        if node is not None:
            out[collection] = node
    return out
