"""Matrix Exponential Flows (Xiao & Liu 2020): the property harness, dense references, the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxflows.bijectors import MatrixExpConv1x1, MatrixExpCoupling
from jaxflows.models import glow
from jaxflows.train.config import TrainConfig, load_config
from tests.harness import BijectorCase, property_params, setup_case

TINY_MODEL = dict(levels=2, depth=1, hidden=8, conv="matrix_exp", coupling="matrix_exp")

# Shapes repeat across cases and tests: eager (op-by-op) execution compiles once per shape.
COUPLING_CASES = [
    BijectorCase("mexp_coupling_full", lambda: MatrixExpCoupling(hidden=8), (2, 3, 3, 4), perturb=0.5),
    BijectorCase(
        "mexp_coupling_full_p1",
        lambda: MatrixExpCoupling(hidden=8, form="full", parity=1),
        (2, 3, 3, 6),
        perturb=0.5,
    ),
    BijectorCase(
        "mexp_coupling_low_rank1",
        lambda: MatrixExpCoupling(hidden=8, form="low_rank", rank=1),
        (2, 3, 3, 4),
        perturb=0.5,
    ),
    BijectorCase(
        "mexp_coupling_auto_low_rank3_p1",  # 6 active channels > max_full_channels=4: low rank
        lambda: MatrixExpCoupling(hidden=8, rank=3, parity=1, max_full_channels=4),
        (2, 3, 3, 12),
        perturb=0.25,  # with 0.5 the bounding scalars reach ‖S‖∞ ≈ 13: exp(±S) too ill-conditioned
    ),
]
CASES = [
    BijectorCase("mexp_conv", lambda: MatrixExpConv1x1(init_scale=0.5), (2, 3, 3, 4), perturb=0.3),
    *COUPLING_CASES,
    BijectorCase("mef_model_4x4x2", lambda: glow((4, 4, 2), **TINY_MODEL), (2, 4, 4, 2), data="unit"),
]
# -m slow: the whole model (every MEF layer goes through the harness in the default run), and the
# full form at parity 1 and the rank-1 form (the auto-low-rank parity-1 case covers both paths)
SLOW = {"mef_model_4x4x2", "mexp_coupling_full_p1", "mexp_coupling_low_rank1"}


@pytest.mark.parametrize(("case", "check"), property_params(CASES, slow=SLOW))
def test_bijector_properties(case, check):
    check(case)


def coupling_factors(module, variables, x):
    """The active part, shift b and S (a full matrix, or A₁A₂) the coupling uses on x."""
    bound = module.bind(variables)
    _, active, h = bound.conditioned(x)
    inner = bound.inner_bijector(h, active.shape[-1])
    return active, inner.shift, inner.exponential.matrix()


@pytest.mark.parametrize("case", COUPLING_CASES, ids=str)
def test_coupling_matches_dense_expm(case):
    """y_b = expm(S) x_b + b with a dense scipy expm of S per pixel; log_det = Σ tr S."""
    module, variables, x = setup_case(case)
    y, log_det = module.apply(variables, x)
    active, shift, s = coupling_factors(module, variables, x)
    s = np.float64(s)
    dense_exp = np.vectorize(scipy.linalg.expm, signature="(n,n)->(n,n)")(s)
    assert np.abs(dense_exp - np.eye(s.shape[-1])).max() > 1e-2, "S is too small to test anything"
    expected = np.einsum("...ij,...j->...i", dense_exp, np.float64(active)) + np.float64(shift)
    y_active = module.masking().split(y)[0]
    np.testing.assert_allclose(y_active, expected, rtol=1e-5, atol=1e-5)
    dense_log_det = np.linalg.slogdet(dense_exp)[1].reshape(x.shape[0], -1).sum(-1)
    trace_sum = np.trace(s, axis1=-2, axis2=-1).reshape(x.shape[0], -1).sum(-1)
    np.testing.assert_allclose(log_det, dense_log_det, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_det, trace_sum, rtol=1e-5, atol=1e-5)


def test_auto_form_follows_the_official_rule():
    """Full c×c matrices up to 24 active channels, rank-3 factors above (official MEF code)."""
    module = MatrixExpCoupling(hidden=8)
    assert module.is_full(24) and not module.is_full(25)
    assert module.num_params(24) == 24 * 25 and module.num_params(25) == 25 * 7


@pytest.mark.parametrize("case", [COUPLING_CASES[1], COUPLING_CASES[3]], ids=str)
def test_coupling_entries_are_bounded(case):
    """Huge network outputs saturate the tanh: entries of S (or of A₁, A₂) stay within
    |rescale| + |reshift| and the inverse stays exact."""
    module, variables, x = setup_case(case)
    conv_out = variables["params"]["network"]["conv_out"]
    c = module.masking().split(x)[0].shape[-1]
    gain = jnp.ones(conv_out["bias"].shape).at[c:].set(100.0)  # blow up S's outputs, not b's
    conv_out = {"kernel": conv_out["kernel"] * gain + 3.0 * (gain - 1), "bias": conv_out["bias"] * gain}
    params = {**variables["params"], "network": {**variables["params"]["network"], "conv_out": conv_out}}
    variables = {"params": params}
    limit = abs(float(params["bound"]["rescale"])) + abs(float(params["bound"]["reshift"]))
    bound = module.bind(variables)
    _, _, h = bound.conditioned(x)
    factors = bound.inner_bijector(h, c).exponential.factors  # S, or (A₁, A₂)
    largest = max(float(jnp.abs(f).max()) for f in factors)
    assert 0.9 * limit < largest <= limit + 1e-6  # saturated, and bounded
    y, _ = module.apply(variables, x)
    x_back, _ = module.apply(variables, y, method="inverse")
    np.testing.assert_allclose(x_back, x, atol=1e-3)  # saturated S: exp(±S) amplify rounding


@pytest.mark.parametrize("form", ["full", "low_rank"])
def test_coupling_starts_as_identity_and_learns_s(form):
    """Zero-initialised last conv: identity at init, yet S gets a gradient (no saddle)."""
    module = MatrixExpCoupling(hidden=8, form=form, rank=1)
    x = 1.5 * jax.random.normal(jax.random.key(0), (2, 3, 3, 4)) + 0.3
    variables = module.init(jax.random.key(1), x)
    y, log_det = module.apply(variables, x)
    np.testing.assert_allclose(y, x, atol=1e-6)
    np.testing.assert_array_equal(log_det, 0.0)

    def loss(params):
        y, ld = module.apply({"params": params}, x)
        return -jnp.mean(-0.5 * jnp.sum(y**2, axis=(1, 2, 3)) + ld)

    kernel_grad = jax.jit(jax.grad(loss))(variables["params"])["network"]["conv_out"]["kernel"]
    c = 2
    assert float(jnp.abs(kernel_grad[..., c:]).max()) > 1e-4, "S gets no gradient"


def test_series_terms_adapt_to_the_matrix():
    """m (MEF Table 6) is 0 for S = 0 and positive otherwise; the layer reports it per pixel."""
    module, variables, x = setup_case(COUPLING_CASES[0])
    terms = module.apply(variables, x, method="series_terms")
    assert terms.shape == x.shape[:3] and terms.dtype == jnp.int32
    assert int(terms.min()) >= 1 and int(terms.max()) <= 16
    start = module.init(jax.random.key(0), x)
    np.testing.assert_array_equal(module.apply(start, x, method="series_terms"), 0)


def test_conv_is_a_rotation_at_init_and_uses_no_inverse():
    module = MatrixExpConv1x1()
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
    variables = module.init(jax.random.key(1), x)
    weight = variables["params"]["weight"]
    np.testing.assert_allclose(weight, -weight.T, atol=1e-7)
    matrix, log_abs_det = module.apply(variables, x, method="matrix")
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
        (dict(form="dense"), "form"),
        (dict(tolerance=0.0), "tolerance"),
        (dict(mask="checkerboard"), r"works with mask in \('channel',\), got mask='checkerboard'"),
    ],
)
def test_coupling_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MatrixExpCoupling(hidden=8, **kwargs)


def test_model_rejects_checkerboard_mask():
    with pytest.raises(ValueError, match=r"works with mask in \('channel',\)"):
        glow((4, 4, 2), **TINY_MODEL, mask="checkerboard")


def test_mef_cifar10_config():
    config = load_config("experiments/configs/mef_cifar10.py")
    assert isinstance(config, TrainConfig)
    assert config.dataset == "cifar10" and config.n_bits == 8
    assert config.model["conv"] == "matrix_exp" and config.model["coupling"] == "matrix_exp"
    assert config.model["levels"] == 3
    small = {**config.model, "depth": 1, "hidden": 4}
    flow = glow((32, 32, 3), **small)  # the configuration builds (scaled down to stay fast)
    pixels = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
    variables = jax.eval_shape(flow.init, jax.random.key(1), pixels)
    assert "params" in variables
