"""jaxflows: normalizing flows for image density estimation in JAX/Flax."""

from jaxflows import bijectors, core, models
from jaxflows.core import (
    Bijector,
    Chain,
    DiagonalGaussian,
    Flow,
    Functional,
    Invert,
    Repeat,
    StandardNormal,
    bits_per_dim,
    dequantize,
    functional,
)
from jaxflows.core.errors import JaxflowsError

__all__ = [
    "Bijector",
    "Chain",
    "DiagonalGaussian",
    "Flow",
    "Functional",
    "Invert",
    "JaxflowsError",
    "Repeat",
    "StandardNormal",
    "bijectors",
    "bits_per_dim",
    "core",
    "dequantize",
    "functional",
    "models",
]
