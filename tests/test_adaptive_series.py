"""The adaptive-length series of the official MEF code: accuracy across norms and dtypes, series
lengths, tracing, arguments. Exact cases, gradients and φ: tests/test_linalg.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxflows.linalg import default_tolerance, expm_adaptive, inf_norm, phi_adaptive
from tests.test_linalg import relative_error, structured

expm_jit = jax.jit(lambda w: expm_adaptive(w))


@pytest.mark.parametrize("norm", [0.01, 0.5, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("n", [1, 2, 6, 24])
def test_float32_matches_float64_scipy(n, norm):
    for kind, w in structured(n, norm).items():
        result, terms = expm_jit(jnp.float32(w))
        err = relative_error(result, scipy.linalg.expm(w))
        assert err < 1e-5, f"{kind}: relative error {err:.2e}"
        assert (1 if w.any() else 0) <= int(terms) <= 16


def test_float64_with_a_float64_tolerance():
    with jax.enable_x64(True):
        for norm in (0.3, 10.0):
            for kind, w in structured(6, norm).items():
                result, _ = expm_adaptive(jnp.asarray(w, jnp.float64), tolerance=1e-16)
                err = relative_error(result, scipy.linalg.expm(w))
                assert err < 1e-12, f"{kind}, norm {norm}: relative error {err:.2e}"


def test_terms_stop_at_the_tolerance_like_the_official_loop():
    """m is the last power whose term's ‖·‖∞ exceeds the tolerance (after scaling to ‖W‖∞ ≤ 1/2)."""
    rng = np.random.default_rng(3)
    ws = np.stack([rng.standard_normal((4, 4)) * s for s in (1e-9, 1e-3, 0.05, 0.3, 3.0)])
    _, terms = expm_jit(jnp.float32(ws))
    for w, m in zip(ws, np.asarray(terms), strict=True):
        squarings = max(0, int(np.ceil(np.log2(max(np.abs(w).sum(1).max(), 0.5)))) + 1)
        scaled, term, expected = w / 2**squarings, np.eye(4), 0
        for k in range(1, 17):
            term = scaled @ term / k
            if np.abs(term).sum(1).max() <= 1e-8:
                break
            expected = k
        assert int(m) == expected
    assert int(terms[0]) == 0  # a term below the tolerance from the start: exp(W) ≈ I


def test_no_retrace_for_new_values_and_batched_terms():
    traces = []

    @jax.jit
    def f(w):
        traces.append(1)
        return expm_adaptive(w)

    rng = np.random.default_rng(11)
    for norm in (0.05, 1.0, 10.0):
        w = rng.standard_normal((3, 5, 5))
        w = w * norm / inf_norm(jnp.asarray(w)).max()
        result, terms = f(jnp.float32(w))
        assert terms.shape == (3,)
        for got, one in zip(np.asarray(result), w, strict=True):
            assert relative_error(got, scipy.linalg.expm(one)) < 1e-5
    assert len(traces) == 1


@pytest.mark.parametrize("norm", [0.1, 2.0, 10.0])
def test_phi_matches_its_definition(norm):
    """φ(M) = M⁻¹(exp(M) − I), from one exponential of a block matrix: accurate at any norm."""
    m = np.random.default_rng(8).standard_normal((3, 3))
    m = m * norm / np.abs(m).sum(1).max()
    expected = np.linalg.solve(m, scipy.linalg.expm(m) - np.eye(3))
    result, _ = phi_adaptive(jnp.float32(m))
    assert relative_error(result, expected) < 1e-5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tolerance=0.0), "tolerance"),
        (dict(max_terms=0), "max_terms"),
        (dict(max_squarings=-1), "max_squarings"),
        (dict(max_squarings=1.5), "max_squarings"),
    ],
)
def test_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        expm_adaptive(jnp.eye(2), **kwargs)
    with pytest.raises(ValueError, match=message):
        phi_adaptive(jnp.eye(2), **kwargs)


def test_default_tolerance_follows_the_dtype():
    assert default_tolerance(jnp.float32) == 1e-8  # the official code's
    with jax.enable_x64(True):
        w = jnp.asarray(np.random.default_rng(4).standard_normal((3, 3)))
        _, terms32 = expm_adaptive(w.astype(jnp.float32))
        _, terms64 = expm_adaptive(w)
        assert int(terms64) > int(terms32)  # float64 runs to 1e-16: more terms
        np.testing.assert_array_equal(expm_adaptive(w)[0], expm_adaptive(w, tolerance=1e-16)[0])
