"""Analysis: per-layer log-det terms, their gradients, invertibility diagnostics, and the precision
of every product in a program lowered for an accelerator."""

from jaxflows.analysis.diagnostics import (
    LayerHealth,
    invertibility_report,
    jacobian_condition_numbers,
    reconstruction_errors,
)
from jaxflows.analysis.latent import attribute_direction, manipulate
from jaxflows.analysis.log_det import (
    BASE,
    UnknownLayerError,
    log_det_breakdown,
    log_det_grad_input,
    log_det_grad_params,
    log_det_saliency,
)
from jaxflows.analysis.ood import auroc, complexity_corrected, png_bits_per_dim
from jaxflows.analysis.precision import Product, lowered_products
from jaxflows.analysis.scores import bits_per_dim_per_example
from jaxflows.analysis.trace import LayerCall, layer_variables, leaves, trace_forward

__all__ = [
    "BASE",
    "LayerCall",
    "LayerHealth",
    "Product",
    "UnknownLayerError",
    "attribute_direction",
    "auroc",
    "bits_per_dim_per_example",
    "complexity_corrected",
    "invertibility_report",
    "jacobian_condition_numbers",
    "layer_variables",
    "leaves",
    "log_det_breakdown",
    "log_det_grad_input",
    "log_det_grad_params",
    "log_det_saliency",
    "lowered_products",
    "manipulate",
    "png_bits_per_dim",
    "reconstruction_errors",
    "trace_forward",
]
