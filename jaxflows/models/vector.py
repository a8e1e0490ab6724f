"""Flows on vectors (batch, d), each a builder in the model registry with defaults that fit a 2-D
density out of the box: couplings with permutations or LU mixing (RealNVP, NICE, Neural Spline
Flows), planar (Rezende & Mohamed 2015), Sylvester (van den Berg et al. 2018) and invertible
residual flows (Behrmann et al. 2019; on images too).

Every builder takes the event shape first, (d,) or an int d, and returns a `Flow` with a standard
normal base; vector data is unbounded by default (`data_range=None`).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.bijectors import (
    ActNorm,
    InvertibleResidual,
    Logit,
    LULinear,
    Planar,
    ReversePermutation,
    ShufflePermutation,
    Squeeze,
    Sylvester,
)
from jaxflows.core import Bijector, Chain, Flow, Invert, Repeat, StandardNormal
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_count
from jaxflows.models.registry import COUPLINGS, register_model
from jaxflows.ops import DEFAULT_NETWORK_PRECISION

MIXINGS = {"reverse": ReversePermutation, "shuffle": ShufflePermutation, "lu": LULinear}


def vector_shape(event_shape: tuple[int, ...] | int, builder: str) -> tuple[int]:
    """(d,) from an int d or a rank-1 shape; anything else is a ShapeError naming `builder`."""
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    if len(shape) != 1 or not isinstance(shape[0], int) or shape[0] < 1:
        raise ShapeError(f"{builder}: expected the shape of one vector, (d,) or d, got {event_shape!r}")
    return shape


def vector_flow(
    bijector: Bijector,
    event_shape: tuple[int, ...],
    data_range: tuple[float, float] | str | None = None,
    context_features: int | None = None,
    logit_alpha: float | None = None,
    builder: str = "vector_flow",
) -> Flow:
    """`bijector` (data → latent) with a standard normal base over `event_shape`; with
    `logit_alpha`, after a `Logit(logit_alpha)` (data in [0, 1): pixels as vectors), the steps
    named "steps". data_range "auto": [0, 1] with the logit, else unbounded (None)."""
    if isinstance(data_range, str):
        if data_range != "auto":
            raise InvalidArgumentError(
                f'{builder}: data_range must be (low, high), None or "auto", got {data_range!r}'
            )
        data_range = (0.0, 1.0) if logit_alpha is not None else None
    if logit_alpha is not None:
        bijector = Chain([Logit(logit_alpha), bijector], names=["logit", "steps"])
    return Flow(
        bijector,
        StandardNormal(),
        event_shape=tuple(event_shape),
        data_range=data_range,
        context_features=context_features,
    )


def coupling_flow(
    event_shape: tuple[int, ...] | int,
    *,
    coupling: str = "affine",
    depth: int = 6,
    hidden: int = 64,
    mixing: str = "reverse",
    actnorm: bool = True,
    mask: str = "channel",
    coupling_kwargs: dict[str, Any] | None = None,
    logit: bool = False,
    logit_alpha: float = 1e-6,
    context_features: int | None = None,
    data_range: tuple[float, float] | str | None = "auto",
    param_dtype: DTypeLike = jnp.float32,
    network_dtype: DTypeLike | None = None,
    network_precision: str = DEFAULT_NETWORK_PRECISION,
) -> Flow:
    """`depth` × (ActNorm, mixing, coupling) on vectors: RealNVP (Dinh et al. 2017) with
    coupling="affine" and mixing="reverse", NICE (Dinh et al. 2014) with "additive", a coupling
    Neural Spline Flow (Durkan et al. 2019, RQ-NSF (C)) with coupling="spline" and mixing="lu".

    Args:
      event_shape: (d,) or d, with d ≥ 2.
      coupling: a name registered in `COUPLINGS`: "affine" | "additive" | "spline" |
        "matrix_exp"; each coupling's network is `CouplingMLP` with two hidden layers of `hidden`.
      depth: the number of (ActNorm, mixing, coupling) steps, one `Repeat` (compiled once).
      mixing: between couplings, "reverse" (the coordinates' order reversed), "shuffle" (a fixed
        random permutation per step) or "lu" (a learned `LULinear`).
      actnorm: start each step with `ActNorm` (data-dependent initialisation).
      mask: "channel" (halves of the coordinates) or "checkerboard" (alternate coordinates).
      coupling_kwargs: extra fields of every coupling (e.g. {"bins": 8, "bound": 4.0} for splines).
      logit: put `Logit(logit_alpha)` first, for data in [0, 1) (pixels as vectors).
      context_features: e for a flow conditioned on a (batch, e) context.
      data_range: the domain `log_prob` checks; "auto" (default): [0, 1] with `logit`, else
        unbounded.
      param_dtype, network_dtype, network_precision: the parameters' dtype and the networks'
        policy (`jaxflows.ops.NetworkPolicy`).
    """
    shape = vector_shape(event_shape, "coupling_flow")
    if shape[0] < 2:
        raise ShapeError(f"coupling_flow: a coupling splits the coordinates, so d must be ≥ 2, got {shape}")
    depth, hidden = (
        check_count(depth, "depth", "coupling_flow"),
        check_count(hidden, "hidden", "coupling_flow"),
    )
    if mixing not in MIXINGS:
        raise InvalidArgumentError(f"coupling_flow: mixing must be one of {sorted(MIXINGS)}, got {mixing!r}")
    make_coupling = COUPLINGS.lookup(coupling)
    policy = {"network_dtype": network_dtype, "network_precision": network_precision}
    mix = MIXINGS[mixing]
    layers = [ActNorm(param_dtype=param_dtype)] if actnorm else []
    layers += [
        mix(param_dtype=param_dtype) if mix is LULinear else mix(),
        make_coupling(
            hidden=hidden, mask=mask, parity=0, param_dtype=param_dtype, **policy, **(coupling_kwargs or {})
        ),
    ]
    names = (["actnorm"] if actnorm else []) + ["mixing", "coupling"]
    step = Chain(layers, names=names)
    alpha = logit_alpha if logit else None
    return vector_flow(Repeat(step, depth), shape, data_range, context_features, alpha, "coupling_flow")


def planar_flow(
    event_shape: tuple[int, ...] | int,
    *,
    depth: int = 32,
    data_range: tuple[float, float] | None = None,
    param_dtype: DTypeLike = jnp.float32,
) -> Flow:
    """`depth` planar layers z' = z + û tanh(wᵀz + b) (Rezende & Mohamed 2015, Eq. 10), one
    `Repeat`; the inverse solves one scalar equation per layer and example."""
    shape = vector_shape(event_shape, "planar_flow")
    depth = check_count(depth, "depth", "planar_flow")
    return vector_flow(Repeat(Planar(param_dtype=param_dtype), depth), shape, data_range)


def sylvester_flow(
    event_shape: tuple[int, ...] | int,
    *,
    depth: int = 12,
    num_hidden: int | None = 2,
    data_range: tuple[float, float] | None = None,
    param_dtype: DTypeLike = jnp.float32,
) -> Flow:
    """`depth` orthogonal Sylvester layers z' = z + Q R tanh(R̃ Qᵀz + b) with M = `num_hidden`
    columns (van den Berg et al. 2018, Eq. 13; None: min(d, 8)), one `Repeat`."""
    shape = vector_shape(event_shape, "sylvester_flow")
    depth = check_count(depth, "depth", "sylvester_flow")
    layer = Sylvester(
        num_hidden=None if num_hidden is None else min(num_hidden, shape[0]), param_dtype=param_dtype
    )
    return vector_flow(Repeat(layer, depth), shape, data_range)


def residual_flow(
    event_shape: tuple[int, ...] | int,
    *,
    depth: int = 6,
    hidden: int = 64,
    num_layers: int = 3,
    lipschitz: float = 0.9,
    trace: str = "exact",
    log_det_terms: int | None = None,
    actnorm: bool = True,
    block_kwargs: dict[str, Any] | None = None,
    data_range: tuple[float, float] | str | None = "auto",
    param_dtype: DTypeLike = jnp.float32,
) -> Flow:
    """`depth` × (ActNorm, invertible residual block x + g(x)) (i-ResNet, Behrmann et al. 2019),
    Lip(g) ≤ `lipschitz`. On vectors (d,) g is a dense network; on images (h, w, c) a
    convolutional one, between a squeeze and its inverse (so the latent keeps the image's shape).

    Args:
      event_shape: (d,) or d for vectors; (height, width, channels) with even height and width
        for images.
      depth, hidden, num_layers, lipschitz: blocks, g's hidden width, g's layers, Lip(g).
      trace: "exact" (dense Jacobian traces, small d) or "hutchinson" (stochastic; draws the
        `log_det` rng stream).
      log_det_terms: terms of the log-det power series; None: exact log|det(I + J_g)| (needs
        trace="exact").
      block_kwargs: extra fields of every `InvertibleResidual` block.
      data_range: the domain `log_prob` checks; "auto": unbounded vectors, images in [0, 1].
    """
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    if len(shape) not in (1, 3):
        raise ShapeError(f"residual_flow: expected (d,), d or (height, width, channels), got {event_shape!r}")
    depth = check_count(depth, "depth", "residual_flow")
    block = InvertibleResidual(
        hidden=hidden,
        num_layers=num_layers,
        lipschitz=lipschitz,
        trace=trace,
        log_det_terms=log_det_terms,
        param_dtype=param_dtype,
        **(block_kwargs or {}),
    )
    step = Chain([ActNorm(param_dtype=param_dtype), block], names=["actnorm", "block"]) if actnorm else block
    bijector: Bijector = Repeat(step, depth)
    if len(shape) == 3:
        if shape[0] % 2 or shape[1] % 2:
            raise ShapeError(
                f"residual_flow: images are squeezed 2x2, so height and width must be even: {shape}"
            )
        bijector = Chain([Squeeze(), bijector, Invert(Squeeze())], names=["squeeze", "blocks", "unsqueeze"])
    return Flow(bijector, StandardNormal(), event_shape=shape, data_range=data_range)


register_model("coupling_flow", coupling_flow)
register_model("planar_flow", planar_flow)
register_model("sylvester_flow", sylvester_flow)
register_model("residual_flow", residual_flow)
