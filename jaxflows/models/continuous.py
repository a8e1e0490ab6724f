"""Continuous-time flows (FFJORD, Grathwohl et al. 2019): `ffjord_flow`, a stack of `ContinuousFlow`
blocks on vectors or images, in the model registry as "ffjord_flow"."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.bijectors import ContinuousFlow, Squeeze
from jaxflows.core import Bijector, Chain, Flow, Invert, Repeat, StandardNormal
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_count
from jaxflows.models.registry import register_model
from jaxflows.ops import DEFAULT_NETWORK_PRECISION

EXACT_TRACE_SIZE = 32  # trace="auto": the exact trace up to this many dimensions, Hutchinson above


def ffjord_flow(
    event_shape: tuple[int, ...] | int,
    *,
    depth: int = 1,
    hidden: int = 64,
    num_layers: int = 3,
    activation: str | None = None,
    time: float = 1.0,
    solver: str = "dopri5",
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 4096,
    trace: str = "auto",
    adjoint: str = "backsolve",
    data_range: tuple[float, float] | str | None = "auto",
    network_dtype: DTypeLike | None = None,
    network_precision: str = DEFAULT_NETWORK_PRECISION,
    param_dtype: DTypeLike = jnp.float32,
) -> Flow:
    """`depth` continuous-time blocks dz/dt = f(z, t) (FFJORD, Grathwohl et al. 2019) and a standard
    normal base. On vectors (d,) f is a concatsquash network; on images (h, w, c) a convolutional one,
    between a 2×2 squeeze and its inverse (the latent keeps the image's shape).

    Args:
      event_shape: (d,) or d for vectors; (height, width, channels) with even height and width for
        images.
      depth: `ContinuousFlow` blocks, one `Repeat`.
      hidden, num_layers, time, solver, rtol, atol, max_steps: each block's fields
        (`jaxflows.bijectors.ContinuousFlow`).
      adjoint: "backsolve" (FFJORD's continuous adjoint; the default here because diffrax's
        checkpointed adjoint, the layer's default, fails to differentiate inside `jax.shard_map`,
        where `jaxflows.train` computes gradients: equinox 0.13.8 with jax 0.10.2) or "checkpoint".
      activation: f's nonlinearity; None: "tanh" on vectors, "softplus" on images (FFJORD's).
      trace: "exact", "hutchinson" (draws the `log_det` rng stream) or "auto": exact up to 32
        dimensions per example, Hutchinson above.
      data_range: the domain `log_prob` checks; "auto": unbounded vectors, images in [0, 1].
      network_dtype, network_precision: the policy of f (`jaxflows.ops.NetworkPolicy`).
    """
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    if len(shape) not in (1, 3) or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ShapeError(f"ffjord_flow: expected (d,), d or (height, width, channels), got {event_shape!r}")
    depth = check_count(depth, "depth", "ffjord_flow")
    images = len(shape) == 3
    if trace == "auto":
        trace = "exact" if math.prod(shape) <= EXACT_TRACE_SIZE else "hutchinson"
    elif trace not in ("exact", "hutchinson"):
        raise InvalidArgumentError(
            f'ffjord_flow: trace must be "exact", "hutchinson" or "auto", got {trace!r}'
        )
    block = ContinuousFlow(
        hidden=hidden,
        num_layers=num_layers,
        activation=activation or ("softplus" if images else "tanh"),
        time=time,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        trace=trace,
        adjoint=adjoint,
        param_dtype=param_dtype,
        network_dtype=network_dtype,
        network_precision=network_precision,
    )
    bijector: Bijector = Repeat(block, depth)
    if images:
        if shape[0] % 2 or shape[1] % 2:
            raise ShapeError(
                f"ffjord_flow: images are squeezed 2x2, so height and width must be even: {shape}"
            )
        bijector = Chain([Squeeze(), bijector, Invert(Squeeze())], names=["squeeze", "blocks", "unsqueeze"])
    return Flow(bijector, StandardNormal(), event_shape=shape, data_range=data_range)


register_model("ffjord_flow", ffjord_flow)
