"""The precision policy, in one place: exact bijections, networks as the user chooses.

On NVIDIA GPUs a float32 matmul or convolution runs by default in TF32 (a 10-bit mantissa), on TPUs
in one bfloat16 pass: a bijection whose matrices are applied that way is not inverted by its own
inverse (a Glow's reconstruction error grows from 1e-6 to 4.5e-3 on an H200). So:

- **The bijection's own maths** (1x1 convolutions and their inverses, emerging and periodic
  convolutions, the matrix-exponential series and squarings, Householder products, every product
  whose result must be undone exactly) names `BIJECTION_PRECISION`, `lax.Precision.HIGHEST`, on
  every branch `jaxflows.ops` lowers per platform, and runs in `bijection_dtype`: the promoted
  dtype of its inputs and parameters, at least float32 (float64 stays float64).
- **Conditioner networks** (coupling networks, split and top priors, the auxiliary classifier,
  context projections, the dequantizer's networks) follow a network policy: a compute dtype
  (`network_dtype`, None: the bijection's dtype; parameters stay in `param_dtype`) and a matmul
  precision (`network_precision`, one of `NETWORK_PRECISIONS`). They run inside `network_scope()`
  (a `jax.named_scope`, so profiles and lowered programs tell their ops from the bijection's), and
  their output is cast back to the bijection's dtype before it parameterises the
  map, so log-determinants and the objective stay float32 or wider.

A network's output is recomputed by the inverse in another compiled program; at reduced precision
the two programs may round differently, and that difference enters the reconstruction. Networks
therefore default to "highest" too; "default" (TF32 / one bf16 pass) and bfloat16 networks are
faster, opt-in choices (docs/precision.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import canonicalize_dtype
from jax import lax
from jax.typing import DTypeLike

from jaxflows.core.errors import InvalidArgumentError

Array = jax.Array
Precision = lax.Precision | None  # a dot's or convolution's `precision`; None: JAX's default

BIJECTION_PRECISION = lax.Precision.HIGHEST

# network_precision name -> the `precision` of the networks' dots and convolutions; "default" is
# JAX's global setting (jax_default_matmul_precision: TF32 on GPU, one bfloat16 pass on TPU).
NETWORK_PRECISIONS: Mapping[str, Precision] = {
    "highest": lax.Precision.HIGHEST,
    "high": lax.Precision.HIGH,
    "default": None,
}
DEFAULT_NETWORK_PRECISION = "highest"
NETWORK_SCOPE = "conditioner_network"


def bijection_dtype(dtype: DTypeLike | None, *arrays: Array | None) -> jnp.dtype:
    """The dtype of a bijection's own maths: `dtype` if given, else the promoted inexact dtype of
    `arrays` (Flax's convention), raised to at least float32."""
    return jnp.promote_types(canonicalize_dtype(*arrays, dtype=dtype), jnp.float32)


def network_dtype(network: DTypeLike | None, bijection: DTypeLike | None) -> jnp.dtype | None:
    """A network's compute dtype: `network` if given, else the bijection's (its `dtype` raised to
    float32; None when that is None: promoted from the network's input and parameters, as Flax does)."""
    if network is not None:
        try:
            floating = jnp.issubdtype(jnp.dtype(network), jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise InvalidArgumentError(
                f"network_dtype must be a floating dtype such as jnp.bfloat16, or None; got {network!r}"
            )
        return jnp.dtype(network)
    return None if bijection is None else bijection_dtype(bijection)


def network_precision(name: str) -> Precision:
    """The `precision` argument of a network's dots and convolutions for a `network_precision` name."""
    if name not in NETWORK_PRECISIONS:
        raise InvalidArgumentError(
            f"network_precision must be one of {sorted(NETWORK_PRECISIONS)}, got {name!r}"
        )
    return NETWORK_PRECISIONS[name]


def network_policy(layer: Any) -> dict[str, Any]:
    """`dtype` and `precision` of a layer's network modules, from the layer's `network_dtype`,
    `network_precision` and `dtype` fields (every layer with a network has the three)."""
    return {
        "dtype": network_dtype(layer.network_dtype, layer.dtype),
        "precision": network_precision(layer.network_precision),
    }


def check_network_policy(layer: Any) -> None:
    """Raise ValueError, naming what is expected, for an invalid network_dtype or network_precision
    (layers call it when constructed, before any trace)."""
    network_policy(layer)


class NetworkPolicy(nn.Module):
    """Base of every layer with a conditioner network: the map's `dtype` and `param_dtype` and the
    networks' `network_dtype` and `network_precision` (keyword-only fields, so a subclass's own
    fields keep their positions), the policy checked when the layer is constructed."""

    dtype: DTypeLike | None = dataclasses.field(default=None, kw_only=True)
    param_dtype: DTypeLike = dataclasses.field(default=jnp.float32, kw_only=True)
    network_dtype: DTypeLike | None = dataclasses.field(default=None, kw_only=True)
    network_precision: str = dataclasses.field(default=DEFAULT_NETWORK_PRECISION, kw_only=True)

    def __post_init__(self) -> None:
        check_network_policy(self)
        super().__post_init__()


def network_scope():
    """The named scope conditioner networks run in (visible in profiles and lowered programs)."""
    return jax.named_scope(NETWORK_SCOPE)
