"""jaxflows: normalizing flows for image density estimation in JAX/Flax."""

from jaxflows import bijectors, core, models
from jaxflows.core import (
    Bijector,
    Chain,
    DiagonalGaussian,
    EventShapeError,
    Flow,
    Functional,
    Invert,
    Repeat,
    StandardNormal,
    bits_per_dim,
    dequantize,
    functional,
)
from jaxflows.core.errors import (
    InputDtypeError,
    InvalidArgumentError,
    InvalidInputError,
    JaxflowsError,
    ShapeError,
)

__all__ = [
    "Bijector",
    "Chain",
    "DiagonalGaussian",
    "EventShapeError",
    "Flow",
    "Functional",
    "InputDtypeError",
    "InvalidArgumentError",
    "InvalidInputError",
    "Invert",
    "JaxflowsError",
    "Repeat",
    "ShapeError",
    "StandardNormal",
    "bijectors",
    "bits_per_dim",
    "core",
    "dequantize",
    "functional",
    "models",
]
