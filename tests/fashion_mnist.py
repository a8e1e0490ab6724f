"""Tests that need Fashion-MNIST call `require_fashion_mnist()`: where it is not installed they are
skipped on a developer's machine, and fail with a message saying what to install where CI is meant
to have it (`CI=true`, or `JAXFLOWS_REQUIRE_FASHION_MNIST=1`): a skipped check of the headline
numbers must not pass CI unnoticed."""

import os

import pytest

from jaxflows.data import fashion_mnist_available

INSTALL = (
    "Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist` (Debian's package, the "
    "idx files in /usr/share/datasets/fashion-mnist; `./run.sh train` installs it when run as root)"
)


def fashion_mnist_required() -> bool:
    """Whether this run is meant to have Fashion-MNIST (CI, or asked for)."""
    flag = lambda name: os.environ.get(name, "").strip().lower() in ("1", "true", "yes")
    return flag("CI") or flag("JAXFLOWS_REQUIRE_FASHION_MNIST")


def require_fashion_mnist() -> None:
    """Return if Fashion-MNIST is installed; else fail where it is required, skip elsewhere."""
    if fashion_mnist_available():
        return
    if fashion_mnist_required():
        pytest.fail(f"{INSTALL}; this run requires it (CI=true or JAXFLOWS_REQUIRE_FASHION_MNIST=1)")
    pytest.skip(INSTALL)
