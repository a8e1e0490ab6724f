"""Bijectors, one family per file (Glow, RealNVP/NICE, Emerging, Matrix Exponential)."""

from jaxflows.bijectors.actnorm import ActNorm
from jaxflows.bijectors.conv1x1 import (
    Conv1x1,
    Conv1x1LU,
    InvertibleConv1x1,
    apply_1x1,
    random_rotation,
)
from jaxflows.bijectors.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ChannelMask,
    CheckerboardMask,
    Coupling,
    CouplingNetwork,
)
from jaxflows.bijectors.split import LearnedPrior, Split, whiten
from jaxflows.bijectors.squeeze import Squeeze, squeeze2d, unsqueeze2d

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "ChannelMask",
    "CheckerboardMask",
    "Conv1x1",
    "Conv1x1LU",
    "Coupling",
    "CouplingNetwork",
    "InvertibleConv1x1",
    "LearnedPrior",
    "Split",
    "Squeeze",
    "apply_1x1",
    "random_rotation",
    "squeeze2d",
    "unsqueeze2d",
    "whiten",
]
