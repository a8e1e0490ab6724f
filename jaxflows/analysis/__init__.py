"""Analysis: per-layer log-det terms, their gradients, and invertibility diagnostics."""

from jaxflows.analysis.diagnostics import (
    LayerHealth,
    invertibility_report,
    jacobian_condition_numbers,
    reconstruction_errors,
)
from jaxflows.analysis.log_det import (
    BASE,
    log_det_breakdown,
    log_det_grad_input,
    log_det_grad_params,
    log_det_saliency,
)
from jaxflows.analysis.trace import LayerCall, layer_variables, leaves, trace_forward

__all__ = [
    "BASE",
    "LayerCall",
    "LayerHealth",
    "invertibility_report",
    "jacobian_condition_numbers",
    "layer_variables",
    "leaves",
    "log_det_breakdown",
    "log_det_grad_input",
    "log_det_grad_params",
    "log_det_saliency",
    "reconstruction_errors",
    "trace_forward",
]
