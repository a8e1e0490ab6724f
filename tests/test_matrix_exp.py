"""Matrix Exponential Flows (Xiao & Liu 2020): the property harness, dense references, the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxflows.bijectors import MatrixExpConv1x1, MatrixExpCoupling
from jaxflows.models import glow
from jaxflows.train.config import TrainConfig, load_config
from tests.harness import PROPERTIES, BijectorCase, setup_case

TINY_MODEL = dict(levels=2, steps=1, hidden=8, conv="matrix_exp", coupling="matrix_exp")

# Shapes repeat across cases and tests: eager (op-by-op) execution compiles once per shape.
COUPLING_CASES = [
    BijectorCase(
        "mexp_coupling_rank1", lambda: MatrixExpCoupling(hidden=8, rank=1), (2, 3, 3, 4), perturb=0.5
    ),
    BijectorCase(
        "mexp_coupling_rank3_p1_bound5",
        lambda: MatrixExpCoupling(hidden=8, rank=3, parity=1, bound=5.0),
        (2, 3, 3, 6),
        perturb=0.5,
    ),
]
CASES = [
    BijectorCase("mexp_conv", lambda: MatrixExpConv1x1(init_scale=0.5), (2, 3, 3, 4), perturb=0.3),
    *COUPLING_CASES,
    BijectorCase("mef_model_4x4x2", lambda: glow((4, 4, 2), **TINY_MODEL), (2, 4, 4, 2), data="unit"),
]


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_bijector_properties(case, check):
    check(case)


def coupling_factors(module, variables, x):
    """The per-pixel shift, A₁ and A₂ the coupling uses on x (network output → factors)."""
    bound = module.bind(variables)
    active, cond = bound._mask().split(x)
    h = bound._conditioner(cond, bound.num_params(active.shape[-1]))
    return active, bound.factors(h, active.shape[-1])


@pytest.mark.parametrize("case", COUPLING_CASES, ids=str)
def test_coupling_matches_dense_expm(case):
    """y_b = expm(S) x_b + b with a dense scipy expm of S = A₁A₂ per pixel; log_det = Σ tr S."""
    module, variables, x = setup_case(case)
    y, log_det = module.apply(variables, x)
    active, (shift, a1, a2) = coupling_factors(module, variables, x)
    s = np.einsum("...it,...tj->...ij", np.float64(a1), np.float64(a2))
    dense_exp = np.vectorize(scipy.linalg.expm, signature="(n,n)->(n,n)")(s)
    assert np.abs(dense_exp - np.eye(s.shape[-1])).max() > 1e-2, "S is too small to test anything"
    expected = np.einsum("...ij,...j->...i", dense_exp, np.float64(active)) + np.float64(shift)
    y_active = module.bind(variables)._mask().split(y)[0]
    np.testing.assert_allclose(y_active, expected, rtol=1e-5, atol=1e-5)
    dense_log_det = np.linalg.slogdet(dense_exp)[1].reshape(x.shape[0], -1).sum(-1)
    trace_sum = np.trace(s, axis1=-2, axis2=-1).reshape(x.shape[0], -1).sum(-1)
    np.testing.assert_allclose(log_det, dense_log_det, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_det, trace_sum, rtol=1e-5, atol=1e-5)


def test_coupling_scale_is_bounded():
    """Huge network outputs saturate the tanh: ‖A₁A₂‖_∞ ≤ bound and the inverse stays exact."""
    _, variables, x = setup_case(COUPLING_CASES[1])  # same parameter shapes, tighter bound
    module = MatrixExpCoupling(hidden=8, rank=3, parity=1, bound=2.0)
    # Blow up the network outputs for A₁ and A₂ (not the shift b, whose size is unrelated).
    conv_out = variables["params"]["network"]["conv_out"]
    gain = jnp.ones(conv_out["bias"].shape).at[3:].set(100.0)
    conv_out = {"kernel": conv_out["kernel"] * gain + 3.0 * (gain - 1), "bias": conv_out["bias"] * gain}
    variables = {
        "params": {**variables["params"], "network": {**variables["params"]["network"], "conv_out": conv_out}}
    }
    _, (_, a1, a2) = coupling_factors(module, variables, x)
    norms = jnp.max(jnp.sum(jnp.abs(a1 @ a2), axis=-1), axis=-1)
    assert float(norms.max()) <= 2.0 + 1e-5
    assert float(norms.max()) > 1.0  # saturated, not trivially small
    y, _ = module.apply(variables, x)
    x_back, _ = module.apply(variables, y, method="inverse")
    np.testing.assert_allclose(x_back, x, atol=1e-4)


def test_coupling_starts_as_identity_and_learns_s():
    """Zero-initialised last conv: identity at init, yet A₁ (hence S) gets a gradient (no saddle)."""
    module = MatrixExpCoupling(hidden=8, rank=1)
    x = 1.5 * jax.random.normal(jax.random.key(0), (2, 3, 3, 4)) + 0.3
    variables = module.init(jax.random.key(1), x)
    y, log_det = module.apply(variables, x)
    np.testing.assert_allclose(y, x, atol=1e-6)
    np.testing.assert_array_equal(log_det, 0.0)

    def loss(params):
        y, ld = module.apply({"params": params}, x)
        return -jnp.mean(-0.5 * jnp.sum(y**2, axis=(1, 2, 3)) + ld)

    kernel_grad = jax.jit(jax.grad(loss))(variables["params"])["network"]["conv_out"]["kernel"]
    c, t = 2, 1
    assert float(jnp.abs(kernel_grad[..., c : c + c * t]).max()) > 1e-4, "A₁ gets no gradient"


def test_conv_is_a_rotation_at_init_and_uses_no_inverse():
    module = MatrixExpConv1x1()
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
    variables = module.init(jax.random.key(1), x)
    weight = variables["params"]["weight"]
    np.testing.assert_allclose(weight, -weight.T, atol=1e-7)
    matrix, log_abs_det = module.apply(variables, 4, False, method="matrix")
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(4), atol=1e-5)
    assert float(jnp.abs(matrix - jnp.eye(4)).max()) > 1e-2  # a rotation, but not the identity
    assert abs(float(log_abs_det)) < 1e-6
    perturbed = {"params": {"weight": weight + 0.3 * jax.random.normal(jax.random.key(2), weight.shape)}}
    for method in ("forward", "inverse"):
        jaxpr = str(jax.make_jaxpr(lambda v, a, m=method: module.apply(v, a, method=m))(perturbed, x))
        for primitive in ("lu", "triangular_solve", "cholesky", "eig", "qr"):
            assert f" {primitive}[" not in jaxpr and f" {primitive} " not in jaxpr, (method, primitive)
    y, log_det = module.apply(perturbed, x)
    w = np.float64(perturbed["params"]["weight"])
    np.testing.assert_allclose(y, np.einsum("ij,...j->...i", scipy.linalg.expm(w), x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_det, 9 * np.trace(w), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rank=0), "rank"),
        (dict(rank=1.5), "rank"),
        (dict(bound=0.0), "bound"),
        (dict(mask="checkerboard"), "mask='channel'"),
    ],
)
def test_coupling_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MatrixExpCoupling(hidden=8, **kwargs)


def test_model_rejects_checkerboard_mask():
    with pytest.raises(ValueError, match="mask='channel'"):
        glow((4, 4, 2), **TINY_MODEL, mask="checkerboard")


def test_mef_cifar10_config():
    config = load_config("experiments/configs/mef_cifar10.py")
    assert isinstance(config, TrainConfig)
    assert config.dataset == "cifar10" and config.n_bits == 8
    assert config.model["conv"] == "matrix_exp" and config.model["coupling"] == "matrix_exp"
    assert config.model["levels"] == 3
    small = {**config.model, "steps": 1, "hidden": 4}
    flow = glow((32, 32, 3), **small)  # the configuration builds (scaled down to stay fast)
    pixels = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
    variables = jax.eval_shape(flow.init, jax.random.key(1), pixels)
    assert "params" in variables
