"""A vision-transformer conditioner for couplings (Jet, Kolesnikov et al. 2024, Sec 3; ViT,
Dosovitskiy et al. 2021).

The coupling's conditioning part x_b, an NHWC grid of patch tokens (batch, H/p, W/p, C·p²), is
read as a sequence of (H/p)·(W/p) tokens, one per grid position:

    e = x_b W_in + b_in + P                    (P: learned position embeddings, N(0, 1/width))
    e ← e + W_c c                              (a context c, zero-initialised; absent without one)
    e ← e + MHA(LN(e)),  e ← e + MLP(LN(e))    (`depth` pre-LN blocks, GELU MLP)
    h = LN(e) W_out + b_out                    (W_out, b_out zero at init: the coupling starts as
                                                the identity)

and h goes back to the grid, `out_channels` values per token: the transformer's parameters for
every value of the token. The module is a `Coupling(conditioner=...)` network, so it runs under
the coupling's network policy (`dtype`, `precision`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.core.bijector import Array
from jaxflows.core.context import add_context
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_count
from jaxflows.ops import Precision

_XAVIER = nn.initializers.xavier_uniform()
_TINY_BIAS = nn.initializers.normal(stddev=1e-6)  # big_vision's MlpBlock bias init


class ViTBlock(nn.Module):
    """One pre-LN transformer encoder block (ViT, Dosovitskiy et al. 2021, Eq. 2-3):
    e ← e + MHA(LN(e)), then e ← e + MLP(LN(e)) with MLP = Dense(mlp_dim), GELU, Dense(width).

    Attributes:
      heads: attention heads (width must be a multiple).
      mlp_dim: hidden units of the MLP.
      dtype, param_dtype, precision: the network policy (`jaxflows.ops.precision`).
    """

    heads: int
    mlp_dim: int
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: Precision = None

    @nn.compact
    def __call__(self, e: Array) -> Array:
        width = e.shape[-1]
        norm = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dense = dict(**norm, precision=self.precision, kernel_init=_XAVIER)
        u = nn.LayerNorm(name="norm_attention", **norm)(e)
        attention = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, deterministic=True, name="attention", **dense
        )
        e = e + attention(u, u)
        u = nn.LayerNorm(name="norm_mlp", **norm)(e)
        u = nn.gelu(nn.Dense(self.mlp_dim, bias_init=_TINY_BIAS, name="mlp_in", **dense)(u))
        return e + nn.Dense(width, bias_init=_TINY_BIAS, name="mlp_out", **dense)(u)


class ViTConditioner(nn.Module):
    """Jet's coupling network (Kolesnikov et al. 2024; big_vision's `DNN`): a ViT over the patch
    tokens of the conditioning part, with a zero-initialised head giving `out_channels` values per
    token (see the module doc for the equations).

    Use as `Coupling(conditioner=functools.partial(ViTConditioner, width=256, depth=2, heads=4))`
    with any element-wise transformer and mask; the coupling passes `out_channels` and the network
    policy. Takes NHWC grids (batch, h, w, c), tokens in row-major order; a context (batch, d) is
    added to every token's embedding through a zero-initialised projection
    (`jaxflows.core.context.add_context`; Jet cross-attends to a context sequence instead).

    Attributes:
      out_channels: values of h per token (the coupling's `num_params`).
      width: the embedding width (Jet's emb_dim, 256 by default as its `DNN`).
      depth: transformer blocks (Jet's block_depth).
      heads: attention heads; width must be a multiple of it.
      mlp_dim: hidden units of each block's MLP (None: 4·width, as ViT).
      dtype: computation dtype (None: promoted from the input and parameters).
      param_dtype: dtype of the parameters at init.
      precision: of every matmul (None: JAX's default).
    """

    out_channels: int
    width: int = 256
    depth: int = 1
    heads: int = 4
    mlp_dim: int | None = None
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: Precision = None

    def __post_init__(self) -> None:
        for name in ("out_channels", "width", "depth", "heads"):
            check_count(getattr(self, name), name, "ViTConditioner")
        if self.mlp_dim is not None:
            check_count(self.mlp_dim, "mlp_dim", "ViTConditioner")
        if self.width % self.heads:
            raise InvalidArgumentError(
                "ViTConditioner: width must be a multiple of heads, got "
                f"width={self.width}, heads={self.heads}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None) -> Array:
        if x.ndim != 4:
            raise ShapeError(
                f"ViTConditioner reads a grid of patch tokens (batch, height, width, values), got shape "
                f"{x.shape}; patchify images first (jaxflows.bijectors.Patchify)"
            )
        batch, rows, cols, _ = x.shape
        policy = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        e = nn.Dense(self.width, name="embed", **policy)(x)
        position = self.param(
            "position",
            nn.initializers.normal(stddev=self.width**-0.5),
            (rows, cols, self.width),
            self.param_dtype,
        )
        e = add_context(self, e + position.astype(e.dtype), x, context, self.dtype, self.precision)
        e = e.reshape(batch, rows * cols, self.width)
        mlp_dim = self.mlp_dim or 4 * self.width
        for i in range(self.depth):
            e = ViTBlock(self.heads, mlp_dim, name=f"block_{i}", **policy)(e)
        e = nn.LayerNorm(name="norm", dtype=self.dtype, param_dtype=self.param_dtype)(e)
        head = nn.Dense(self.out_channels, kernel_init=nn.initializers.zeros, name="head", **policy)
        return head(e).reshape(batch, rows, cols, self.out_channels)
