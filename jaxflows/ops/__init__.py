"""Array operations the layers are built from, each written once in its fastest formulation."""

from jaxflows.ops.conv import Conv, conv2d, matmul_conv, overlap_add, patches, same_padding, xla_conv

__all__ = ["Conv", "conv2d", "matmul_conv", "overlap_add", "patches", "same_padding", "xla_conv"]
