"""Bijectors, one family per file (Glow, RealNVP/NICE, Emerging, Matrix Exponential, planar and Sylvester)."""

from jaxflows.bijectors.actnorm import ActNorm
from jaxflows.bijectors.autoregressive import MaskedAutoregressive
from jaxflows.bijectors.continuous import ContinuousFlow
from jaxflows.bijectors.conv1x1 import (
    Conv1x1,
    Conv1x1LU,
    InvertibleConv1x1,
    LULinear,
    apply_1x1,
    random_rotation,
)
from jaxflows.bijectors.conv1x1_qr import Conv1x1QR
from jaxflows.bijectors.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    CouplingMLP,
    CouplingNetwork,
)
from jaxflows.bijectors.elementwise import ElementwiseBijector, ScalarAffine, Shift
from jaxflows.bijectors.elementwise_layers import ElementwiseAffine, Logit, Sigmoid, Tanh
from jaxflows.bijectors.emerging import EmergingConv
from jaxflows.bijectors.made import MADE, MaskedDense
from jaxflows.bijectors.masks import (
    BoardMask,
    ChannelMask,
    CheckerboardMask,
    HorizontalStripeMask,
    VerticalStripeMask,
)
from jaxflows.bijectors.matrix_exp import (
    MatrixExpAffine,
    MatrixExpConv1x1,
    MatrixExpCoupling,
    MatrixExpTransformer,
    PixelExponential,
)
from jaxflows.bijectors.patchify import Patchify, patchify, unpatchify
from jaxflows.bijectors.periodic import PeriodicConv
from jaxflows.bijectors.permutation import ChannelPermutation, ReversePermutation, ShufflePermutation
from jaxflows.bijectors.planar import Planar, RootFindingBijector
from jaxflows.bijectors.rescale import Rescale
from jaxflows.bijectors.residual import InvertibleResidual
from jaxflows.bijectors.spline import RationalQuadraticMap, RationalQuadraticSpline
from jaxflows.bijectors.split import LearnedPrior, Split
from jaxflows.bijectors.squeeze import Squeeze, squeeze2d, unsqueeze2d
from jaxflows.bijectors.sylvester import Sylvester
from jaxflows.bijectors.tarflow import CausalTransformer, MixedDense, PatchTokens
from jaxflows.bijectors.transformers import AdditiveTransformer, AffineTransformer, Transformer
from jaxflows.bijectors.vit import ViTBlock, ViTConditioner

__all__ = [
    "MADE",
    "ActNorm",
    "AdditiveCoupling",
    "AdditiveTransformer",
    "AffineCoupling",
    "AffineTransformer",
    "BoardMask",
    "CausalTransformer",
    "ChannelMask",
    "ChannelPermutation",
    "CheckerboardMask",
    "ContinuousFlow",
    "Conv1x1",
    "Conv1x1LU",
    "Conv1x1QR",
    "Coupling",
    "CouplingMLP",
    "CouplingNetwork",
    "ElementwiseAffine",
    "ElementwiseBijector",
    "EmergingConv",
    "HorizontalStripeMask",
    "InvertibleConv1x1",
    "InvertibleResidual",
    "LULinear",
    "LearnedPrior",
    "Logit",
    "MaskedAutoregressive",
    "MaskedDense",
    "MatrixExpAffine",
    "MatrixExpConv1x1",
    "MatrixExpCoupling",
    "MatrixExpTransformer",
    "MixedDense",
    "PatchTokens",
    "Patchify",
    "PeriodicConv",
    "PixelExponential",
    "Planar",
    "RationalQuadraticMap",
    "RationalQuadraticSpline",
    "Rescale",
    "ReversePermutation",
    "RootFindingBijector",
    "ScalarAffine",
    "Shift",
    "ShufflePermutation",
    "Sigmoid",
    "Split",
    "Squeeze",
    "Sylvester",
    "Tanh",
    "Transformer",
    "VerticalStripeMask",
    "ViTBlock",
    "ViTConditioner",
    "apply_1x1",
    "patchify",
    "random_rotation",
    "squeeze2d",
    "unpatchify",
    "unsqueeze2d",
]
