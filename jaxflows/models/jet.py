"""Jet (Kolesnikov et al. 2024, "Jet: A Modern Transformer-Based Normalizing Flow"; big_vision's
`proj/jet`): affine couplings over the patch tokens of an image with ViT conditioners, no
multi-scale structure, no ActNorm and no 1x1 convolutions.

    x in data_range ─ Rescale to [−1, 1] ─ Patchify(p) ─ K couplings ─ unpatchify ─ z ~ N(0, I)

Each coupling is y_a = (x_a + b)·s, s = 2·sigmoid(h_s), (b, h_s) = ViT(x_b)
(`AffineTransformer(scale="jet")`, `ViTConditioner`), of one of two kinds, cycling through `kinds`:

- channel: the token values are permuted by a random permutation, fixed per coupling (drawn
  from the init key, kept in "constants"), the first half conditions the second, and the
  permutation is undone (`ShuffledCoupling`);
- spatial: a board over the token grid conditions the other tokens; the boards cycle through
  `spatial_patterns` (checkerboard, inverted checkerboard, vertical stripes and inverted,
  horizontal stripes and inverted: `jaxflows.bijectors.masks`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.bijectors import AffineTransformer, Coupling, ShufflePermutation
from jaxflows.bijectors.patchify import Patchify
from jaxflows.bijectors.vit import ViTConditioner
from jaxflows.core import Flow
from jaxflows.core.backprop import check_gradient_mode
from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.core.validation import check_count
from jaxflows.models.registry import register_model
from jaxflows.models.tokens import check_patch_grid, token_flow
from jaxflows.ops import DEFAULT_NETWORK_PRECISION

JET_RANGE = (-1.0, 1.0)  # big_vision's value_range(-1, 1)

# Jet's spatial coupling names -> (mask, parity); the "-inv" patterns swap the two halves.
SPATIAL_PATTERNS: dict[str, tuple[str, int]] = {
    "checkerboard": ("checkerboard", 0),
    "checkerboard-inv": ("checkerboard", 1),
    "vstripes": ("vertical_stripes", 0),
    "vstripes-inv": ("vertical_stripes", 1),
    "hstripes": ("horizontal_stripes", 0),
    "hstripes-inv": ("horizontal_stripes", 1),
}
COUPLING_KINDS = ("channel", "spatial")


class ShuffledCoupling(Bijector):
    """A coupling conjugated by a fixed random permutation π of the channels: P⁻¹ ∘ f ∘ P (Jet's
    channel coupling with a "random" projection; π from the init key, kept in "constants" as
    `ShufflePermutation` keeps it).

    Forward: y = P⁻¹ f(P x), log_det = f's (a permutation has log-det 0). Inverse: x = P⁻¹ f⁻¹(P y).

    Attributes:
      layer: f, e.g. `Coupling(mask="channel", ...)` (its variables live under "coupling").
    """

    layer: Bijector

    def setup(self):
        self.shuffle = ShufflePermutation()
        self.coupling = self.layer.clone(parent=self, name="coupling")  # as `Chain` scopes its layers

    def _conjugated(self, x: Array, context: Array | None, inverse: bool) -> tuple[Array, Array]:
        u, _ = self.shuffle.forward(x)
        v, log_det = self.coupling.inverse(u, context) if inverse else self.coupling.forward(u, context)
        return self.shuffle.inverse(v)[0], log_det

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._conjugated(x, context, inverse=False)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._conjugated(y, context, inverse=True)


def coupling_plan(
    couplings: int, kinds: Sequence[str], spatial_patterns: Sequence[str]
) -> list[tuple[str, str, int]]:
    """(kind, mask, parity) of each of the `couplings` layers: the kinds cycle through `kinds`, and
    the spatial couplings, among themselves, through `spatial_patterns` (Jet's
    `_interleave_couplings`)."""
    if not kinds or any(kind not in COUPLING_KINDS for kind in kinds):
        raise InvalidArgumentError(
            f"jet: kinds must be a non-empty sequence of {COUPLING_KINDS}, got {kinds!r}"
        )
    unknown = [name for name in spatial_patterns if name not in SPATIAL_PATTERNS]
    if unknown or not spatial_patterns:
        raise InvalidArgumentError(
            f"jet: spatial_patterns must be a non-empty sequence of {sorted(SPATIAL_PATTERNS)}, got "
            f"{spatial_patterns!r}"
        )
    plan, spatial = [], 0
    for i in range(couplings):
        kind = kinds[i % len(kinds)]
        if kind == "channel":
            plan.append((kind, "channel", 0))
        else:
            plan.append((kind, *SPATIAL_PATTERNS[spatial_patterns[spatial % len(spatial_patterns)]]))
            spatial += 1
    return plan


def jet(
    image_shape: tuple[int, int, int],
    *,
    patch_size: int = 4,
    couplings: int = 32,
    depth: int = 2,
    width: int = 256,
    heads: int = 4,
    mlp_dim: int | None = None,
    kinds: Sequence[str] = ("channel", "channel", "channel", "channel", "spatial"),
    spatial_patterns: Sequence[str] = tuple(SPATIAL_PATTERNS),
    gradient: str = "standard",
    dequantizer: nn.Module | None = None,
    num_classes: int | None = None,
    context_features: int | None = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike = jnp.float32,
    network_dtype: DTypeLike | None = None,
    network_precision: str = DEFAULT_NETWORK_PRECISION,
    data_range: tuple[float, float] | None = (0.0, 1.0),
) -> Flow:
    """Jet (Kolesnikov et al. 2024): `couplings` affine couplings with ViT conditioners over the
    grid of p×p patch tokens, with a standard normal base over a latent of `image_shape`.

    Forward (data → latent): rescale `data_range` to Jet's [−1, 1], patchify, the couplings
    (channel or spatial, cycling through `kinds`; see the module doc), unpatchify. Inverse: the
    same layers' inverses in reverse order. The defaults are big_vision's ImageNet-64 configuration
    (four channel couplings per spatial one, all six spatial patterns, depth 2) at width 256.

    Args:
      image_shape: (height, width, channels); height and width multiples of `patch_size`. Any
        token grid works, odd ones too (28×28 with p = 4: a 7×7 grid, 25 / 24 tokens per half).
      patch_size: p, the side of a patch (Jet: 4 on ImageNet 64×64).
      couplings: K, the number of couplings (Jet's depth: 32 or 64).
      depth: transformer blocks per coupling network (Jet's block_depth: 2 or 5).
      width: embedding width of each ViT (Jet's emb_dim: 512 on ImageNet-64).
      heads: attention heads (width must be a multiple).
      mlp_dim: hidden units of each block's MLP (None: 4·width).
      kinds: the cycle of coupling kinds, "channel" | "spatial".
      spatial_patterns: the cycle of the spatial couplings' boards, names of `SPATIAL_PATTERNS`.
      gradient: "standard" | "remat" | "invertible" (`jaxflows.core.backprop`).
      dequantizer: q(u | x) for `Flow.discrete_log_prob`; None dequantises uniformly.
      num_classes: N for a class-conditional Jet p(x | y): every ViT adds a projection of the
        one-hot label to its token embeddings.
      context_features: d for a Jet conditioned on any (batch, d) context vector instead.
      dtype: computation dtype of the maps (None: promoted, at least float32).
      param_dtype: dtype of the parameters at init.
      network_dtype: computation dtype of the ViTs (e.g. jnp.bfloat16; None: the maps').
      network_precision: matmul precision of the ViTs: "highest" | "high" | "default".
      data_range: the domain of `log_prob`'s input, mapped onto [−1, 1] (its log-det counts in
        the likelihood); None: the data is used as it is, and `log_prob` checks no range.

    Returns:
      A `Flow` with a standard normal base over a latent of `image_shape`.
    """
    patch_size, _ = check_patch_grid(image_shape, patch_size, "jet")
    couplings = check_count(couplings, "couplings", "jet")
    check_gradient_mode(gradient, "jet")
    network = functools.partial(ViTConditioner, width=width, depth=depth, heads=heads, mlp_dim=mlp_dim)
    network(out_channels=1)  # validates width, depth, heads and mlp_dim now, not at the first call
    policy = dict(
        dtype=dtype, param_dtype=param_dtype, network_dtype=network_dtype, network_precision=network_precision
    )
    transformer = AffineTransformer(scale="jet")
    body: list[tuple[str, Bijector]] = []
    for i, (kind, mask, parity) in enumerate(coupling_plan(couplings, kinds, spatial_patterns)):
        coupling = Coupling(mask=mask, parity=parity, transformer=transformer, conditioner=network, **policy)
        body.append((f"{kind}_{i}", ShuffledCoupling(coupling) if kind == "channel" else coupling))
    return token_flow(
        image_shape,
        Patchify(patch_size),
        body,
        rescale=None if data_range is None else (tuple(data_range), JET_RANGE),
        data_range=data_range,
        dequantizer=dequantizer,
        num_classes=num_classes,
        context_features=context_features,
        gradient=gradient,
    )


register_model("jet", jet)
