"""The property harness on every Glow / RealNVP / NICE layer and on composition."""

import jax.numpy as jnp
import pytest

from jaxflows.bijectors import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Conv1x1,
    Conv1x1LU,
    LearnedPrior,
    Split,
    Squeeze,
)
from jaxflows.core import Chain, Invert
from tests.harness import PROPERTIES, BijectorCase

CASES = [
    BijectorCase("actnorm", ActNorm, (3, 4, 4, 3)),
    BijectorCase("conv1x1", Conv1x1, (2, 3, 3, 4)),
    BijectorCase("conv1x1_lu", Conv1x1LU, (2, 3, 3, 4)),
    BijectorCase("affine_channel_p0", lambda: AffineCoupling(hidden=8), (2, 4, 4, 4)),
    BijectorCase("affine_channel_p1", lambda: AffineCoupling(hidden=8, parity=1), (2, 4, 4, 3)),
    BijectorCase("affine_checkerboard", lambda: AffineCoupling(hidden=8, mask="checkerboard"), (2, 4, 4, 2)),
    BijectorCase(
        "affine_checkerboard_p1",
        lambda: AffineCoupling(hidden=8, mask="checkerboard", parity=1),
        (2, 4, 4, 1),
    ),
    BijectorCase("additive_channel", lambda: AdditiveCoupling(hidden=8), (2, 4, 4, 4)),
    BijectorCase(
        "additive_checkerboard", lambda: AdditiveCoupling(hidden=8, mask="checkerboard"), (2, 4, 4, 2)
    ),
    BijectorCase("squeeze", Squeeze, (2, 4, 6, 3)),
    BijectorCase("split", Split, (2, 4, 4, 4)),
    BijectorCase("learned_prior", LearnedPrior, (2, 4, 4, 3)),
    # bfloat16 networks, float32 (float64 under x64) maps: every check at full precision
    BijectorCase(
        "affine_bfloat16_network",
        lambda: AffineCoupling(hidden=8, network_dtype=jnp.bfloat16),
        (2, 4, 4, 4),
        jit_atol=5e-2,
    ),
    BijectorCase(
        "split_bfloat16_network", lambda: Split(network_dtype=jnp.bfloat16), (2, 4, 4, 4), jit_atol=5e-2
    ),
    BijectorCase(
        "chain_glow_step",
        lambda: Chain([ActNorm(), Conv1x1LU(), AffineCoupling(hidden=8)]),
        (2, 4, 4, 4),
    ),
    BijectorCase("invert_lu", lambda: Invert(Conv1x1LU()), (2, 3, 3, 4)),
    BijectorCase(
        "chain_with_squeeze",
        lambda: Chain([Squeeze(), ActNorm(), AffineCoupling(hidden=8), Invert(Squeeze())]),
        (2, 4, 4, 1),
    ),
]


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_bijector_properties(case, check):
    check(case)
