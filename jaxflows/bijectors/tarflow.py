"""TarFlow's conditioner (Zhai et al. 2024, "Normalizing Flows are Capable Generative Models", Sec. 3):
a causal pre-LN transformer over the tokens of an image, plugged into `MaskedAutoregressive`.

A TarFlow block is `MaskedAutoregressive(AffineTransformer(scale="exp"), CausalTransformer(...))`:
the layer's maths (z = (x − μ)·exp(−α), log_det = −Σ α, the sequential inverse) with this network
giving each token's (μ, α). In the block's order (tokens as they are, or reversed), with x_j the
j-th token in that order:

    e_j = x_j W_in + b_in + P_j (+ E c)         (P: learned position embeddings; E c: the class
                                                 embedding of a one-hot label c, or of any context)
    e ← e + Attn(LN(e)),  e ← e + MLP(LN(e))    (`depth` pre-LN layers, causal: j attends to ≤ j)
    g_j = LN(e_j) W_out + b_out                 (W_out, b_out zero at init: the identity)
    (μ_j, α_j) = g_{j−1} for j ≥ 1,  (μ_0, α_0) = 0

The shift by one token (Eq. 4) makes token j depend only on tokens before it; without it a token
would see itself. Every token has one degree, shared by its C values (tied degrees).

Sampling inverts token by token. The incremental protocol of `MaskedAutoregressive` keeps each
layer's keys and values in a cache of N slots: pass t (t = 1 … N − 1) embeds token t − 1, now
exact, writes its key and value at slot t − 1, attends over slots ≤ t − 1 and returns token t's
(μ, α); pass 0 skips the network (token 0 is the identity). The cache never holds the token being
decoded, and the result equals the naive inverse that reruns the network on the whole prefix.

Classifier-free guidance (Ho & Salimans 2022; TarFlow Sec. 3.3) acts on the predicted parameters:
h ← h + w (h − h_u), h = (μ, α), where h_u comes from an unconditional pass with its own cache: the
mean class embedding (a context of uniform class weights 1/K) and attention logits divided by
`attention_temperature`; an unconditional model's h_u is its attention-temperature pass alone.
Guidance changes the map: the guided layer is still autoregressive and invertible (its forward
inverts its guided sampling), but it is not the density model, which has `guidance = 0`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jaxflows.bijectors.patchify import patchify, unpatchify
from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.context import MissingContextError, check_context
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_count
from jaxflows.ops import Precision

TOKEN_ORDERS = ("natural", "reversed")
_EMBEDDING_INIT = nn.initializers.normal(stddev=0.02)


def accumulated(dtype: DTypeLike) -> jnp.dtype:
    """The dtype a network's products accumulate and return in: its compute dtype, at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def causal_attention(
    q: Array, k: Array, v: Array, allowed: Array, temperature: float, dtype: DTypeLike, precision: Precision
) -> Array:
    """softmax(q kᵀ / (√D·τ) + mask) v per head: q (b, t, h, D), k and v (b, s, h, D), `allowed`
    (t, s) booleans. Operands in the network's `dtype`, products accumulated and the softmax taken
    in at least float32 (masked logits are −∞: they weigh exactly 0)."""
    out = accumulated(dtype)
    scale = 1.0 / (math.sqrt(q.shape[-1]) * temperature)
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    logits = jnp.einsum("bthd,bshd->bhts", q, k, precision=precision, preferred_element_type=out) * scale
    weights = jax.nn.softmax(jnp.where(allowed, logits, -jnp.inf), axis=-1).astype(dtype)
    return jnp.einsum("bhts,bshd->bthd", weights, v, precision=precision, preferred_element_type=out)


class MixedDense(nn.Module):
    """y = x W + b (`flax.linen.Dense`'s parameters): the product's operands in the network dtype
    (e.g. bfloat16), accumulated and returned in at least float32, so the residual stream keeps
    float32 and the one-token steps of sampling round as the whole-sequence pass does.

    Attributes:
      features: output units; use_bias: whether to add b.
      kernel_init: W's initialiser (b starts at zero).
      dtype: the operands' dtype (None: promoted from x and W); param_dtype, precision: as Dense's.
    """

    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: Precision = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        dtype = self.dtype if self.dtype is not None else jnp.result_type(x.dtype, kernel.dtype)
        out = accumulated(dtype)
        y = jnp.matmul(
            x.astype(dtype), kernel.astype(dtype), precision=self.precision, preferred_element_type=out
        )
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(out)
        return y


class CausalBlock(nn.Module):
    """One pre-LN transformer layer with causal self-attention (GPT-2's layout, TarFlow's
    `AttentionBlock`): e ← e + Attn(LN(e)), e ← e + MLP(LN(e)), MLP = Dense(mlp_ratio·width), GELU,
    Dense(width). `__call__` runs a whole sequence; `step` one token against a key/value cache.

    Attributes:
      width: the embedding width; heads: attention heads (width a multiple of it).
      mlp_ratio: the MLP's expansion.
      dtype, param_dtype, precision: the network policy.
    """

    width: int
    heads: int
    mlp_ratio: int = 4
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: Precision = None

    def setup(self) -> None:
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        self.norm_attention = nn.LayerNorm(param_dtype=self.param_dtype)  # in the stream's dtype
        self.qkv = MixedDense(3 * self.width, **dense)
        self.attention_out = MixedDense(self.width, **dense)
        self.norm_mlp = nn.LayerNorm(param_dtype=self.param_dtype)
        self.mlp_in = MixedDense(self.mlp_ratio * self.width, **dense)
        self.mlp_out = MixedDense(self.width, **dense)

    def operands(self, e: Array) -> jnp.dtype:
        """The products' operand dtype: the network dtype, or promoted from e and the parameters."""
        return jnp.dtype(self.dtype) if self.dtype is not None else jnp.result_type(e.dtype, self.param_dtype)

    def queries_keys_values(self, e: Array) -> tuple[Array, Array, Array]:
        """q, k, v of LN(e), each (batch, tokens, heads, width / heads)."""
        qkv = self.qkv(self.norm_attention(e))
        qkv = qkv.reshape(*e.shape[:2], 3, self.heads, self.width // self.heads)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def finish(self, e: Array, attended: Array) -> Array:
        """e + the attention's output projection, then the MLP's residual update."""
        e = e + self.attention_out(attended.reshape(*e.shape[:2], self.width))
        return e + self.mlp_out(nn.gelu(self.mlp_in(self.norm_mlp(e))))

    def __call__(self, e: Array, temperature: float = 1.0) -> Array:
        q, k, v = self.queries_keys_values(e)
        tokens = e.shape[1]
        causal = jnp.tril(jnp.ones((tokens, tokens), bool))
        return self.finish(
            e, causal_attention(q, k, v, causal, temperature, self.operands(e), self.precision)
        )

    def step(
        self, e: Array, keys: Array, values: Array, slot: Array, temperature: float = 1.0
    ) -> tuple[Array, Array, Array]:
        """One token e (batch, 1, width) at position `slot`: its key and value are written to the
        caches (batch, N, heads, D) at `slot`, and it attends to slots ≤ `slot`."""
        q, k, v = self.queries_keys_values(e)
        keys = jax.lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), slot, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), slot, axis=1)
        allowed = (jnp.arange(keys.shape[1]) <= slot)[None, :]
        attended = causal_attention(q, keys, values, allowed, temperature, keys.dtype, self.precision)
        return self.finish(e, attended), keys, values


class PositionEmbedding(nn.Module):
    """A learned (tokens, width) table P, N(0, 0.02²) at init, its size fixed by the first call."""

    width: int
    param_dtype: DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, tokens: int) -> Array:
        table = self.param("table", _EMBEDDING_INIT, (tokens, self.width), self.param_dtype)
        if table.shape[0] != tokens:
            raise ShapeError(f"CausalTransformer was initialised for {table.shape[0]} tokens, got {tokens}")
        return table


class OutputHead(nn.Module):
    """g = e W + b, `features` outputs (fixed by the first call), W and b zero at init (so a
    TarFlow block starts as the identity)."""

    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: Precision = None

    @nn.compact
    def __call__(self, e: Array, features: int) -> Array:
        dense = MixedDense(
            features,
            kernel_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            name="dense",
        )
        return dense(e)


def as_tokens(x: Array) -> Array:
    """(batch, N, C) tokens as they are; (batch, d) vectors as d tokens of one value."""
    if x.ndim == 2:
        return x[..., None]
    if x.ndim == 3:
        return x
    raise ShapeError(f"CausalTransformer: expected tokens (batch, N, C) or vectors (batch, d), got {x.shape}")


class CausalTransformer(nn.Module):
    """TarFlow's network (Zhai et al. 2024, Sec. 3; see the module doc): a causal pre-LN transformer
    whose zero-initialised head, shifted by one token, gives each token the transformer's
    parameters from the tokens before it. The conditioner of `MaskedAutoregressive`, with the
    incremental protocol (a key/value cache) for its sequential inverse.

    Use as `MaskedAutoregressive(AffineTransformer(scale="exp"), CausalTransformer(width=64))` on
    tokens (batch, N, C) (vectors (batch, d) are d tokens of one value); the layer sets
    `outputs_per_entry` and the network policy. A context (batch, e) (one-hot labels from a
    class-conditional `Flow`) is embedded by a bias-free projection (the class embedding) added to
    every token.

    Attributes:
      outputs_per_entry: k, the transformer's values per token value (2 for the affine law).
      width: the embedding width.
      depth: transformer layers (TarFlow's layers_per_block).
      heads: attention heads; width must be a multiple of it.
      mlp_ratio: each layer's MLP expansion.
      order: "natural" (token j has degree j + 1) or "reversed" (degree N − j): TarFlow's blocks
        alternate the two (its identity / flip permutations).
      guidance: w of classifier-free guidance (0: the density model; see the module doc).
      attention_temperature: τ of the unconditional pass that guidance uses.
      dtype, param_dtype, precision: the network policy (set by the layer).
    """

    outputs_per_entry: int = 2
    width: int = 64
    depth: int = 1
    heads: int = 4
    mlp_ratio: int = 4
    order: str = "natural"
    guidance: float = 0.0
    attention_temperature: float = 1.0
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: Precision = None

    def __post_init__(self) -> None:
        for name in ("outputs_per_entry", "width", "depth", "heads", "mlp_ratio"):
            check_count(getattr(self, name), name, "CausalTransformer")
        if self.width % self.heads:
            raise InvalidArgumentError(
                "CausalTransformer: width must be a multiple of heads, got "
                f"width={self.width}, heads={self.heads}"
            )
        if self.order not in TOKEN_ORDERS:
            raise InvalidArgumentError(
                f"CausalTransformer: order must be one of {TOKEN_ORDERS}, got {self.order!r}"
            )
        if not self.attention_temperature > 0:
            raise InvalidArgumentError(
                f"CausalTransformer: attention_temperature must be > 0, got {self.attention_temperature!r}"
            )
        super().__post_init__()

    def setup(self) -> None:
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        self.embed = MixedDense(self.width, **dense)
        self.position = PositionEmbedding(self.width, self.param_dtype)
        self.class_embedding = MixedDense(self.width, use_bias=False, kernel_init=_EMBEDDING_INIT, **dense)
        self.layers = [
            CausalBlock(self.width, self.heads, self.mlp_ratio, **dense, name=f"layer_{i}")
            for i in range(self.depth)
        ]
        self.norm = nn.LayerNorm(param_dtype=self.param_dtype)
        self.output = OutputHead(**dense)

    # -- degrees (the layer's protocol) ------------------------------------------------------
    def degrees(self, x: Array) -> Array:
        """One degree per token: 1 … N in the natural order, N … 1 reversed."""
        tokens = as_tokens(x).shape[1]
        if self.order == "natural":
            return jnp.arange(1, tokens + 1, dtype=jnp.int32)
        return jnp.arange(tokens, 0, -1, dtype=jnp.int32)

    def distinct_degrees(self, shape) -> np.ndarray:
        if len(shape) not in (2, 3):
            raise ShapeError(f"CausalTransformer: expected tokens (batch, N, C), got shape {tuple(shape)}")
        return np.arange(1, shape[1] + 1)

    def token_at(self, position: Array | int, tokens: int) -> Array | int:
        """The index of the token at `position` of the block's order."""
        return position if self.order == "natural" else tokens - 1 - position

    def in_order(self, a: Array) -> Array:
        """Tokens (axis 1) put into the block's order (and back: a reversal is its own inverse)."""
        return a if self.order == "natural" else a[:, ::-1]

    # -- the network ---------------------------------------------------------------------------
    def embedded(self, tokens: Array, index: Array | None, all_tokens: int, context: Array | None) -> Array:
        """e = x W_in + b_in + P (+ E c) of `tokens` (batch, t, C): all of them (index None) or the
        one token of index `index`."""
        e = self.embed(tokens)
        table = self.position(all_tokens)
        if index is not None:
            table = jax.lax.dynamic_slice_in_dim(table, index, 1, axis=0)
        e = e + table.astype(e.dtype)
        if context is not None:
            e = e + self.class_embedding(context)[:, None, :]
        return e

    def head(self, e: Array, channels: int) -> Array:
        g = self.output(self.norm(e), channels * self.outputs_per_entry)
        return g.reshape(*e.shape[:2], channels, self.outputs_per_entry)

    def checked_context(self, context: Array | None, x: Array) -> Array | None:
        if context is None:
            if "class_embedding" in self.variables.get("params", {}):
                raise MissingContextError(
                    "CausalTransformer was initialised with a context (it has a class embedding) but was "
                    "called without one"
                )
            return None
        check_context(context, x, "CausalTransformer")
        return context

    def passes(self, context: Array | None) -> list[tuple[Array | None, float]]:
        """(context, attention temperature) of the conditional pass, and with guidance the
        unconditional one (the mean class embedding: uniform class weights)."""
        passes = [(context, 1.0)]
        if self.guidance:
            unconditional = None if context is None else jnp.full_like(context, 1.0 / context.shape[-1])
            passes.append((unconditional, self.attention_temperature))
        return passes

    def guided(self, outputs: list[Array]) -> Array:
        """h + w (h − h_u) (or h without guidance)."""
        if len(outputs) == 1:
            return outputs[0]
        h, h_u = outputs
        return h + self.guidance * (h - h_u)

    def full_pass(self, tokens: Array, context: Array | None, temperature: float) -> Array:
        """The head's g for every token, in the block's order, before the shift."""
        e = self.in_order(self.embedded(tokens, None, tokens.shape[1], context))
        for layer in self.layers:
            e = layer(e, temperature)
        return self.head(e, tokens.shape[-1])

    def __call__(self, x: Array, context: Array | None = None) -> Array:
        """h (*x.shape, k): token j's parameters from the tokens before it in the block's order."""
        tokens = as_tokens(x)
        context = self.checked_context(context, x)
        g = self.guided([self.full_pass(tokens, c, t) for c, t in self.passes(context)])
        shifted = jnp.concatenate([jnp.zeros_like(g[:, :1]), g[:, :-1]], axis=1)  # token 0: zeros
        return self.in_order(shifted).reshape(*x.shape, self.outputs_per_entry)

    # -- the incremental protocol (key/value cache) --------------------------------------------
    def cache_dtype(self, x: Array) -> jnp.dtype:
        """The keys' and values' dtype: the network's operand dtype (the full pass rounds them so too)."""
        return jnp.dtype(self.dtype) if self.dtype is not None else jnp.result_type(x.dtype, self.param_dtype)

    def init_cache(self, x: Array, context: Array | None = None) -> list:
        """Empty key and value caches, (batch, N, heads, width / heads) per layer and per pass."""
        tokens = as_tokens(x)
        shape = (tokens.shape[0], tokens.shape[1], self.heads, self.width // self.heads)
        empty = jnp.zeros(shape, self.cache_dtype(x))
        return [[(empty, empty) for _ in range(self.depth)] for _ in self.passes(context)]

    def one_step(self, tokens: Array, cache: list, index: Array, context: Array | None) -> tuple[Array, list]:
        """h of the token at position `index` ≥ 1 of the order, from the token at `index` − 1 (now
        exact) and the caches of the ones before; the caches gain that token."""
        slot = index - 1
        newest = self.token_at(slot, tokens.shape[1])
        token = jax.lax.dynamic_slice_in_dim(tokens, newest, 1, axis=1)
        outputs, caches = [], []
        for (c, temperature), layer_caches in zip(self.passes(context), cache, strict=True):
            e = self.embedded(token, newest, tokens.shape[1], c)
            updated = []
            for layer, (keys, values) in zip(self.layers, layer_caches, strict=True):
                e, keys, values = layer.step(e, keys, values, slot, temperature)
                updated.append((keys, values))
            outputs.append(self.head(e, tokens.shape[-1]))
            caches.append(updated)
        g = self.guided(outputs)  # (batch, 1, C, k)
        h = jnp.zeros((*tokens.shape, self.outputs_per_entry), g.dtype)
        h = jax.lax.dynamic_update_slice_in_dim(h, g, self.token_at(index, tokens.shape[1]), axis=1)
        return h, caches

    def step(self, x: Array, cache: list, index: Array, context: Array | None = None) -> tuple[Array, list]:
        """The protocol's pass `index`: h right for the token of rank `index` (zeros elsewhere).
        Pass 0 runs no network (token 0's parameters are zero), so a block's sampling runs the
        transformer N − 1 times, one token each."""
        tokens = as_tokens(x)
        context = self.checked_context(context, x)
        h_shape = (*tokens.shape, self.outputs_per_entry)

        dtype = accumulated(self.cache_dtype(x))

        def advance(module, cache):
            h, cache = module.one_step(tokens, cache, index, context)
            return h.astype(dtype), cache

        def first(module, cache):
            return jnp.zeros(h_shape, dtype), cache

        h, cache = nn.cond(index > 0, advance, first, self, cache)
        return h.reshape(*x.shape, self.outputs_per_entry), cache


class PatchTokens(Bijector):
    """An image as the sequence of its p×p patches (ViT; TarFlow).

    Forward: (b, h, w, c) → (b, N, p²c), N = (h/p)(w/p) tokens in row-major order, each
    `patchify`'s p·p·c values of one patch. Inverse: the tokens back to the image (it needs the
    grid's width, `columns`). A permutation of the entries, so log_det = 0 both ways.

    Attributes:
      patch_size: p ≥ 1.
      columns: w/p, the tokens per row of the grid.
    """

    patch_size: int
    columns: int

    def __post_init__(self) -> None:
        check_count(self.patch_size, "patch_size", "PatchTokens")
        check_count(self.columns, "columns", "PatchTokens")
        super().__post_init__()

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        grid = patchify(x, self.patch_size)
        b, rows, columns, values = grid.shape
        if columns != self.columns:
            raise ShapeError(
                f"PatchTokens: built for {self.columns} patches per row, got {columns} (width {x.shape[2]})"
            )
        return grid.reshape(b, rows * columns, values), jnp.zeros(b, x.dtype)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        if y.ndim != 3 or y.shape[1] % self.columns:
            raise ShapeError(
                f"PatchTokens: expected tokens (batch, rows·{self.columns}, values), got shape {y.shape}"
            )
        b, tokens, values = y.shape
        grid = y.reshape(b, tokens // self.columns, self.columns, values)
        return unpatchify(grid, self.patch_size), jnp.zeros(b, y.dtype)
