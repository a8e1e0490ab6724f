"""Assertions whose failure says which check failed, on what quantity, by how much, and where."""

from __future__ import annotations

import numpy as np

from jaxflows.core.errors import JaxflowsError


class PropertyCheckError(JaxflowsError, AssertionError):
    """A bijector failed one of `jaxflows.testing`'s property checks."""


def require(condition: bool, check: str, message: str) -> None:
    """Raise `PropertyCheckError` "check: message" unless `condition`."""
    if not condition:
        raise PropertyCheckError(f"{check}: {message}")


def assert_close(
    actual, expected, *, check: str, quantity: str, rtol: float = 0.0, atol: float = 0.0
) -> None:
    """|actual − expected| ≤ atol + rtol·|expected| elementwise (NumPy's rule), else a
    `PropertyCheckError` with the worst element, its index and the tolerance there."""
    actual = np.asarray(actual, np.float64)
    expected = np.broadcast_to(np.asarray(expected, np.float64), actual.shape)
    error = np.abs(actual - expected)
    allowed = atol + rtol * np.abs(expected)
    bad = ~(error <= allowed)  # NaN counts as a failure
    if not bad.any():
        return
    excess = np.where(np.isnan(error), np.inf, error - allowed)
    worst = np.unravel_index(int(np.argmax(excess)), error.shape) if error.ndim else ()
    raise PropertyCheckError(
        f"{check}: {quantity}: {int(bad.sum())} of {error.size} element(s) outside the tolerance "
        f"atol={atol:.3g} + rtol={rtol:.3g}·|expected|; worst at index {tuple(int(i) for i in worst)}: "
        f"got {actual[worst]:.10g}, expected {expected[worst]:.10g} (|difference| {error[worst]:.3g}, "
        f"allowed {allowed[worst]:.3g})"
    )
