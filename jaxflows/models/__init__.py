"""Model builders: multi-scale architectures assembled from `jaxflows.bijectors`, and the registry
of the layers they are built from."""

from jaxflows.models.dequantizer import VariationalDequantizer
from jaxflows.models.glow import glow
from jaxflows.models.multiscale import MultiScaleFlow
from jaxflows.models.registry import (
    CONVS,
    COUPLINGS,
    LayerRegistry,
    register_conv,
    register_coupling,
    transformer_coupling,
)

__all__ = [
    "CONVS",
    "COUPLINGS",
    "LayerRegistry",
    "MultiScaleFlow",
    "VariationalDequantizer",
    "glow",
    "register_conv",
    "register_coupling",
    "transformer_coupling",
]
