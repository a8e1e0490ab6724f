"""Invertibility diagnostics: per-layer reconstruction error and jacobian conditioning."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.analysis.trace import leaves, trace_forward
from jaxflows.core.bijector import Array
from jaxflows.core.errors import ShapeError


def reconstruction_errors(
    model: nn.Module, variables: Any, x: Array, context: Any = None
) -> dict[str, Array]:
    """max |inverse(forward(h)) − h| per example for every layer, at the input it sees from x.

    Computed in x's dtype (float32 for a trained model): the numbers say which layer loses
    invertibility in the precision the model runs in.
    """
    calls, _ = trace_forward(model, variables, x, context)
    errors = {}
    for call in leaves(calls):
        back, _ = call.module.apply(call.variables, call.outputs, call.context, method="inverse")
        diff = jnp.abs(back - call.inputs).reshape(back.shape[0], -1)
        errors[call.path] = jnp.max(diff, axis=-1)
    return errors


def jacobian_condition_numbers(
    model: nn.Module, variables: Any, x: Array, context: Any = None
) -> dict[str, Array]:
    """σ_max / σ_min of each layer's dense jacobian at the input it sees from one example.

    The jacobian is D×D for D = h·w·c of the layer's input: use small images.
    """
    if x.shape[0] != 1:
        raise ShapeError(f"expected a single example (batch of 1), got batch {x.shape[0]}")
    calls, _ = trace_forward(model, variables, x, context)
    conditions = {}
    for call in leaves(calls):
        shape = call.inputs.shape

        def flat(v, module=call.module, layer_vars=call.variables, shape=shape, c=call.context):
            return module.apply(layer_vars, v.reshape(shape), c, method="forward")[0].reshape(-1)

        singular = jnp.linalg.svd(jax.jacfwd(flat)(call.inputs.reshape(-1)), compute_uv=False)
        conditions[call.path] = singular[0] / singular[-1]
    return conditions


@dataclasses.dataclass(frozen=True)
class LayerHealth:
    path: str
    reconstruction_error: float  # max over the batch
    condition_number: float | None  # None when not computed (input too large)
    flagged: bool


def invertibility_report(
    model: nn.Module,
    variables: Any,
    x: Array,
    max_error: float = 1e-3,
    max_condition: float = 1e3,
    max_jacobian_dims: int = 1024,
    context: Any = None,
    bins: int | None = 256,
) -> list[LayerHealth]:
    """Per-layer health, in call order; a layer is flagged when either threshold is exceeded.

    Reconstruction errors are those of the precision the model runs in on the default backend
    (its network policy and the platform's matmul defaults; `jaxflows.ops.precision`). With `bins`
    intensity levels (None: no check), a layer whose error exceeds half a level (0.5 / bins on
    the [0, 1) scale of dequantised images) is also reported with a `UserWarning`: there the
    inverse no longer recovers the pixels. Condition numbers are computed on the first example
    where the layer's input has at most `max_jacobian_dims` entries.
    """
    errors = reconstruction_errors(model, variables, x, context)
    small = x[:1].size <= max_jacobian_dims
    first = None if context is None else context[:1]
    conditions = jacobian_condition_numbers(model, variables, x[:1], first) if small else {}
    report = []
    for path, err in errors.items():
        worst = float(jnp.max(err))
        cond = float(conditions[path]) if path in conditions else None
        flagged = worst > max_error or (cond is not None and not cond <= max_condition)
        report.append(LayerHealth(path, worst, cond, flagged))
        if bins is not None and not worst <= 0.5 / bins:
            warnings.warn(
                f"{path}: reconstruction error {worst:.2e} exceeds half an intensity level "
                f"({0.5 / bins:.2e} for {bins} levels) in the precision this model runs in on "
                f"{jax.default_backend()}",
                stacklevel=2,
            )
    return report
