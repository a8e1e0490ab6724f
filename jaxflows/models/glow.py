"""Glow (Kingma & Dhariwal 2018, Fig. 2): L levels of [squeeze, K × (actnorm, 1x1 conv, coupling),
split], with a learned prior at the top. Other papers' layers, and the user's, plug in through
the registry (`jaxflows.models.registry`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.bijectors import ActNorm, LearnedPrior, Split, Squeeze
from jaxflows.core import Bijector, Chain, Flow, Repeat, StandardNormal
from jaxflows.core.backprop import check_gradient_mode
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_count
from jaxflows.models.multiscale import MultiScaleFlow
from jaxflows.models.registry import CONVS, COUPLINGS, register_model
from jaxflows.ops import DEFAULT_NETWORK_PRECISION


def _accepted(factory: Callable[..., Bijector], defaults: dict[str, Any]) -> dict[str, Any]:
    """The `defaults` a layer class has fields for (a permutation has no dtype); all for a function."""
    if not dataclasses.is_dataclass(factory):
        return defaults
    names = {field.name for field in dataclasses.fields(factory)}
    return {key: value for key, value in defaults.items() if key in names}


def glow(
    image_shape: tuple[int, int, int],
    levels: int = 3,
    depth: int = 32,
    hidden: int = 512,
    conv: str = "lu",
    coupling: str = "affine",
    mask: str = "channel",
    conv_kwargs: dict[str, Any] | None = None,
    coupling_kwargs: dict[str, Any] | None = None,
    gradient: str = "standard",
    dequantizer: nn.Module | None = None,
    num_classes: int | None = None,
    context_features: int | None = None,
    classifier: bool = False,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike = jnp.float32,
    network_dtype: DTypeLike | None = None,
    network_precision: str = DEFAULT_NETWORK_PRECISION,
    data_range: tuple[float, float] | None = (0.0, 1.0),
) -> Flow:
    """A multi-scale Glow-style flow (Kingma & Dhariwal 2018, Fig. 2) with a standard normal base.

    Forward (data → latent), per level: squeeze (2×2 space-to-depth), K steps of
    (ActNorm, channel mixer, coupling), then `Split` (half the channels whitened under a prior
    conditioned on the other half and factored out), or at the last level `LearnedPrior`;
    log_det is the sum of the layers' log-dets. Inverse (latent → data, sampling): the same layers'
    inverses in reverse order. The latent has `image_shape` (`MultiScaleFlow`).
    The K steps of a level are one `Repeat` (one `lax.scan`, compiled once whatever K), named
    "flow_steps"; with the checkerboard mask the repeated unit is a pair of steps of parity 0 and 1
    ("parity0", "parity1") and an odd K ends with one more step, "last_step".

    Args:
      image_shape: (height, width, channels) of one example; height and width must be multiples
        of 2^levels.
      levels: L, the number of scales.
      depth: K, the number of flow steps per level (Glow's K).
      hidden: channels of each coupling network's hidden layers.
      conv: the channel mixer, a name registered in `CONVS` (`register_conv`): "plain" | "lu" |
        "qr" | "emerging" | "periodic" | "matrix_exp", or a fixed permutation "reverse" |
        "shuffle" (Glow Fig. 3's baselines).
      coupling: a name registered in `COUPLINGS` (`register_coupling`): "affine" | "additive" |
        "matrix_exp".
      mask: "channel" | "checkerboard" (checkerboard alternates parity between steps, as in
        RealNVP).
      conv_kwargs: extra fields of every channel mixer (e.g. {"kernel_size": 3}).
      coupling_kwargs: extra fields of every coupling (e.g. {"form": "low_rank"}).
      gradient: "standard" | "remat" | "invertible" (rebuild activations with the inverse in the
        backward pass: activation memory constant in K; see `jaxflows.core.backprop`).
      dequantizer: q(u | x) for `Flow.discrete_log_prob` (e.g. `VariationalDequantizer()`); None
        dequantises uniformly.
      num_classes: N for a class-conditional Glow p(x | y) (Glow Sec 5): every coupling network,
        split prior and the top prior read the one-hot label (`jaxflows.core.context`); the flow's
        methods then take integer labels as `context`.
      context_features: d for a Glow conditioned on any (batch, d) context vector instead.
      classifier: with `num_classes`, Glow's auxiliary classifier of the top latent (Sec 5), for a
        classification loss next to the likelihood (`LearnedPrior`, `TrainConfig.class_loss_weight`).
      dtype: computation dtype of every layer's map (None: promoted from the input and
        parameters); never below float32, and every product of the maps runs at
        `lax.Precision.HIGHEST` (`jaxflows.ops.precision`).
      param_dtype: dtype of every layer's parameters at init.
      network_dtype: computation dtype of the coupling networks, split priors, classifier and
        context projections, e.g. jnp.bfloat16 (None: the maps' dtype); parameters stay in
        `param_dtype` and network outputs are cast to the maps' dtype.
      network_precision: matmul precision of those networks: "highest" (default; exact on every
        accelerator), "high", or "default" (JAX's global setting: TF32 on NVIDIA GPUs).
      data_range: the domain `log_prob` checks (dequantised pixels: [0, 1]); None for unbounded
        data.

    Returns:
      A `Flow` with a standard normal base over a latent of `image_shape`.
    """
    if len(image_shape) != 3:
        raise ShapeError(f"image_shape must be (height, width, channels), got {image_shape}")
    height, width, _ = image_shape
    levels = check_count(levels, "levels", "glow")
    depth = check_count(depth, "depth", "glow")
    hidden = check_count(hidden, "hidden", "glow")
    scale = 2**levels
    if height % scale or width % scale:
        raise ShapeError(
            f"{levels} levels squeeze the image {levels} times, so height and width must be "
            f"multiples of {scale}; got {height}x{width}"
        )
    make_conv = CONVS.lookup(conv)
    make_coupling = COUPLINGS.lookup(coupling)
    dtypes = {"dtype": dtype, "param_dtype": param_dtype}
    networks = {**dtypes, "network_dtype": network_dtype, "network_precision": network_precision}
    conv_kwargs = {**_accepted(make_conv, dtypes), **(conv_kwargs or {})}
    coupling_kwargs = {**networks, **(coupling_kwargs or {})}

    def step(k: int) -> Bijector:
        parity = k % 2 if mask == "checkerboard" else 0
        return Chain(
            [
                ActNorm(**dtypes),
                make_conv(**conv_kwargs),
                make_coupling(hidden=hidden, mask=mask, parity=parity, **coupling_kwargs),
            ],
            names=["actnorm", "conv", "coupling"],
        )

    check_gradient_mode(gradient, "glow")
    if classifier and num_classes is None:
        raise InvalidArgumentError("glow: classifier=True needs num_classes (the classes it predicts)")
    period = 2 if mask == "checkerboard" else 1
    unit = step(0) if period == 1 else Chain([step(0), step(1)], names=["parity0", "parity1"])
    repeats, extra = divmod(depth, period)
    level_list = []
    for i in range(levels):
        last = i == levels - 1
        layers, names = [Squeeze()], ["squeeze"]
        if repeats:
            layers.append(Repeat(unit, repeats, gradient=gradient))
            names.append("flow_steps")
        if extra:
            layers.append(step(0))
            names.append("last_step")
        top = LearnedPrior(**networks, num_classes=num_classes if classifier else None)
        layers.append(top if last else Split(**networks))
        names.append("prior" if last else "split")
        level_list.append(Chain(layers, names=names))
    return Flow(
        bijector=MultiScaleFlow(level_list),
        base=StandardNormal(),
        event_shape=tuple(image_shape),
        data_range=data_range,
        dequantizer=dequantizer,
        num_classes=num_classes,
        context_features=context_features,
    )


register_model("glow", glow)
