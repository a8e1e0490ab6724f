"""The precision policy (`jaxflows.ops.precision`) in the programs a GPU or TPU would run.

A CPU computes float32 products exactly whatever their precision, so these tests do not run the
layers: they lower each layer's forward and inverse for "cuda" and "tpu" (and "cpu", whose branch
of `jaxflows.ops` differs) under a bfloat16 global default, which every product that names no
precision of its own inherits, and read each product's precision and operand dtypes
(`jaxflows.analysis.lowered_products`). The bijection's own products must be float32 at HIGHEST;
the networks' follow `network_precision` and `network_dtype`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from jaxflows import bijectors
from jaxflows.analysis import lowered_products
from jaxflows.bijectors.conv1x1_qr import Conv1x1QR
from jaxflows.bijectors.emerging import EmergingConv
from jaxflows.bijectors.matrix_exp import MatrixExpConv1x1, MatrixExpCoupling
from jaxflows.bijectors.periodic import PeriodicConv
from jaxflows.models import VariationalDequantizer, glow
from jaxflows.train import reconstruction_warnings
from jaxflows.train.evaluate import level_diagnostics

PLATFORMS = ("cpu", "cuda", "tpu")
SHAPE = (2, 4, 4, 4)

# layers without a network: every product is the bijection's own
MAPS = {
    "plain": bijectors.Conv1x1,
    "lu": bijectors.Conv1x1LU,
    "qr": Conv1x1QR,
    "emerging_pixels": lambda: EmergingConv(inverse_method="pixels"),
    "emerging_rows": lambda: EmergingConv(inverse_method="rows"),
    "periodic": PeriodicConv,
    "matrix_exp_conv": MatrixExpConv1x1,
}

_context = jnp.ones((SHAPE[0], 3))

# layers with networks: name -> (factory(**network policy), takes a context)
NETWORKED = {
    "affine": (lambda **p: bijectors.AffineCoupling(hidden=8, **p), False),
    "affine_checkerboard_context": (
        lambda **p: bijectors.AffineCoupling(hidden=8, mask="checkerboard", **p),
        True,
    ),
    "additive": (lambda **p: bijectors.AdditiveCoupling(hidden=8, **p), False),
    "matrix_exp_full": (lambda **p: MatrixExpCoupling(hidden=8, form="full", **p), False),
    "matrix_exp_low_rank": (lambda **p: MatrixExpCoupling(hidden=8, form="low_rank", rank=1, **p), False),
    "split_context": (lambda **p: bijectors.Split(**p), True),
    "prior_classifier_context": (lambda **p: bijectors.LearnedPrior(num_classes=3, **p), True),
}

# (network_precision, network_dtype) -> (precision, dtype) the networks' products must show
POLICIES = {
    ("highest", None): ("HIGHEST", "f32"),
    ("high", None): ("HIGH", "f32"),
    ("default", None): ("DEFAULT", "f32"),
    ("highest", "bfloat16"): ("HIGHEST", "bf16"),
    ("default", "bfloat16"): ("DEFAULT", "bf16"),
}


@functools.cache
def _programs(module, with_context: bool):
    """{direction: (function of x, x)} for the module's forward and inverse."""
    x = 1.5 * jax.random.normal(jax.random.key(0), SHAPE) + 0.3
    context = _context if with_context else None
    variables = module.init(jax.random.key(1), x, context)
    y, _ = module.apply(variables, x, context)
    return {
        "forward": (lambda a: module.apply(variables, a, context, method="forward"), x),
        "inverse": (lambda a: module.apply(variables, a, context, method="inverse"), y),
    }


def _assert_exact(products, what: str) -> None:
    for product in products:
        assert product.precision == ("HIGHEST", "HIGHEST"), f"{what}: {product}"
        assert set(product.dtypes) <= {"f32", "complex<f32>"}, f"{what}: {product}"


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", sorted(MAPS))
def test_bijection_products_are_float32_at_highest(name, platform):
    for direction, (fn, x) in _programs(MAPS[name](), False).items():
        products = lowered_products(fn, x, platform=platform)
        assert products, f"{name}.{direction} lowered no product on {platform}: nothing was checked"
        assert not any(p.in_network for p in products)
        _assert_exact(products, f"{name}.{direction} on {platform}")


@pytest.mark.parametrize("precision, dtype", list(POLICIES), ids=[f"{p}-{d or 'same'}" for p, d in POLICIES])
@pytest.mark.parametrize("name", sorted(NETWORKED))
def test_networks_follow_the_policy_and_maps_stay_exact(name, precision, dtype):
    make, with_context = NETWORKED[name]
    module = make(network_precision=precision, network_dtype=None if dtype is None else jnp.dtype(dtype))
    want_precision, want_dtype = POLICIES[precision, dtype]
    # every policy on the accelerators; the CPU branch once, with the default policy
    platforms = PLATFORMS if (precision, dtype) == ("highest", None) else ("cuda", "tpu")
    for platform in platforms:
        for direction, (fn, x) in _programs(module, with_context).items():
            where = f"{name}.{direction} on {platform}"
            products = lowered_products(fn, x, platform=platform)
            networks = [p for p in products if p.in_network]
            assert networks, f"{where}: no network product found"
            for product in networks:
                assert product.precision == (want_precision,) * 2, f"{where}: {product}"
                assert product.dtypes == (want_dtype,) * 2, f"{where}: {product}"
            _assert_exact([p for p in products if not p.in_network], where)


def test_the_default_policy_is_exact_everywhere():
    """Until a GPU measurement shows a cheaper policy keeps reconstructions within 2e-5, the
    networks run at HIGHEST by default too."""
    assert bijectors.AffineCoupling().network_precision == "highest"
    assert bijectors.AffineCoupling().network_dtype is None


@pytest.mark.parametrize("platform", ("cuda", "tpu"))
def test_glow_training_step_products(platform):
    """The gradient of the loss of a whole Glow (every layer family, the classifier and the
    context): the backward pass keeps each product's precision and dtype."""
    flow = glow(
        (8, 8, 2),
        levels=2,
        depth=2,
        hidden=8,
        conv="lu",
        num_classes=3,
        classifier=True,
        network_dtype=jnp.bfloat16,
        network_precision="default",
    )
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 2))
    labels = jnp.array([0, 2])
    variables = jax.jit(flow.init)(jax.random.key(1), x, labels)

    def loss(params, a):
        return -jnp.mean(flow.apply({**variables, "params": params}, a, labels, method="log_prob"))

    products = lowered_products(jax.grad(loss), variables["params"], x, platform=platform)
    networks = [p for p in products if p.in_network]
    assert len(networks) > len(products) / 2
    assert {(p.precision, p.dtypes) for p in networks} == {(("DEFAULT",) * 2, ("bf16",) * 2)}
    _assert_exact([p for p in products if not p.in_network], f"glow gradient on {platform}")


def test_dequantizer_networks_follow_the_policy():
    dequantizer = VariationalDequantizer(hidden=4, depth=1, network_dtype=jnp.bfloat16)
    pixels = jnp.zeros((2, 4, 4, 1), jnp.int32)
    variables = dequantizer.init(jax.random.key(0), jax.random.key(1), pixels, 256)
    u, log_q = dequantizer.apply(variables, jax.random.key(1), pixels, 256)
    assert u.dtype == log_q.dtype == jnp.float32
    products = lowered_products(
        lambda p: dequantizer.apply(variables, jax.random.key(1), p, 256), pixels, platform="tpu"
    )
    assert products and all(p.in_network for p in products)
    assert {(p.precision, p.dtypes) for p in products} == {(("HIGHEST",) * 2, ("bf16",) * 2)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"network_precision": "fast"}, "network_precision must be one of"),
        ({"network_dtype": jnp.int32}, "network_dtype must be a floating dtype"),
        ({"network_dtype": "int8"}, "network_dtype must be a floating dtype"),
    ],
)
@pytest.mark.parametrize(
    "make", [bijectors.AffineCoupling, bijectors.Split, bijectors.LearnedPrior, VariationalDequantizer]
)
def test_invalid_network_policy_is_named_at_construction(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_reconstruction_warnings_name_every_error_above_half_a_level():
    scores = {
        "flow_bits_per_dim": 3.1,
        "reconstruction_error/level1": 3.8e-4,
        "reconstruction_error/level2": 4.5e-3,  # the H200's default-precision figure
        "reconstruction_error/model": float("nan"),
    }
    messages = reconstruction_warnings(scores, 256)
    assert len(messages) == 2
    assert "level2 reconstruction error 4.50e-03 exceeds half an intensity level (1.95e-03" in messages[0]
    assert messages[1].startswith("warning: model reconstruction error nan")
    assert reconstruction_warnings({"reconstruction_error/model": 7.6e-6}, 256) == []


def test_level_diagnostics_report_the_whole_flow_round_trip():
    flow = glow((4, 4, 1), levels=2, depth=1, hidden=4, network_dtype=jnp.bfloat16)
    pixels = jax.random.randint(jax.random.key(0), (3, 4, 4, 1), 0, 256)
    variables = flow.init(jax.random.key(1), pixels / 256.0)
    scores = level_diagnostics(flow, variables, pixels, 256)
    assert {"reconstruction_error/level1", "reconstruction_error/level2"} <= set(scores)
    assert 0 <= scores["reconstruction_error/model"] < 1e-5
