"""The property harness every bijector goes through: `jaxflows.testing`, the same checks users run
on their own layers. A test module lists `BijectorCase`s and parametrizes over `PROPERTIES`:

    @pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_bijector_properties(case, check):
        check(case)

or, where some cases or checks belong to the slow run, over `property_params(CASES, slow=...)`.
"""

from collections.abc import Iterable
from typing import Any

import pytest

from jaxflows import testing
from jaxflows.models import glow
from jaxflows.testing import *  # noqa: F403
from jaxflows.testing import PROPERTIES, BijectorCase

__all__ = [*testing.__all__, "glow_case", "property_params"]


def glow_case(
    name: str, image_shape: tuple[int, ...], case_fields: dict[str, Any] | None = None, **glow_kwargs
) -> BijectorCase:
    """A whole `glow(image_shape, **glow_kwargs)` as a harness case on two images in [0, 1), jit
    against eager within 1e-4 (XLA reorders float32 sums through the levels); `case_fields` set
    the case's other fields or override these."""
    fields = {"data": "unit", "jit_atol": 1e-4, **(case_fields or {})}
    return BijectorCase(name, lambda: glow(image_shape, **glow_kwargs), (2, *image_shape), **fields)


def property_params(
    cases: Iterable[BijectorCase], slow: Iterable[str] = (), slow_checks: Iterable[tuple[str, str]] = ()
) -> list:
    """(case, check) parameters of every case × `PROPERTIES`, id "case-check", marked slow (-m slow)
    for the cases named in `slow` and the (case name, check name) pairs in `slow_checks`."""
    slow, slow_checks = set(slow), set(slow_checks)
    return [
        pytest.param(
            case,
            check,
            id=f"{case.name}-{check.__name__}",
            marks=[pytest.mark.slow]
            if case.name in slow or (case.name, check.__name__) in slow_checks
            else [],
        )
        for case in cases
        for check in PROPERTIES
    ]
