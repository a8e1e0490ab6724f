"""Core: the bijector protocol, composition, the functional view, bases, flows and the objective."""

from jaxflows.core.backprop import GRADIENT_MODES, scan_unroll
from jaxflows.core.bijector import (
    Array,
    Bijector,
    Chain,
    Functional,
    Invert,
    functional,
    sum_except_batch,
)
from jaxflows.core.context import (
    ContextError,
    ContextShapeError,
    LabelRangeError,
    MissingContextError,
    UnexpectedContextError,
)
from jaxflows.core.distributions import DiagonalGaussian, StandardNormal, gaussian_log_prob
from jaxflows.core.errors import (
    FixedPointError,
    InputDtypeError,
    InvalidArgumentError,
    InvalidInputError,
    JaxflowsError,
    MissingRngError,
    ShapeError,
)
from jaxflows.core.flow import EventShapeError, Flow
from jaxflows.core.objective import bits_per_dim, dequantize, num_bins
from jaxflows.core.repeat import Repeat
from jaxflows.core.variables import (
    MissingCollectionError,
    UnusedVariablesError,
    VariablesMismatchError,
    check_variables,
)

__all__ = [
    "GRADIENT_MODES",
    "Array",
    "Bijector",
    "Chain",
    "ContextError",
    "ContextShapeError",
    "DiagonalGaussian",
    "EventShapeError",
    "FixedPointError",
    "Flow",
    "Functional",
    "InputDtypeError",
    "InvalidArgumentError",
    "InvalidInputError",
    "Invert",
    "JaxflowsError",
    "LabelRangeError",
    "MissingCollectionError",
    "MissingContextError",
    "MissingRngError",
    "Repeat",
    "ShapeError",
    "StandardNormal",
    "UnexpectedContextError",
    "UnusedVariablesError",
    "VariablesMismatchError",
    "bits_per_dim",
    "check_variables",
    "dequantize",
    "functional",
    "gaussian_log_prob",
    "num_bins",
    "scan_unroll",
    "sum_except_batch",
]
