"""Emerging, periodic and QR convolutions (Hoogeboom et al. 2019): harness, masks, exactness, models."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxflows.bijectors import Conv1x1QR, EmergingConv, PeriodicConv
from jaxflows.bijectors.conv1x1_qr import householder_product
from jaxflows.bijectors.emerging import causal_conv, flip, window_sizes
from jaxflows.models import glow
from jaxflows.train.config import load_config
from tests.harness import (
    PROPERTIES,
    BijectorCase,
    check_log_det_matches_jacobian,
    check_round_trip,
    perturb_params,
    setup_case,
)

CASES = [
    BijectorCase("emerging_k2", lambda: EmergingConv(kernel_size=2), (2, 3, 4, 3), perturb=0.2),
    BijectorCase("emerging_k3", lambda: EmergingConv(kernel_size=3), (2, 4, 4, 3), perturb=0.2),
    BijectorCase(
        "emerging_k3_rows",
        lambda: EmergingConv(kernel_size=3, inverse_method="rows"),
        (2, 4, 5, 2),
        perturb=0.2,
    ),
    BijectorCase("periodic_odd", lambda: PeriodicConv(kernel_size=3), (2, 3, 5, 2), perturb=0.2),
    BijectorCase("periodic_even", lambda: PeriodicConv(kernel_size=3), (2, 4, 6, 2), perturb=0.2),
    BijectorCase("conv1x1_qr_odd_channels", Conv1x1QR, (2, 2, 2, 5), perturb=0.2),
]


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_bijector_properties(case, check):
    check(case)


def _x64(tree):
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_each_autoregressive_conv_is_triangular_in_its_raster_order(kernel_size):
    """Dense jacobian of each single masked conv: lower triangular for the first (raster order),
    upper triangular for the second (reversed order), diagonal = the scales, and not diagonal."""
    shape = (1, 5, 5, 3)
    module = EmergingConv(kernel_size=kernel_size)
    x = jax.random.normal(jax.random.key(0), shape)
    variables = perturb_params(module.init(jax.random.key(1), x), 0.5, jax.random.key(2))
    with jax.enable_x64(True):
        variables = _x64(variables)
        first, second, _ = module.apply(variables, jnp.zeros(shape, jnp.float64), method="kernels")
        params = variables["params"]
        point = jnp.asarray(x, jnp.float64).reshape(-1)
        stages = {
            "first": (lambda v: causal_conv(v.reshape(shape), first).reshape(-1), np.tril),
            "second": (lambda v: flip(causal_conv(flip(v.reshape(shape)), second)).reshape(-1), np.triu),
        }
        for name, (conv, triangle) in stages.items():
            jac = np.asarray(jax.jacfwd(conv)(point))
            np.testing.assert_array_equal(jac, triangle(jac), err_msg=f"{name} conv is not triangular")
            scales = np.exp(np.asarray(params[f"{name}_log_diag"]))
            if name == "second":  # flip reverses the channels too
                scales = scales[::-1]
            np.testing.assert_allclose(np.diag(jac), np.tile(scales, 25), rtol=1e-12)
            assert np.count_nonzero(jac - np.diag(np.diag(jac))) > 0, f"{name} conv mixes nothing"


@pytest.mark.parametrize("kernel_size", [2, 3, 4])
def test_emerging_receptive_field_is_the_same_window(kernel_size):
    """Output pixel (i, j) of the composition depends on exactly the k×k "SAME" window around it."""
    module = EmergingConv(kernel_size=kernel_size)
    x = jax.random.normal(jax.random.key(0), (1, 7, 7, 2))
    variables = perturb_params(module.init(jax.random.key(1), x), 0.3, jax.random.key(2))
    centre = 3
    jac = jax.jacrev(lambda v: module.apply(variables, v)[0][0, centre, centre])(x)  # (c, 1, h, w, c)
    depends = np.abs(np.asarray(jac)).sum(axis=(0, 1, 4)) > 0
    before, after = (kernel_size - 1) // 2, kernel_size // 2
    expected = np.zeros((7, 7), bool)
    expected[centre - before : centre + after + 1, centre - before : centre + after + 1] = True
    np.testing.assert_array_equal(depends, expected)
    assert sum(window_sizes(kernel_size)) - 1 == kernel_size


@pytest.mark.parametrize("inverse_method", ["pixels", "rows"])
def test_emerging_round_trip_32x32x12_float32(inverse_method):
    module = EmergingConv(kernel_size=3, inverse_method=inverse_method)
    x = 1.5 * jax.random.normal(jax.random.key(0), (4, 32, 32, 12)) + 0.3
    variables = perturb_params(module.init(jax.random.key(1), x), 0.05, jax.random.key(2))
    y, log_det = jax.jit(lambda a: module.apply(variables, a))(x)
    assert float(jnp.max(jnp.abs(y - x))) > 0.1  # not the identity
    x_back, inverse_log_det = jax.jit(lambda a: module.apply(variables, a, method="inverse"))(y)
    assert x_back.dtype == jnp.float32
    np.testing.assert_allclose(x_back, x, atol=1e-4, rtol=0)
    np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-6)


@pytest.mark.parametrize("shape, kernel_size", [((2, 3, 5, 2), 3), ((2, 4, 6, 3), 2)])
def test_periodic_conv_is_circular_convolution(shape, kernel_size):
    """The Fourier-domain forward equals a direct convolution of the wrap-padded image."""
    module = PeriodicConv(kernel_size=kernel_size)
    x = jax.random.normal(jax.random.key(0), shape)
    variables = perturb_params(module.init(jax.random.key(1), x), 0.3, jax.random.key(2))
    kernel = variables["params"]["kernel"]
    before, after = (kernel_size - 1) // 2, kernel_size // 2
    padded = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)), mode="wrap")
    direct = lax.conv_general_dilated(
        padded, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(module.apply(variables, x)[0], direct, atol=1e-5)


def test_qr_conv_starts_as_a_rotation_and_inverts_without_inv():
    module = Conv1x1QR()
    x = jax.random.normal(jax.random.key(0), (1, 2, 2, 6))
    variables = module.init(jax.random.key(1), x)
    weight, log_abs_det = module.apply(variables, x, method="matrix")
    np.testing.assert_allclose(weight @ weight.T, np.eye(6), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(weight), 1.0, atol=1e-5)  # Glow's random rotation
    np.testing.assert_allclose(log_abs_det, 0.0, atol=1e-5)

    variables = perturb_params(variables, 0.3, jax.random.key(2))
    q = householder_product(variables["params"]["householder"])
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-5)
    weight, log_abs_det = module.apply(variables, x, method="matrix")
    inverse, inverse_log_abs_det = module.apply(variables, x, method="inverse_matrix")
    np.testing.assert_allclose(inverse @ weight, np.eye(6), atol=1e-4)
    np.testing.assert_allclose(inverse_log_abs_det, -log_abs_det, atol=1e-6)
    np.testing.assert_allclose(log_abs_det, np.linalg.slogdet(np.asarray(weight))[1], atol=1e-5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: EmergingConv(kernel_size=1), "kernel_size must be ≥ 2"),
        (lambda: EmergingConv(inverse_method="newton"), "inverse_method"),
        (lambda: PeriodicConv(kernel_size=0), "kernel_size must be ≥ 1"),
    ],
)
def test_bad_configuration_is_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make", [lambda: EmergingConv(kernel_size=5), lambda: PeriodicConv(kernel_size=5)])
def test_kernel_larger_than_image_is_rejected(make):
    with pytest.raises(ValueError, match="larger than the 4x6 image"):
        make().init(jax.random.key(0), jnp.zeros((1, 4, 6, 2)))


@pytest.mark.parametrize("make", [EmergingConv, PeriodicConv, Conv1x1QR])
def test_wrong_rank_is_rejected(make):
    with pytest.raises(ValueError, match="rank 4"):
        make().init(jax.random.key(0), jnp.zeros((4, 4, 2)))


MODEL_CASES = [
    BijectorCase(
        f"glow_{conv}",
        lambda conv=conv, kwargs=kwargs: glow(
            (4, 4, 3), levels=1, depth=1, hidden=4, conv=conv, conv_kwargs=kwargs
        ),
        (2, 4, 4, 3),
        data="unit",
    )
    for conv, kwargs in [("emerging", {"kernel_size": 2}), ("periodic", {"kernel_size": 2}), ("qr", {})]
]


# Eager whole-model checks are slow on CPU: the two that test exactness run by default.
MODEL_PROPERTIES = [
    check
    if check in (check_round_trip, check_log_det_matches_jacobian)
    else pytest.param(check, marks=pytest.mark.slow)
    for check in PROPERTIES
]


@pytest.mark.parametrize("check", MODEL_PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", MODEL_CASES, ids=str)
def test_glow_with_each_conv(case, check):
    check(case)


@pytest.mark.parametrize("case", MODEL_CASES, ids=str)
def test_glow_uses_the_requested_conv(case):
    _, variables, _ = setup_case(case)
    names = {
        "glow_emerging": "first_kernel",
        "glow_periodic": "kernel",
        "glow_qr": "householder",
    }
    conv_params = variables["params"]["bijector"]["level1"]["flow_steps"]["conv"]
    assert names[case.name] in conv_params


def test_emerging_cifar10_config():
    config = load_config(Path(__file__).parents[1] / "experiments" / "configs" / "emerging_cifar10.py")
    assert config.dataset == "cifar10" and config.n_bits == 8
    assert config.model["conv"] == "emerging" and config.model["conv_kwargs"]["kernel_size"] == 3
    assert (config.model["levels"], config.model["depth"], config.model["hidden"]) == (3, 32, 512)
    flow = glow((32, 32, 3), **config.model)  # builds (no init: that would take minutes)
    assert flow.event_shape == (32, 32, 3)
