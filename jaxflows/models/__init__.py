"""Model builders, each registered by name in `MODELS` (`register_model`): multi-scale image flows
assembled from `jaxflows.bijectors` ("glow"), flows on vectors ("coupling_flow", "planar_flow",
"sylvester_flow", "residual_flow"), continuous-time flows ("ffjord_flow"), and the registry of the
layers they are built from."""

from jaxflows.models.autoregressive import autoregressive_spline_flow, maf
from jaxflows.models.continuous import ffjord_flow
from jaxflows.models.dequantizer import VariationalDequantizer
from jaxflows.models.glow import glow
from jaxflows.models.jet import ShuffledCoupling, jet
from jaxflows.models.multiscale import MultiScaleFlow
from jaxflows.models.registry import (
    CONVS,
    COUPLINGS,
    MODELS,
    LayerRegistry,
    build_model,
    check_model_arguments,
    register_conv,
    register_coupling,
    register_model,
    transformer_coupling,
)
from jaxflows.models.tarflow import GaussianNoise, denoise, tarflow
from jaxflows.models.vector import coupling_flow, planar_flow, residual_flow, sylvester_flow

__all__ = [
    "CONVS",
    "COUPLINGS",
    "MODELS",
    "GaussianNoise",
    "LayerRegistry",
    "MultiScaleFlow",
    "ShuffledCoupling",
    "VariationalDequantizer",
    "autoregressive_spline_flow",
    "build_model",
    "check_model_arguments",
    "coupling_flow",
    "denoise",
    "ffjord_flow",
    "glow",
    "jet",
    "maf",
    "planar_flow",
    "register_conv",
    "register_coupling",
    "register_model",
    "residual_flow",
    "sylvester_flow",
    "tarflow",
    "transformer_coupling",
]
