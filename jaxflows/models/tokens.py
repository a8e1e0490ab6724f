"""What the token flows (Jet, TarFlow) share: the check that an image cuts into p×p patches, and
the flow around their body of layers: [rescale onto the network's range], patches → tokens, the
body, tokens → patches, so the latent keeps the image's shape."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from jaxflows.bijectors.rescale import Rescale
from jaxflows.core import Chain, Flow, Invert, StandardNormal
from jaxflows.core.bijector import Bijector
from jaxflows.core.errors import ShapeError
from jaxflows.core.validation import check_count


def check_patch_grid(image_shape: tuple[int, ...], patch_size: int, builder: str) -> tuple[int, int]:
    """(patch_size, patch columns) of an image of `image_shape` = (height, width, channels) cut
    into patch_size × patch_size patches; a ShapeError naming `builder` otherwise."""
    if len(image_shape) != 3:
        raise ShapeError(f"{builder}: image_shape must be (height, width, channels), got {image_shape}")
    patch_size = check_count(patch_size, "patch_size", builder)
    height, width, _ = image_shape
    if height % patch_size or width % patch_size:
        raise ShapeError(
            f"{builder}: height and width must be multiples of patch_size={patch_size}, got {height}x{width}"
        )
    return patch_size, width // patch_size


def token_flow(
    image_shape: tuple[int, ...],
    tokens: Bijector,
    body: Sequence[tuple[str, Bijector]],
    *,
    rescale: tuple[tuple[float, float], tuple[float, float]] | None,
    data_range: tuple[float, float] | None,
    dequantizer: nn.Module | None,
    num_classes: int | None,
    context_features: int | None,
    gradient: str = "standard",
) -> Flow:
    """A flow with a standard normal base over `image_shape`: [Rescale.between(*rescale)], `tokens`
    (patches → tokens), the named `body` layers, Invert(`tokens`), as one `Chain`."""
    layers = [("rescale", Rescale.between(*rescale))] if rescale is not None else []
    layers += [("patchify", tokens), *body, ("unpatchify", Invert(tokens))]
    names, bijectors = zip(*layers, strict=True)
    return Flow(
        bijector=Chain(list(bijectors), names=list(names), gradient=gradient),
        base=StandardNormal(),
        event_shape=tuple(image_shape),
        data_range=None if data_range is None else tuple(data_range),
        dequantizer=dequantizer,
        num_classes=num_classes,
        context_features=context_features,
    )
