"""The property harness on every Glow / RealNVP / NICE layer and on composition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Conv1x1,
    Conv1x1LU,
    LearnedPrior,
    ReversePermutation,
    ShufflePermutation,
    Split,
    Squeeze,
)
from jaxflows.core import Chain, Invert
from tests.harness import BijectorCase, property_params

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
    BijectorCase("reverse_permutation", ReversePermutation, (2, 3, 3, 5)),
    BijectorCase("shuffle_permutation", ShufflePermutation, (2, 3, 3, 5)),
    BijectorCase("split", Split, (2, 4, 4, 4)),
    BijectorCase("learned_prior", LearnedPrior, (2, 4, 4, 3)),
    # bfloat16 networks, float32 (float64 under x64) maps: every check at full precision but two. jit_atol
    # bounds jit against eager outputs of order 1-10 whose shift and scale each went through a bfloat16
    # network (2⁻⁸ ≈ 4e-3 relative per rounding) fused differently (measured ≤ 2.7e-3); finite
    # differences of a function rounded to 8 bits are not its derivative (finite_differences=False).
    BijectorCase(
        "affine_bfloat16_network",
        lambda: AffineCoupling(hidden=8, network_dtype=jnp.bfloat16),
        (2, 4, 4, 4),
        jit_atol=1e-2,
        finite_differences=False,
    ),
    BijectorCase(
        "split_bfloat16_network",
        lambda: Split(network_dtype=jnp.bfloat16),
        (2, 4, 4, 4),
        jit_atol=1e-2,
        finite_differences=False,
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


# -m slow: the checkerboard at parity 1 (affine_checkerboard and affine_channel_p1 cover the mask
# and the parity) and a chain with a squeeze (chain_glow_step and squeeze cover both)
SLOW = {"affine_checkerboard_p1", "chain_with_squeeze"}


@pytest.mark.parametrize(("case", "check"), property_params(CASES, slow=SLOW))
def test_bijector_properties(case, check):
    check(case)


def test_permutations_move_channels_exactly():
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 5))
    y, log_det = ReversePermutation().apply({}, x)
    np.testing.assert_array_equal(y, x[..., ::-1])
    np.testing.assert_array_equal(log_det, 0.0)

    shuffle = ShufflePermutation()
    variables = shuffle.init(jax.random.key(1), x)
    assert set(variables) == {"constants"}  # nothing to train
    order = np.asarray(variables["constants"]["permutation"])
    assert sorted(order) == list(range(5)) and list(order) != list(range(5))
    other = np.asarray(shuffle.init(jax.random.key(2), x)["constants"]["permutation"])
    assert list(other) != list(order)  # drawn from the init key
    y, _ = shuffle.apply(variables, x)
    np.testing.assert_array_equal(y, x[..., order])
    np.testing.assert_array_equal(shuffle.apply(variables, y, method="inverse")[0], x)  # bit-exact
    with pytest.raises(ValueError, match="initialised for 5 channels, got 4"):
        shuffle.apply(variables, x[..., :4])


def test_couplings_are_one_layer_with_a_transformer():
    from jaxflows.bijectors import AdditiveTransformer, AffineTransformer, Coupling

    assert AffineCoupling(16).hidden == 16  # `hidden` is still the first positional field
    assert AffineCoupling().transformer == AffineTransformer()
    assert AdditiveCoupling().transformer == AdditiveTransformer()
    with pytest.raises(ValueError, match="needs a transformer"):
        Coupling(hidden=4)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    by_hand = Coupling(hidden=8, transformer=AffineTransformer())
    variables = AffineCoupling(hidden=8).init(jax.random.key(1), x)
    np.testing.assert_array_equal(
        by_hand.apply(variables, x)[0], AffineCoupling(hidden=8).apply(variables, x)[0]
    )
