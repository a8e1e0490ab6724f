"""The transformers' scale laws (`AffineTransformer(scale=...)`), their maths against the papers'
formulas, couplings built on each law through the harness, and the entry-wise declaration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import (
    AdditiveTransformer,
    AffineTransformer,
    Coupling,
    MatrixExpTransformer,
    RationalQuadraticSpline,
)
from jaxflows.core.errors import InvalidArgumentError
from tests.harness import PROPERTIES, BijectorCase

X = jnp.array([[0.3, -1.2, 2.0]])
H_T = jnp.array([[0.5, -0.7, 0.1]])
H_S = jnp.array([[-1.1, 0.4, 2.5]])
H = jnp.stack([H_T, H_S], axis=-1).reshape(1, 6)  # interleaved: each entry's (h_t, h_s) contiguous


@pytest.mark.parametrize(
    ("scale", "expected_y", "expected_log_s"),
    [
        ("sigmoid", jax.nn.sigmoid(H_S + 2) * X + H_T, jnp.log(jax.nn.sigmoid(H_S + 2))),
        ("exp", (X - H_T) * jnp.exp(-H_S), -H_S),
        ("jet", (X + H_T) * 2 * jax.nn.sigmoid(H_S), jnp.log(2 * jax.nn.sigmoid(H_S))),
    ],
)
def test_scale_laws_follow_their_papers(scale, expected_y, expected_log_s):
    law = AffineTransformer(scale=scale)(H, 3)
    y, log_s = law.forward_and_log_det(X)
    np.testing.assert_allclose(y, expected_y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jnp.broadcast_to(log_s, X.shape), expected_log_s, rtol=1e-6, atol=1e-6)
    x_back, log_s_inverse = law.inverse_and_log_det(y)
    np.testing.assert_allclose(x_back, X, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_s_inverse, -log_s, rtol=1e-6)


@pytest.mark.parametrize("scale", ["exp", "jet"])
def test_exp_and_jet_laws_are_the_identity_at_zero(scale):
    y, log_s = AffineTransformer(scale=scale)(jnp.zeros((1, 6)), 3).forward_and_log_det(X)
    np.testing.assert_allclose(y, X, atol=1e-7)
    np.testing.assert_allclose(log_s, 0.0, atol=1e-7)


def test_the_exp_law_soft_clamps_alpha_with_a_bound():
    law = AffineTransformer(scale="exp", alpha_bound=2.0)(H, 3)
    alpha = 2.0 * jnp.tanh(H_S / 2.0)
    y, log_s = law.forward_and_log_det(X)
    np.testing.assert_allclose(y, (X - H_T) * jnp.exp(-alpha), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jnp.broadcast_to(log_s, X.shape), -alpha, rtol=1e-6, atol=1e-7)
    huge = AffineTransformer(scale="exp", alpha_bound=2.0)(jnp.full((1, 6), -1e4), 3)
    assert float(jnp.max(huge.forward_and_log_det(X)[1])) <= 2.0
    for bad in ({"scale": "sigmoid", "alpha_bound": 2.0}, {"scale": "exp", "alpha_bound": 0.0}):
        with pytest.raises(InvalidArgumentError, match="alpha_bound"):
            AffineTransformer(**bad)


def test_the_default_law_is_glows():
    assert AffineTransformer() == AffineTransformer(scale="sigmoid")
    with pytest.raises(InvalidArgumentError, match="scale must be one of"):
        AffineTransformer(scale="softplus")


def test_transformers_declare_whether_they_act_entry_by_entry():
    assert AffineTransformer.entrywise and AdditiveTransformer.entrywise
    assert RationalQuadraticSpline.entrywise
    assert not MatrixExpTransformer.entrywise


CASES = [
    BijectorCase(
        f"coupling_{scale}",
        lambda scale=scale: Coupling(hidden=8, transformer=AffineTransformer(scale=scale)),
        (3, 4),
        perturb=0.2,
    )
    for scale in ("exp", "jet")
]


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_couplings_with_each_scale_law(case, check):
    check(case)
