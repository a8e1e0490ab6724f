"""The property harness on whole multi-scale models, one per layer choice."""

import pytest

from jaxflows.models import glow
from tests.harness import PROPERTIES, BijectorCase

CASES = [
    BijectorCase(
        "glow_lu_affine",
        lambda: glow((4, 4, 2), levels=2, steps=2, hidden=8),
        (2, 4, 4, 2),
        data="unit",
        jit_atol=1e-4,
    ),
    BijectorCase(
        "glow_plain_additive",
        lambda: glow((4, 4, 1), levels=2, steps=1, hidden=8, conv="plain", coupling="additive"),
        (2, 4, 4, 1),
        data="unit",
        jit_atol=1e-4,
    ),
    BijectorCase(
        "realnvp_checkerboard",
        lambda: glow((4, 4, 1), levels=1, steps=2, hidden=8, mask="checkerboard"),
        (2, 4, 4, 1),
        data="unit",
        jit_atol=1e-4,
    ),
]


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_model_properties(case, check):
    check(case)
