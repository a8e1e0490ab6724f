"""Core: the bijector protocol, composition, the functional view, bases, flows and the objective."""

from jaxflows.core.bijector import (
    Array,
    Bijector,
    Chain,
    Functional,
    Invert,
    functional,
    sum_except_batch,
)
from jaxflows.core.distributions import DiagonalGaussian, StandardNormal, gaussian_log_prob
from jaxflows.core.flow import Flow
from jaxflows.core.objective import bits_per_dim, dequantize, num_bins

__all__ = [
    "Array",
    "Bijector",
    "Chain",
    "DiagonalGaussian",
    "Flow",
    "Functional",
    "Invert",
    "StandardNormal",
    "bits_per_dim",
    "dequantize",
    "functional",
    "gaussian_log_prob",
    "num_bins",
    "sum_except_batch",
]
