"""Model builders: multi-scale architectures assembled from `jaxflows.bijectors`."""

from jaxflows.models.dequantizer import VariationalDequantizer
from jaxflows.models.glow import CONVS, COUPLINGS, glow, transformer_coupling
from jaxflows.models.multiscale import MultiScaleFlow

__all__ = ["CONVS", "COUPLINGS", "MultiScaleFlow", "VariationalDequantizer", "glow", "transformer_coupling"]
