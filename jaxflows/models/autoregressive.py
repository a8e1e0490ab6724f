"""Autoregressive flows on vectors: MAF (Papamakarios et al. 2017) and the autoregressive neural
spline flow (Durkan et al. 2019, RQ-NSF (AR)), each a builder in the model registry.

Every step is (ActNorm, `MaskedAutoregressive` with a `MADE` conditioner, a reversal of the
coordinates), so consecutive layers see the coordinates in opposite orders (without the reversal
every layer would leave the first coordinate a function of nothing but itself). The steps are one
`Repeat`, compiled once. The density (forward, data → latent) is one network pass per layer;
sampling (the inverse) is d passes per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxflows.bijectors import (
    MADE,
    ActNorm,
    AffineTransformer,
    MaskedAutoregressive,
    RationalQuadraticSpline,
    ReversePermutation,
    Transformer,
)
from jaxflows.core import Bijector, Chain, Flow, Repeat
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.core.validation import check_count
from jaxflows.models.registry import register_model
from jaxflows.models.vector import vector_flow, vector_shape
from jaxflows.ops import DEFAULT_NETWORK_PRECISION

ORDERS = ("reversed", "random")


def autoregressive_flow(
    event_shape: tuple[int, ...] | int,
    transformer: Transformer,
    *,
    builder: str,
    depth: int,
    hidden: Sequence[int],
    order: str,
    actnorm: bool,
    logit: bool,
    logit_alpha: float,
    context_features: int | None,
    data_range: tuple[float, float] | str | None,
    param_dtype: DTypeLike,
    network_dtype: DTypeLike | None,
    network_precision: str,
) -> Flow:
    """`depth` × (ActNorm, MaskedAutoregressive(transformer, MADE(hidden)), reversal), after a
    `Logit` when `logit`; the shared body of `maf` and `autoregressive_spline_flow`."""
    shape = vector_shape(event_shape, builder)
    depth = check_count(depth, "depth", builder)
    if order not in ORDERS:
        raise InvalidArgumentError(f"{builder}: order must be one of {ORDERS}, got {order!r}")
    made = MADE(hidden=tuple(hidden), order="natural" if order == "reversed" else "random")
    layer = MaskedAutoregressive(
        transformer,
        made,
        param_dtype=param_dtype,
        network_dtype=network_dtype,
        network_precision=network_precision,
    )
    layers: list[Bijector] = [ActNorm(param_dtype=param_dtype)] if actnorm else []
    names = ["actnorm"] if actnorm else []
    layers.append(layer)
    names.append("autoregressive")
    if order == "reversed":
        layers.append(ReversePermutation())
        names.append("reverse")
    steps = Repeat(Chain(layers, names=names), depth)
    return vector_flow(steps, shape, data_range, context_features, logit_alpha if logit else None, builder)


# MAF's default soft bound on each layer's α: a layer scales by at most e^5 ≈ 148.
ALPHA_BOUND = 5.0


def maf(
    event_shape: tuple[int, ...] | int,
    *,
    depth: int = 5,
    hidden: Sequence[int] = (64, 64),
    order: str = "reversed",
    actnorm: bool = True,
    alpha_bound: float | None = ALPHA_BOUND,
    logit: bool = False,
    logit_alpha: float = 1e-6,
    context_features: int | None = None,
    data_range: tuple[float, float] | str | None = "auto",
    param_dtype: DTypeLike = jnp.float32,
    network_dtype: DTypeLike | None = None,
    network_precision: str = DEFAULT_NETWORK_PRECISION,
) -> Flow:
    """A masked autoregressive flow (Papamakarios et al. 2017): `depth` × (ActNorm, MAF layer
    z_i = (x_i − μ_i)·exp(−α_i) with (μ, α) from a `MADE`, coordinates reversed).

    Args:
      event_shape: (d,) or d.
      depth: the number of steps (one `Repeat`, compiled once).
      hidden: the MADE's hidden widths (at least d − 1 each to reach every dependency; d with a
        context).
      order: "reversed" (the coordinates reversed after every layer, as in the paper) or "random"
        (every layer's MADE draws its own order at init, no reversal).
      actnorm: start each step with `ActNorm` (data-dependent initialisation; the paper's batch
        normalisation between layers).
      alpha_bound: the soft clamp α = b·tanh(h / b) of every layer's log-scale (`AffineTransformer`;
        None: unbounded, as the paper). Bounded by default: a trained MAF's log-density stays finite
        far from its data (unbounded, one of three seeds on two moons overflowed on held-out points).
      logit: put `Logit(logit_alpha)` first, for data in [0, 1) (pixels as vectors, as in MAF's image
        experiments).
      context_features: e for a flow p(x | c) conditioned on a (batch, e) context (every MADE reads c).
      data_range: the domain `log_prob` checks; "auto": [0, 1] with `logit`, else unbounded.
      param_dtype, network_dtype, network_precision: the parameters' dtype and the networks'
        policy (`jaxflows.ops.NetworkPolicy`).
    """
    settings = {name: value for name, value in locals().items() if name not in ("event_shape", "alpha_bound")}
    transformer = AffineTransformer(scale="exp", alpha_bound=alpha_bound)
    return autoregressive_flow(event_shape, transformer, builder="maf", **settings)


def autoregressive_spline_flow(
    event_shape: tuple[int, ...] | int,
    *,
    depth: int = 5,
    hidden: Sequence[int] = (64, 64),
    bins: int = 8,
    bound: float = 3.0,
    order: str = "reversed",
    actnorm: bool = True,
    logit: bool = False,
    logit_alpha: float = 1e-6,
    context_features: int | None = None,
    data_range: tuple[float, float] | str | None = "auto",
    param_dtype: DTypeLike = jnp.float32,
    network_dtype: DTypeLike | None = None,
    network_precision: str = DEFAULT_NETWORK_PRECISION,
) -> Flow:
    """The autoregressive rational-quadratic neural spline flow (Durkan et al. 2019, RQ-NSF (AR)):
    `maf` with each coordinate's map a monotone rational-quadratic spline of `bins` bins on
    [−bound, bound] (identity outside), its 3·bins − 1 parameters from the `MADE`.

    Args:
      bins, bound: the spline's K and B (`RationalQuadraticSpline`).
      event_shape, depth, hidden, order, actnorm, logit, logit_alpha, context_features, data_range,
        param_dtype, network_dtype, network_precision: as `maf`.
    """
    settings = dict(locals())  # the keyword arguments shared with maf
    for name in ("event_shape", "bins", "bound"):
        del settings[name]
    spline = RationalQuadraticSpline(bins=bins, bound=bound)
    return autoregressive_flow(event_shape, spline, builder="autoregressive_spline_flow", **settings)


register_model("maf", maf)
register_model("autoregressive_spline_flow", autoregressive_spline_flow)
