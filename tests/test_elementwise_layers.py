"""Element-wise layers (`Logit`, `Sigmoid` = `Invert(Logit())`, `Tanh`, `ElementwiseAffine`): the
property harness, their maths against the formulas, and their ends of range."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import ElementwiseAffine, Logit, Sigmoid, Tanh
from jaxflows.core import Invert
from jaxflows.core.errors import InputDtypeError, InvalidArgumentError, ShapeError
from tests.harness import PROPERTIES, BijectorCase, perturb_params

CASES = [
    BijectorCase("logit", Logit, (3, 4), data="unit"),
    BijectorCase("logit_images", lambda: Logit(alpha=0.05), (2, 2, 2, 1), data="unit"),
    BijectorCase("sigmoid", Sigmoid, (3, 4)),
    BijectorCase("tanh", Tanh, (3, 4)),
    BijectorCase("atanh", lambda: Invert(Tanh()), (3, 4), data="unit"),
    BijectorCase("elementwise_affine", ElementwiseAffine, (3, 4), perturb=0.3),
]


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_elementwise_layer_properties(case, check):
    check(case)


def _run(layer, x, method="forward"):
    return layer.apply(layer.init(jax.random.key(0), x), x, method=method)


def test_logit_is_the_squashed_logit_with_its_log_slope():
    alpha = 0.01
    x = jnp.array([[0.0, 0.25, 0.5, 1.0]])
    u = alpha + (1 - 2 * alpha) * x
    y, log_det = _run(Logit(alpha), x)
    np.testing.assert_allclose(y, jnp.log(u / (1 - u)), rtol=1e-6)
    np.testing.assert_allclose(log_det, jnp.sum(jnp.log((1 - 2 * alpha) / (u * (1 - u)))), rtol=1e-6)
    assert np.isfinite(np.asarray(y)).all()  # x = 0 and x = 1 stay finite with the squash
    default = Logit()
    assert default.alpha == 1e-6
    y0, _ = _run(default, jnp.zeros((1, 1)))
    np.testing.assert_allclose(y0, math.log(1e-6 / (1 - 1e-6)), rtol=1e-6)


def test_sigmoid_is_the_inverse_of_logit():
    sigmoid = Sigmoid(alpha=0.01)
    assert isinstance(sigmoid, Invert) and sigmoid.bijector == Logit(alpha=0.01)
    y = jnp.array([[-3.0, 0.0, 2.0]])
    x, log_det = _run(sigmoid, y)
    np.testing.assert_allclose(x, (jax.nn.sigmoid(y) - 0.01) / 0.98, rtol=1e-6)
    back, log_det_back = _run(Logit(alpha=0.01), x)
    np.testing.assert_allclose(back, y, atol=1e-5)
    np.testing.assert_allclose(log_det, -log_det_back, rtol=1e-5)


def test_tanh_log_det_is_exact_far_from_zero():
    x = jnp.array([[0.3, -2.0, 30.0]])
    y, log_det = _run(Tanh(), x)
    np.testing.assert_allclose(y, jnp.tanh(x), rtol=1e-6)
    with jax.enable_x64(True):
        exact = sum(
            math.log(4.0) - 2 * abs(v) - 2 * math.log1p(math.exp(-2 * abs(v))) for v in [0.3, -2.0, 30.0]
        )
    np.testing.assert_allclose(log_det, exact, rtol=1e-6)  # log(1 − tanh² 30) ≈ −58.6, not −inf
    x_back, log_det_back = _run(Tanh(), jnp.array([[0.5, -0.99]]), method="inverse")
    np.testing.assert_allclose(x_back, jnp.arctanh(jnp.array([[0.5, -0.99]])), rtol=1e-6)
    np.testing.assert_allclose(log_det_back, -jnp.sum(jnp.log(1 - jnp.array([0.25, 0.99**2]))), rtol=1e-5)


def test_elementwise_affine_is_the_identity_at_init_and_learns_per_entry():
    layer = ElementwiseAffine()
    x = jax.random.normal(jax.random.key(0), (3, 2, 2))
    variables = layer.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, variables) == {"params": {"log_scale": (2, 2), "shift": (2, 2)}}
    y, log_det = layer.apply(variables, x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(log_det, 0.0)
    moved = perturb_params(variables, 0.5, jax.random.key(2))
    y, log_det = layer.apply(moved, x)
    scale, shift = jnp.exp(moved["params"]["log_scale"]), moved["params"]["shift"]
    np.testing.assert_allclose(y, x * scale + shift, rtol=1e-6)
    np.testing.assert_allclose(log_det, jnp.sum(moved["params"]["log_scale"]), rtol=1e-6)


def test_named_errors():
    with pytest.raises(InvalidArgumentError, match=r"alpha must be a number in \[0, 0.5\)"):
        Logit(alpha=0.5)
    with pytest.raises(ShapeError, match="rank ≥ 2"):
        _run(Tanh(), jnp.zeros(3))
    with pytest.raises(InputDtypeError):
        _run(Logit(), jnp.zeros((2, 3), jnp.int32))
