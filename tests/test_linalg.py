"""jaxflows.linalg: the layers' matrix exponential (`expm_adaptive`, scaling and squaring around an
adaptive series; Xiao & Liu 2020, Eq. 1) and φ against float64 references: exact cases, gradients
in both modes, the low-rank identity. Series lengths and tracing: tests/test_adaptive_series.py."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxflows.linalg import expm_adaptive, phi_adaptive

RNG = np.random.default_rng(0)


def expm(w):
    return expm_adaptive(w)[0]


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


def test_batch_and_exact_cases():
    # its own generator: drawn from the module's, the order xdist runs tests in picked the matrices,
    # and some norm-200 draws have an exponential beyond float32 (1e45 and 1e55 for seeds 1 and 4)
    rng = np.random.default_rng(0)
    g = rng.standard_normal((5, 5))
    random = [with_one_norm(rng.standard_normal((5, 5)), s) for s in (0.01, 2.0, 9.0, 200.0)]
    ws = np.stack([*random, np.zeros((5, 5)), 2 * (g - g.T)])
    out = np.asarray(expm_jit(jnp.float32(ws)), np.float64)
    assert out.shape == (6, 5, 5)
    for got, w in zip(out, ws, strict=True):
        assert relative_error(got, scipy.linalg.expm(w)) < 1e-4
    np.testing.assert_array_equal(out[4], np.eye(5))  # exp(0) = I exactly: no term, no squaring
    np.testing.assert_allclose(out[5] @ out[5].T, np.eye(5), atol=1e-5)  # exp(skew) is a rotation


def test_exp_of_minus_w_inverts_and_log_det_is_the_trace():
    w = jnp.float32(with_one_norm(RNG.standard_normal((6, 6)), 4.0))
    np.testing.assert_allclose(expm(w) @ expm(-w), np.eye(6), atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.slogdet(expm(w))[1], jnp.trace(w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros(3), np.zeros((2, 4, 5))], ids=str)
def test_rejects_non_square(bad):
    with pytest.raises(ValueError, match="square"):
        expm_adaptive(bad)
    with pytest.raises(ValueError, match="square"):
        phi_adaptive(bad)


def test_integer_matrices_are_exponentiated_as_floats():
    got = expm(jnp.asarray([[0, 1], [0, 0]]))
    assert jnp.issubdtype(got.dtype, jnp.floating)
    np.testing.assert_allclose(got, [[1.0, 1.0], [0.0, 1.0]])


def test_gradient_matches_jax_scipy_in_both_modes():
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


def test_gradient_float64_against_block_identity():
    """d/dW ⟨G, exp(W)⟩ = top-right block of exp([[Wᵀ, G], [0, Wᵀ]]) (Van Loan 1978)."""
    with jax.enable_x64(True):
        w = with_one_norm(RNG.standard_normal((4, 4)), 4.0)
        g = RNG.standard_normal((4, 4))
        ours = grad_of(expm)(jnp.asarray(w), jnp.asarray(g))
        block = scipy.linalg.expm(np.block([[w.T, g], [np.zeros((4, 4)), w.T]]))[:4, 4:]
        assert relative_error(ours, block) < 1e-11


@pytest.mark.parametrize("n, rank", [(6, 1), (6, 2), (12, 4)])
def test_low_rank_identity_matches_dense(n, rank):
    """exp(A B) v = v + A φ(B A) B v (MEF Sec. 4.2), with φ of the t×t matrix B A only."""
    a = 0.4 * RNG.standard_normal((3, n, rank))
    b = 0.4 * RNG.standard_normal((3, rank, n))
    v = RNG.standard_normal((3, n))
    reference = np.stack([scipy.linalg.expm(ai @ bi) @ vi for ai, bi, vi in zip(a, b, v, strict=True)])
    assert np.abs(reference - v).max() > 0.1  # the exponential is far from the identity
    a, b, v = jnp.float32(a), jnp.float32(b), jnp.float32(v)
    phi, _ = phi_adaptive(b @ a)
    got = v + jnp.einsum("...ij,...j->...i", a, jnp.einsum("...ij,...j->...i", phi @ b, v))
    assert relative_error(got, reference) < 1e-5


def test_phi_float64():
    with jax.enable_x64(True):
        m = with_one_norm(RNG.standard_normal((3, 3)), 2.0)
        reference = np.linalg.solve(m, scipy.linalg.expm(m) - np.eye(3))  # M⁻¹(exp M − I)
        got, _ = phi_adaptive(jnp.asarray(m))  # float64: tolerance 1e-16 by default
        assert relative_error(got, reference) < 1e-13


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
