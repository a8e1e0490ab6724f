"""TarFlow (Zhai et al. 2024, "Normalizing Flows are Capable Generative Models"; apple/ml-tarflow):
transformer autoregressive flows over the patch tokens of an image.

    x in data_range ─ Rescale to [−1, 1] ─ PatchTokens(p) ─ T blocks ─ back to the image ─ z ~ N(0, I)

Each block is the autoregressive layer with a causal-transformer conditioner,
`MaskedAutoregressive(AffineTransformer(scale="exp"), CausalTransformer(order=...))`:
z_j = (x_j − μ_j)·exp(−α_j) with (μ_j, α_j) from the tokens before j, log_det = −Σ α; the blocks
alternate the natural and the reversed token order (TarFlow's identity / flip permutations). The
density is one transformer pass per block; sampling inverts the blocks in reverse, each token by
token with a key/value cache (N − 1 transformer steps of one token per block).

Two training modes, as the official code's:
- uniform dequantisation (the default): the model whose bits/dim are a bound on the data's;
- Gaussian noise augmentation (`noise_std=σ`, on the [0, 1] scale of the library's pixels; the
  paper's 0.05 on [−1, 1] is σ = 0.025): the flow models x + σε, over unbounded data, and its
  samples are denoised by one score step, `denoise` (x ← x + σ² ∇ₓ log p(x)). Its "bits/dim" are
  −log p of noisy data, not a bound on the discrete data's.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.bijectors import AffineTransformer, MaskedAutoregressive
from jaxflows.bijectors.tarflow import CausalTransformer, PatchTokens
from jaxflows.core import Chain, Flow, Repeat
from jaxflows.core.backprop import check_gradient_mode
from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.core.objective import draw
from jaxflows.core.validation import check_count
from jaxflows.models.registry import register_model
from jaxflows.models.tokens import check_patch_grid, token_flow
from jaxflows.ops import DEFAULT_NETWORK_PRECISION

TARFLOW_RANGE = (-1.0, 1.0)  # the official code's pixels


class GaussianNoise(nn.Module):
    """Noise augmentation in `Flow.discrete_log_prob`'s place of a dequantizer: for integer pixels,
    x = (pixels + 0.5)/K + σε, ε ~ N(0, I), i.e. u = 0.5 + Kσε with log q = 0, so the objective is
    −log p(x + σε) (TarFlow's Gaussian mode; not a bound on the discrete data's log-likelihood).
    One key, or one key per example (the training pipeline's).

    Attributes:
      noise_std: σ on the [0, 1] scale of the pixels.
    """

    noise_std: float

    def __call__(self, key: Array, pixels: Array, bins: int) -> tuple[Array, Array]:
        eps = draw(lambda k, shape: jax.random.normal(k, shape, jnp.float32), key, pixels.shape)
        return 0.5 + bins * self.noise_std * eps, jnp.zeros(pixels.shape[0], jnp.float32)


def denoise(flow: Flow, variables, x: Array, noise_std: float, context=None) -> Array:
    """One score-based denoising step (Tweedie; TarFlow Sec. 3.4): x + σ² ∇ₓ log p(x), with the
    flow's own gradient, for samples of a flow trained on data with Gaussian noise of std σ."""
    score = jax.grad(lambda a: jnp.sum(flow.apply(variables, a, context, method="log_prob")))(x)
    return x + noise_std**2 * score


def tarflow_block(order: str, network: dict, policy: dict) -> MaskedAutoregressive:
    """One TarFlow block: the exp-law autoregressive layer with a causal transformer in `order`."""
    conditioner = CausalTransformer(order=order, **network)
    return MaskedAutoregressive(AffineTransformer(scale="exp"), conditioner, **policy)


def tarflow(
    image_shape: tuple[int, int, int],
    *,
    patch_size: int = 4,
    width: int = 128,
    blocks: int = 4,
    layers_per_block: int = 2,
    heads: int = 4,
    mlp_ratio: int = 4,
    num_classes: int | None = None,
    context_features: int | None = None,
    noise_std: float | None = None,
    guidance: float = 0.0,
    attention_temperature: float = 1.0,
    gradient: str = "standard",
    dequantizer: nn.Module | None = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike = jnp.float32,
    network_dtype: DTypeLike | None = None,
    network_precision: str = DEFAULT_NETWORK_PRECISION,
    data_range: tuple[float, float] | None = (0.0, 1.0),
) -> Flow:
    """TarFlow (Zhai et al. 2024): `blocks` autoregressive blocks with causal-transformer
    conditioners over the p×p patch tokens of an image, a standard normal base over a latent of
    `image_shape` (see the module doc).

    Args:
      image_shape: (height, width, channels), height and width multiples of `patch_size`.
      patch_size: p; the image becomes N = (h/p)(w/p) tokens of p²·channels values.
      width: the transformers' embedding width (TarFlow's channels).
      blocks: T, the flow blocks, alternating the natural and the reversed token order.
      layers_per_block: K, transformer layers per block.
      heads: attention heads (width must be a multiple).
      mlp_ratio: each layer's MLP expansion.
      num_classes: K classes for a class-conditional TarFlow p(x | y) (a class embedding added to
        every token of every block).
      context_features: d for a TarFlow conditioned on any (batch, d) context vector instead.
      noise_std: σ for Gaussian noise augmentation instead of uniform dequantisation (on [0, 1];
        the flow is then over unbounded data, data_range None); `denoise` sharpens its samples.
      guidance: w of classifier-free guidance on the predicted (μ, α) (0: the density model; build
        a second flow with w > 0 and the same variables to sample with guidance).
      attention_temperature: τ of guidance's unconditional pass.
      gradient: "standard" | "remat" | "invertible" (`jaxflows.core.backprop`), of the blocks'
        `Repeat` ("invertible" rebuilds inputs by sampling, token by token: use "remat").
      dequantizer: q(u | x) for `Flow.discrete_log_prob`; None dequantises uniformly.
      dtype: computation dtype of the maps (None: promoted, at least float32).
      param_dtype: dtype of the parameters at init.
      network_dtype: computation dtype of the transformers (e.g. jnp.bfloat16).
      network_precision: matmul precision of the transformers: "highest" | "high" | "default".
      data_range: the domain of `log_prob`'s input, mapped onto [−1, 1] (its log-det counts);
        None: no rescaling and no range check.

    Returns:
      A `Flow` with a standard normal base over a latent of `image_shape`.
    """
    patch_size, columns = check_patch_grid(image_shape, patch_size, "tarflow")
    blocks = check_count(blocks, "blocks", "tarflow")
    check_gradient_mode(gradient, "tarflow")
    if noise_std is not None:
        if not noise_std > 0:
            raise InvalidArgumentError(f"tarflow: noise_std must be > 0 or None, got {noise_std!r}")
        if dequantizer is not None:
            raise InvalidArgumentError("tarflow: noise_std replaces the dequantizer; set one of them")
        dequantizer, scaled_from, data_range = GaussianNoise(noise_std), (0.0, 1.0), None
    else:
        scaled_from = None if data_range is None else tuple(data_range)
    network = dict(
        width=width,
        depth=layers_per_block,
        heads=heads,
        mlp_ratio=mlp_ratio,
        guidance=guidance,
        attention_temperature=attention_temperature,
    )
    CausalTransformer(**network)  # validates the network's arguments now, not at the first call
    policy = dict(
        dtype=dtype, param_dtype=param_dtype, network_dtype=network_dtype, network_precision=network_precision
    )
    body: list[tuple[str, Bijector]] = []
    if blocks >= 2:  # (natural, reversed) pairs, compiled once
        pair = Chain(
            [tarflow_block("natural", network, policy), tarflow_block("reversed", network, policy)],
            names=["natural", "reversed"],
        )
        body.append(
            ("blocks", Repeat(pair, blocks // 2, gradient=gradient))
        )  # per block: "remat" recomputes it
    if blocks % 2:
        body.append(("last_block", tarflow_block("natural", network, policy)))
    tokens = PatchTokens(patch_size, columns)
    return token_flow(
        image_shape,
        tokens,
        body,
        rescale=None if scaled_from is None else (scaled_from, TARFLOW_RANGE),
        data_range=data_range,
        dequantizer=dequantizer,
        num_classes=num_classes,
        context_features=context_features,
    )


register_model("tarflow", tarflow)
