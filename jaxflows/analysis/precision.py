"""Which products a program runs at which precision, as lowered for a GPU or TPU from any machine.

A CPU computes float32 products exactly whatever their `precision`, so a precision bug cannot be
seen by running on a CPU; it can be seen in the program JAX would hand to the accelerator.
`lowered_products` lowers a function for a platform (no such device needed), under a global
default precision that exposes every product that does not name its own (default: "bfloat16", a
TPU's single pass), and lists each matrix product and convolution with its precision, operand
dtypes and named scope. The bijection's own maths must show HIGHEST; conditioner networks run
inside `jaxflows.ops.network_scope()` and show their network policy (`jaxflows.ops.precision`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from jaxflows.ops.precision import NETWORK_SCOPE

PRODUCT_OPS = ("stablehlo.dot_general", "stablehlo.convolution")
_PRECISION = re.compile(r"(DEFAULT|HIGHEST|HIGH)")
_ELEMENT_TYPE = re.compile(r"^tensor<(?:[0-9?]+x)*(.+)>$")
_SCOPE = re.compile(r'^loc\("([^"]*)"')


class Product(NamedTuple):
    """One dot_general or convolution of a lowered program.

    Attributes:
      op: "dot_general" or "convolution".
      precision: the operands' precisions, e.g. ("HIGHEST", "HIGHEST"); ("DEFAULT", "DEFAULT")
        when the op names none.
      dtypes: the operands' element types, e.g. ("f32", "f32") or ("bf16", "bf16").
      scope: the op's name-stack path (Flax module methods and `jax.named_scope`s, '/'-separated).
    """

    op: str
    precision: tuple[str, ...]
    dtypes: tuple[str, ...]
    scope: str

    @property
    def in_network(self) -> bool:
        """Whether the op belongs to a conditioner network (inside `network_scope()`)."""
        return NETWORK_SCOPE in self.scope.split("/")


def _operations(op: Any):
    for region in op.regions:
        for block in region.blocks:
            for inner in block.operations:
                yield inner
                yield from _operations(inner)


def lowered_products(
    fn: Callable, *args: Any, platform: str = "cuda", default_precision: str = "bfloat16"
) -> list[Product]:
    """Every dot_general and convolution of `jax.jit(fn)(*args)` lowered for `platform` ("cpu",
    "cuda", "rocm" or "tpu"), traced under `jax.default_matmul_precision(default_precision)`."""
    with jax.default_matmul_precision(default_precision):
        lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))
    module = lowered.compiler_ir("stablehlo")
    products = []
    for op in _operations(module.operation):
        if op.name not in PRODUCT_OPS:
            continue
        attributes = op.attributes
        name = "precision_config" if "precision_config" in attributes else "precision"
        config = str(attributes[name]) if name in attributes else ""
        precision = tuple(_PRECISION.findall(config)) or ("DEFAULT", "DEFAULT")
        dtypes = tuple(_ELEMENT_TYPE.match(str(operand.type)).group(1) for operand in op.operands)
        scope = _SCOPE.match(str(op.location))
        products.append(Product(op.name.split(".")[1], precision, dtypes, scope.group(1) if scope else ""))
    return products
