"""Per-layer log-det terms of a flow and their gradients."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.analysis.trace import leaves, trace_forward
from jaxflows.core.bijector import Array, functional
from jaxflows.core.distributions import StandardNormal
from jaxflows.core.errors import JaxflowsError
from jaxflows.core.flow import Flow

BASE = "base"


class UnknownLayerError(JaxflowsError, KeyError):
    """No layer of the model has this path (the message lists the paths it has)."""


def _base_log_prob(model: nn.Module, variables: Any, z: Array) -> Array:
    if isinstance(model, Flow):
        return model.apply(variables, z, method=lambda m, v: m.base.log_prob(v))
    return StandardNormal().log_prob(z)


def log_det_breakdown(model: nn.Module, variables: Any, x: Array, context: Any = None) -> dict[str, Array]:
    """log|det J| of every layer, per example, keyed by path in call order, plus `"base"`.

    The values add up to `log_prob(x)` exactly (`log_prob(x, context)` for a conditional flow; for
    a bare bijector, its log-density under a standard normal base). Works under `jit` (which
    returns the dict with its keys sorted).
    """
    calls, z = trace_forward(model, variables, x, context)
    terms: dict[str, Array] = {}
    for call in leaves(calls):
        terms[call.path] = terms.get(call.path, 0.0) + call.log_det
    terms[BASE] = _base_log_prob(model, variables, z)
    return terms


def _term(model: nn.Module, variables: Any, x: Array, layer: str | None, context: Any) -> Array:
    """Σ over the batch of one layer's log-det (or the whole model's when `layer` is None)."""
    if layer is None:
        return functional(model, variables).log_det(x, context).sum()
    terms = log_det_breakdown(model, variables, x, context)
    if layer not in terms:
        raise UnknownLayerError(f"no layer {layer!r}; layers are {sorted(terms)}")
    return terms[layer].sum()


def log_det_grad_input(
    model: nn.Module, variables: Any, x: Array, layer: str | None = None, context: Any = None
) -> Array:
    """d log|det J| / dx for one layer's term (or the whole model), per example: shape of x."""
    return jax.grad(lambda a: _term(model, variables, a, layer, context))(x)


def log_det_grad_params(
    model: nn.Module, variables: Any, x: Array, layer: str | None = None, context: Any = None
) -> Any:
    """d (Σ_batch log|det J|) / d params for one layer's term (or the whole model), a tree shaped
    like `variables["params"]`.

    The total derivative with respect to every parameter of the model: a layer's term depends on its
    own parameters and, through its input, on those of the layers before it (their entries are
    non-zero unless the term does not depend on its input); the entries of later layers are zero.
    """
    rest = {k: v for k, v in variables.items() if k != "params"}
    return jax.grad(lambda p: _term(model, {"params": p, **rest}, x, layer, context))(variables["params"])


def log_det_saliency(
    model: nn.Module, variables: Any, x: Array, layer: str | None = None, context: Any = None
) -> Array:
    """|d log|det J| / dx| summed over channels: where in each image the log-det is most sensitive."""
    return jnp.abs(log_det_grad_input(model, variables, x, layer, context)).sum(axis=-1)
