"""Array operations the layers are built from, each written once in its fastest formulation."""

from jaxflows.ops.conv import Conv, conv2d, matmul_conv, overlap_add, patches, same_padding, xla_conv
from jaxflows.ops.lipschitz import (
    LOG_DET_RNG,
    SPECTRAL_NORM,
    LipschitzLinear,
    linear,
    operator_norm_estimate,
    power_iteration,
)
from jaxflows.ops.matmul import batched_matmul
from jaxflows.ops.precision import (
    BIJECTION_PRECISION,
    DEFAULT_NETWORK_PRECISION,
    NETWORK_PRECISIONS,
    NetworkPolicy,
    Precision,
    bijection_dtype,
    check_network_policy,
    network_dtype,
    network_policy,
    network_precision,
    network_scope,
)

__all__ = [
    "BIJECTION_PRECISION",
    "DEFAULT_NETWORK_PRECISION",
    "LOG_DET_RNG",
    "NETWORK_PRECISIONS",
    "SPECTRAL_NORM",
    "Conv",
    "LipschitzLinear",
    "NetworkPolicy",
    "Precision",
    "batched_matmul",
    "bijection_dtype",
    "check_network_policy",
    "conv2d",
    "linear",
    "matmul_conv",
    "network_dtype",
    "network_policy",
    "network_precision",
    "network_scope",
    "operator_norm_estimate",
    "overlap_add",
    "patches",
    "power_iteration",
    "same_padding",
    "xla_conv",
]
