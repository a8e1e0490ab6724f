"""The property harness every bijector goes through: `jaxflows.testing`, the same checks users run
on their own layers. A test module lists `BijectorCase`s and parametrizes over `PROPERTIES`:

    @pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_bijector_properties(case, check):
        check(case)
"""

from jaxflows import testing
from jaxflows.testing import *  # noqa: F403

__all__ = testing.__all__
