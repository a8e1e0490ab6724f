"""Array operations the layers are built from, each written once in its fastest formulation."""

from jaxflows.ops.conv import Conv, conv2d, matmul_conv, overlap_add, patches, same_padding, xla_conv
from jaxflows.ops.matmul import batched_matmul

__all__ = [
    "Conv",
    "batched_matmul",
    "conv2d",
    "matmul_conv",
    "overlap_add",
    "patches",
    "same_padding",
    "xla_conv",
]
