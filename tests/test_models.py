"""The property harness on whole multi-scale models, one per layer choice."""

import jax.numpy as jnp
import pytest

from tests.harness import glow_case, property_params

# The default run checks the composition on glow_lu_affine; the other layer choices' compositions
# run with -m slow (each of their layers has its own default-run case in test_glow_layers.py:
# plain/reverse/shuffle mixing, additive coupling, checkerboard masks, bfloat16 networks).
CASES = [
    glow_case("glow_lu_affine", (4, 4, 2), levels=2, depth=2, hidden=8),
    glow_case(
        "glow_plain_additive", (4, 4, 1), levels=2, depth=1, hidden=8, conv="plain", coupling="additive"
    ),
    glow_case(
        "glow_reverse_additive", (4, 4, 2), levels=2, depth=2, hidden=8, conv="reverse", coupling="additive"
    ),
    glow_case("glow_shuffle_affine", (4, 4, 2), levels=2, depth=2, hidden=8, conv="shuffle"),
    glow_case("realnvp_checkerboard", (4, 4, 1), levels=1, depth=2, hidden=8, mask="checkerboard"),
    # bfloat16 networks: the maps stay float32 (float64 under x64), so the round trip and the
    # log-det antisymmetry are as exact as with float32 networks. The dense float64 jacobian of a
    # composition pushes tangents through the bfloat16 networks, rounding them, so it matches the
    # log-det to that rounding (each layer alone matches to 1e-10: test_glow_layers); jit against
    # eager differs by the networks' bfloat16 rounding in other fusions (2⁻⁸ ≈ 4e-3 relative per
    # rounding, on outputs of order 1-10: jit_atol, measured 1e-3); finite differences of the rounded
    # map are not its derivative.
    glow_case(
        "glow_bfloat16_networks",
        (4, 4, 2),
        {"jit_atol": 1e-2, "jacobian_rtol": 3e-4, "finite_differences": False},
        levels=2,
        depth=2,
        hidden=8,
        network_dtype=jnp.bfloat16,
    ),
]
SLOW = {
    "glow_plain_additive",
    "glow_reverse_additive",
    "glow_shuffle_affine",
    "realnvp_checkerboard",
    "glow_bfloat16_networks",  # bfloat16 networks: test_glow_layers' affine and split cases
}


@pytest.mark.parametrize(("case", "check"), property_params(CASES, slow=SLOW))
def test_model_properties(case, check):
    check(case)
