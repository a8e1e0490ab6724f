"""Tests that need Fashion-MNIST call `require_fashion_mnist()`. Where the run is meant to have it
they fail, saying what to install, rather than skip: a skipped check of the headline numbers must not
pass CI unnoticed. It is meant to be there under CI (`CI=true`) and for root, since `./run.sh test`
and `./run.sh train` install Debian's package as root (CI runs as root);
`JAXFLOWS_REQUIRE_FASHION_MNIST=1` or `=0` overrides both. Elsewhere the tests are skipped."""

import os

import pytest

from jaxflows.data import fashion_mnist_available

INSTALL = (
    "Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist` (Debian's package, the "
    "idx files in /usr/share/datasets/fashion-mnist; `./run.sh test` installs it when run as root)"
)
TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")


def fashion_mnist_required() -> bool:
    """Whether this run is meant to have Fashion-MNIST."""
    asked = os.environ.get("JAXFLOWS_REQUIRE_FASHION_MNIST", "").strip().lower()
    if asked in TRUE + FALSE:
        return asked in TRUE
    return os.environ.get("CI", "").strip().lower() in TRUE or os.geteuid() == 0


def require_fashion_mnist() -> None:
    """Return if Fashion-MNIST is installed; else fail where it is required, skip elsewhere."""
    if fashion_mnist_available():
        return
    if fashion_mnist_required():
        pytest.fail(
            f"{INSTALL}. This run is meant to have it (CI=true or root); "
            "JAXFLOWS_REQUIRE_FASHION_MNIST=0 skips instead"
        )
    pytest.skip(INSTALL)
