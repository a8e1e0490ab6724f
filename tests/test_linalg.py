"""jaxflows.linalg: matrix exponentials against float64 references (Xiao & Liu 2020, Eq. 1)."""

import ast
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxflows.linalg import (
    expm,
    expm_multiply,
    low_rank_expm_multiply,
    phi_multiply,
    series_terms,
)

RNG = np.random.default_rng(0)
expm_jit = jax.jit(expm)


def grad_of(fn):
    """Reverse mode: W, G ↦ d⟨G, fn(W)⟩/dW, jitted."""
    return jax.jit(jax.grad(lambda w, g: jnp.sum(fn(w) * g)))


def jvp_of(fn):
    """Forward mode: W, T ↦ dfn(W)[T], jitted."""
    return jax.jit(lambda w, t: jax.jvp(fn, (w,), (t,))[1])


def relative_error(result, reference) -> float:
    return float(np.linalg.norm(np.asarray(result, np.float64) - reference) / np.linalg.norm(reference))


def with_one_norm(w: np.ndarray, norm: float) -> np.ndarray:
    current = np.linalg.norm(w, 1)
    return w * (norm / current) if current else w


def structured(n: int, norm: float) -> dict[str, np.ndarray]:
    g = RNG.standard_normal((n, n))
    return {
        "random": with_one_norm(g, norm),
        "nilpotent": with_one_norm(np.triu(g, 1), norm),
        "diagonal": np.diag(np.linspace(-norm, norm, n)),
        "skew": with_one_norm(g - g.T, norm),
        "non_normal": np.diag(np.linspace(-norm / 2, norm / 2, n)) + with_one_norm(np.triu(g, 1), norm / 2),
        "rank_one": with_one_norm(np.outer(g[:, 0], g[0]), norm),
    }


@pytest.mark.parametrize("norm", [0.1, 0.5, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("n", [1, 3, 8, 24])
def test_expm_float32_matches_float64_reference(n, norm):
    for kind, w in structured(n, norm).items():
        err = relative_error(expm_jit(jnp.float32(w)), scipy.linalg.expm(w))
        assert err < 1e-5, f"{kind}: relative error {err:.2e}"


def test_expm_float64():
    with jax.enable_x64(True):
        for norm in (0.3, 10.0):
            for kind, w in structured(6, norm).items():
                err = relative_error(expm_jit(jnp.asarray(w, jnp.float64)), scipy.linalg.expm(w))
                assert err < 1e-12, f"{kind}, norm {norm}: relative error {err:.2e}"


def test_expm_batch_and_exact_cases():
    g = RNG.standard_normal((5, 5))
    random = [with_one_norm(RNG.standard_normal((5, 5)), s) for s in (0.01, 2.0, 9.0)]
    ws = np.stack([*random, np.zeros((5, 5)), 2 * (g - g.T)])
    out = np.asarray(expm_jit(jnp.float32(ws)), np.float64)
    assert out.shape == (5, 5, 5)
    for got, w in zip(out, ws, strict=True):
        assert relative_error(got, scipy.linalg.expm(w)) < 1e-5
    np.testing.assert_array_equal(out[3], np.eye(5))
    # exp of a skew-symmetric matrix is a rotation.
    np.testing.assert_allclose(out[4] @ out[4].T, np.eye(5), atol=1e-5)


def test_expm_no_retrace_for_new_values():
    traces = []

    @jax.jit
    def f(w):
        traces.append(1)
        return expm(w)

    rng = np.random.default_rng(7)  # its own stream: the module's RNG depends on test order (xdist)
    for norm in (0.05, 1.0, 10.0, 200.0):
        w = with_one_norm(rng.standard_normal((4, 4)), norm)
        expected = scipy.linalg.expm(w)
        assert np.abs(expected).max() < np.finfo(np.float32).max / 1e3, "the case must fit in float32"
        assert relative_error(f(jnp.float32(w)), expected) < 1e-4
    assert len(traces) == 1


@pytest.mark.parametrize(
    "bad, message",
    [(np.zeros((2, 3)), "square"), (np.zeros(3), "square"), (np.zeros((2, 4, 5)), "square")],
)
def test_expm_rejects_non_square(bad, message):
    with pytest.raises(ValueError, match=message):
        expm(bad)


def test_argument_validation():
    with pytest.raises(ValueError, match="terms"):
        expm(jnp.eye(2), terms=0)
    with pytest.raises(ValueError, match="max_squarings"):
        expm(jnp.eye(2), max_squarings=-1)
    with pytest.raises(ValueError, match="v must have shape"):
        expm_multiply(jnp.eye(3), jnp.ones(4))
    with pytest.raises(ValueError, match="A"):
        low_rank_expm_multiply(jnp.ones((4, 2)), jnp.ones((3, 4)), jnp.ones(4), terms=5)
    with pytest.raises(ValueError, match="norm_bound"):
        series_terms(0.0)


@pytest.mark.parametrize("norm", [0.1, 1.0, 5.0, 10.0])
def test_expm_multiply_matches_expm(norm):
    ws = np.stack([with_one_norm(RNG.standard_normal((6, 6)), norm) for _ in range(3)])
    vs = RNG.standard_normal((3, 6))
    got = jax.jit(expm_multiply)(jnp.float32(ws), jnp.float32(vs))
    assert got.shape == (3, 6)
    dense = jnp.einsum("bij,bj->bi", expm(jnp.float32(ws)), jnp.float32(vs))
    reference = np.stack([scipy.linalg.expm(w) @ v for w, v in zip(ws, vs, strict=True)])
    assert relative_error(got, reference) < 1e-5
    np.testing.assert_allclose(got, dense, rtol=1e-4, atol=1e-4 * float(np.abs(reference).max()))


def test_expm_multiply_broadcasts_one_matrix_over_vectors():
    w = with_one_norm(RNG.standard_normal((5, 5)), 3.0)
    vs = RNG.standard_normal((7, 5))
    got = expm_multiply(jnp.float32(w), jnp.float32(vs))
    assert relative_error(got, vs @ scipy.linalg.expm(w).T) < 1e-5


def test_expm_gradient_matches_jax_scipy():
    ours, ref = grad_of(expm), grad_of(jax.scipy.linalg.expm)
    ours_jvp = jvp_of(expm)
    for norm in (0.2, 3.0, 10.0):
        w = jnp.float32(with_one_norm(RNG.standard_normal((5, 5)), norm))
        cotangent, tangent = jnp.float32(RNG.standard_normal((2, 5, 5)))
        ref_grad = np.asarray(ref(w, cotangent), np.float64)
        assert relative_error(ours(w, cotangent), ref_grad) < 1e-4
        # forward mode goes through the same loops: ⟨G, dexp(W)[T]⟩ = ⟨∇_W⟨G, exp W⟩, T⟩
        lhs = float(jnp.sum(ours_jvp(w, tangent) * cotangent))
        rhs = float(np.sum(ref_grad * np.asarray(tangent)))
        assert abs(lhs - rhs) <= 1e-4 * np.linalg.norm(ref_grad) * np.linalg.norm(tangent)


def test_expm_gradient_float64_against_block_identity():
    """d/dW ⟨G, exp(W)⟩ = top-right block of exp([[Wᵀ, G], [0, Wᵀ]]) (Van Loan 1978)."""
    with jax.enable_x64(True):
        w = with_one_norm(RNG.standard_normal((4, 4)), 4.0)
        g = RNG.standard_normal((4, 4))
        ours = grad_of(expm)(jnp.asarray(w), jnp.asarray(g))
        block = scipy.linalg.expm(np.block([[w.T, g], [np.zeros((4, 4)), w.T]]))[:4, 4:]
        assert relative_error(ours, block) < 1e-11


@pytest.mark.parametrize("n, rank", [(6, 1), (6, 2), (12, 4)])
def test_low_rank_identity_matches_dense(n, rank):
    a = 0.4 * RNG.standard_normal((3, n, rank))
    b = 0.4 * RNG.standard_normal((3, rank, n))
    v = RNG.standard_normal((3, n))
    reference = np.stack([scipy.linalg.expm(ai @ bi) @ vi for ai, bi, vi in zip(a, b, v, strict=True)])
    assert np.abs(reference - v).max() > 0.1  # the exponential is far from the identity
    bound = max(np.linalg.norm(bi @ ai, np.inf) for ai, bi in zip(a, b, strict=True))
    got = low_rank_expm_multiply(jnp.float32(a), jnp.float32(b), jnp.float32(v), terms=series_terms(bound))
    assert relative_error(got, reference) < 1e-5


def test_phi_multiply_float64():
    with jax.enable_x64(True):
        m = with_one_norm(RNG.standard_normal((3, 3)), 2.0)
        u = RNG.standard_normal(3)
        reference = np.linalg.solve(m, (scipy.linalg.expm(m) - np.eye(3)) @ u)  # (exp M − I) M⁻¹ u
        got = phi_multiply(jnp.asarray(m), jnp.asarray(u), series_terms(2.0, jnp.float64))
        assert relative_error(got, reference) < 1e-13


def test_series_terms_reaches_tolerance():
    for bound in (0.5, 2.0, 6.0):
        for dtype, tol in ((jnp.float32, 1e-9), (jnp.float64, 1e-17)):
            m = series_terms(bound, dtype)
            remainder = lambda k, b=bound: b ** (k + 1) / math.factorial(k + 2)
            assert remainder(m) <= tol < remainder(m - 1)


def test_linalg_imports_no_higher_layer():
    root = pathlib.Path(__file__).resolve().parents[1] / "jaxflows" / "linalg"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("jaxflows.bijectors", "jaxflows.models", "jaxflows.train")), (
                    f"{path.name} imports {name}"
                )
