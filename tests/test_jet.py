"""Jet (Kolesnikov et al. 2024): the ViT conditioner under any transformer and mask, the stripe masks,
the channel couplings' frozen permutations, patchify and rescale, and whole small Jets through the
property harness; a bfloat16 conditioner's round trip, stable parameter paths, the coupling plan."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import (
    AdditiveTransformer,
    AffineTransformer,
    CheckerboardMask,
    Coupling,
    MatrixExpCoupling,
    RationalQuadraticSpline,
)
from jaxflows.bijectors.masks import MASKS, HorizontalStripeMask, VerticalStripeMask
from jaxflows.bijectors.patchify import Patchify, patchify, unpatchify
from jaxflows.bijectors.rescale import Rescale
from jaxflows.bijectors.vit import ViTConditioner
from jaxflows.core import Chain
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.models.jet import SPATIAL_PATTERNS, ShuffledCoupling, coupling_plan, jet
from jaxflows.models.registry import MODELS
from tests.harness import BijectorCase, perturb_params, property_params

VIT = functools.partial(ViTConditioner, width=8, depth=1, heads=1)
JET_LAW = AffineTransformer(scale="jet")


def _coupling(mask="checkerboard", parity=0, transformer=JET_LAW, **policy):
    return Coupling(mask=mask, parity=parity, transformer=transformer, conditioner=VIT, **policy)


def _context(key, batch):
    return jax.random.normal(key, (batch, 3))


def _tiny_jet(**kwargs):
    fields = dict(patch_size=2, couplings=2, depth=1, width=8, heads=1, kinds=("channel", "spatial"))
    return jet((4, 4, 1), **{**fields, **kwargs})


CASES = [
    BijectorCase("vit_checkerboard_jet_law", lambda: _coupling(), (2, 2, 3, 4), perturb=0.2),
    BijectorCase(
        "vit_channel_shuffled", lambda: ShuffledCoupling(_coupling("channel")), (2, 2, 2, 4), perturb=0.2
    ),
    BijectorCase(
        "rescale_patchify",
        lambda: Chain([Rescale.between((0.0, 1.0), (-1.0, 1.0)), Patchify(2)]),
        (2, 4, 6, 2),
    ),
    BijectorCase(
        "vit_vstripes_spline",
        lambda: _coupling("vertical_stripes", 1, RationalQuadraticSpline(bins=3)),
        (2, 2, 2, 2),
        perturb=0.3,
    ),
    BijectorCase(
        "vit_hstripes_additive_context",
        lambda: _coupling("horizontal_stripes", 0, AdditiveTransformer()),
        (2, 2, 2, 2),
        perturb=0.2,
        context=_context,
    ),
    BijectorCase("jet_tiny", _tiny_jet, (2, 4, 4, 1), perturb=0.2, data="unit"),
]
# The default run checks the ViT conditioner with Jet's law on a board, the shuffled channel
# coupling (but for its finite differences) and the reshaping layers; -m slow adds the stripes with
# other laws and a whole two-coupling Jet (whose finite-difference check alone compiles ~80 s).
SLOW = {"vit_vstripes_spline", "vit_hstripes_additive_context", "jet_tiny"}
SLOW_CHECKS = {("vit_channel_shuffled", "check_gradients_match_finite_differences")}


@pytest.mark.parametrize(("case", "check"), property_params(CASES, SLOW, SLOW_CHECKS))
def test_jet_layers_properties(case, check):
    check(case)


def _init(layer, x, seed=1, perturb=0.2, context=None):
    variables = jax.jit(layer.init)(jax.random.key(seed), x, context)
    return perturb_params(variables, perturb, jax.random.key(seed + 1))


def _board(mask, shape):
    return np.asarray(mask.board(jnp.zeros(shape)))[0, ..., 0]


def test_stripe_masks_patterns():
    shape = (1, 3, 4, 1)
    np.testing.assert_array_equal(_board(VerticalStripeMask(0), shape), [[1, 0, 1, 0]] * 3)
    np.testing.assert_array_equal(_board(VerticalStripeMask(1), shape), [[0, 1, 0, 1]] * 3)
    np.testing.assert_array_equal(_board(HorizontalStripeMask(0), shape), [[1] * 4, [0] * 4, [1] * 4])
    np.testing.assert_array_equal(_board(HorizontalStripeMask(1), shape), [[0] * 4, [1] * 4, [0] * 4])
    np.testing.assert_array_equal(
        _board(CheckerboardMask(0), shape), [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    )  # unchanged by the BoardMask refactor
    np.testing.assert_array_equal(
        np.asarray(CheckerboardMask(1).board(jnp.zeros((1, 5))))[0], [0, 1, 0, 1, 0]
    )
    assert (
        MASKS["vertical_stripes"] is VerticalStripeMask
        and MASKS["horizontal_stripes"] is HorizontalStripeMask
    )
    x = jnp.arange(12.0).reshape(1, 3, 4, 1)
    active, cond = VerticalStripeMask(1).split(x)
    np.testing.assert_array_equal(np.asarray(cond)[0, :, :, 0], np.asarray(x)[0, :, :, 0] * [0, 1, 0, 1])
    merged = VerticalStripeMask(1).merge(-active, x)  # the active columns 0 and 2 replaced
    np.testing.assert_array_equal(np.asarray(merged)[0, :, :, 0], np.asarray(x)[0, :, :, 0] * [-1, 1, -1, 1])
    terms = jnp.ones((1, 3, 4, 2))
    assert float(HorizontalStripeMask(0).sum_active(terms, jnp.zeros((1, 3, 4, 2)))[0]) == 8.0  # row 1
    with pytest.raises(ShapeError, match="NHWC images"):
        VerticalStripeMask(0).board(jnp.zeros((2, 6)))


def test_stripes_work_wherever_the_checkerboard_does():
    assert isinstance(Coupling(mask="vertical_stripes", transformer=AffineTransformer()), Coupling)
    with pytest.raises(InvalidArgumentError, match="works with mask in"):
        MatrixExpCoupling(mask="horizontal_stripes")


def test_bfloat16_conditioner_round_trips_exactly():
    """The conditioning half passes through unchanged, bit for bit, so the inverse's bfloat16 network
    reads what the forward's read and the round trip is float32-exact."""
    layer = _coupling("vertical_stripes", 0, network_dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
    variables = _init(layer, x)
    forward = jax.jit(functools.partial(layer.apply, method="forward"))
    assert "bf16" in forward.lower(variables, x).as_text()  # the policy reaches the ViT
    y, log_det = forward(variables, x)
    x_back, log_det_inv = jax.jit(functools.partial(layer.apply, method="inverse"))(variables, y)
    np.testing.assert_array_equal(np.asarray(y)[:, :, 0::2], np.asarray(x)[:, :, 0::2])  # columns 0, 2
    assert y.dtype == jnp.float32 and log_det.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(y - x))) > 1e-2  # the network's output is not zero
    np.testing.assert_allclose(np.asarray(x_back), np.asarray(x), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(log_det_inv), -np.asarray(log_det), rtol=1e-6)


@pytest.fixture(scope="module")
def small_jet():
    """A Jet of two channel couplings and one spatial one on 4x4x2 images (8 values per token),
    initialised on uniform data."""
    kinds = ("channel", "channel", "spatial")
    flow = jet((4, 4, 2), patch_size=2, couplings=3, depth=1, width=8, heads=1, kinds=kinds)
    x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 2))
    return flow, jax.jit(flow.init)(jax.random.key(1), x), x


def test_channel_permutations_are_frozen_constants(small_jet):
    flow, variables, x = small_jet
    orders = variables["constants"]["bijector"]
    assert sorted(orders) == ["channel_0", "channel_1"]
    perms = [np.asarray(orders[name]["shuffle"]["permutation"]) for name in sorted(orders)]
    for p in perms:
        assert p.dtype == np.int32 and sorted(p.tolist()) == list(range(8))
    assert not np.array_equal(*perms)  # one draw per coupling
    leaves = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    assert not any("shuffle" in jax.tree_util.keystr(path) for path, _ in leaves)
    again = jax.jit(flow.init)(jax.random.key(2), x)["constants"]["bijector"]["channel_0"]["shuffle"]
    assert not np.array_equal(np.asarray(again["permutation"]), perms[0])  # drawn from the init key


def test_identity_at_initialisation(small_jet):
    """Zero-initialised heads and s = 2·sigmoid(0) = 1: an initialised Jet is only the rescale."""
    flow, variables, x = small_jet
    z, log_det = jax.jit(functools.partial(flow.apply, method="forward"))(variables, x)
    np.testing.assert_allclose(np.asarray(z), np.asarray(2 * x - 1), atol=1e-6)
    np.testing.assert_allclose(np.asarray(log_det), 32 * np.log(2.0), rtol=1e-6)


def test_shuffled_coupling_is_the_conjugated_coupling():
    """P⁻¹ ∘ coupling ∘ P: the token values gathered by π, coupled with the channel mask (first half
    conditions the second), scattered back."""
    layer, inner = ShuffledCoupling(_coupling("channel")), _coupling("channel")
    x = jax.random.normal(jax.random.key(0), (2, 2, 2, 6))
    variables = _init(layer, x)
    y, log_det = jax.jit(functools.partial(layer.apply, method="forward"))(variables, x)
    order = variables["constants"]["shuffle"]["permutation"]
    inner_forward = jax.jit(functools.partial(inner.apply, method="forward"))
    y_perm, log_det_inner = inner_forward({"params": variables["params"]["coupling"]}, x[..., order])
    np.testing.assert_allclose(np.asarray(y[..., order]), np.asarray(y_perm), atol=1e-6)
    np.testing.assert_allclose(np.asarray(log_det), np.asarray(log_det_inner), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(y[..., order[:3]]), np.asarray(x[..., order[:3]]))


def test_patchify_matches_jets_layout():
    x = jax.random.normal(jax.random.key(0), (2, 6, 4, 3))
    tokens = np.asarray(patchify(x, 2))
    assert tokens.shape == (2, 3, 2, 12)
    xs = np.asarray(x)
    for i, j, di, dj, k in [(0, 0, 0, 0, 0), (2, 1, 1, 0, 2), (1, 1, 1, 1, 1), (2, 0, 0, 1, 2)]:
        assert tokens[1, i, j, (di * 2 + dj) * 3 + k] == xs[1, 2 * i + di, 2 * j + dj, k]
    np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(tokens), 2)), xs)
    with pytest.raises(ShapeError, match="multiples of the patch size"):
        Patchify(4).apply({}, x, method="forward")


def test_rescale_maps_the_data_range_onto_jets():
    layer = Rescale.between((0.0, 1.0), (-1.0, 1.0))
    y, log_det = layer.apply({}, jnp.array([[0.0, 0.5, 1.0]]), method="forward")
    np.testing.assert_allclose(np.asarray(y), [[-1.0, 0.0, 1.0]])
    np.testing.assert_allclose(np.asarray(log_det), [3 * np.log(2.0)])
    with pytest.raises(InvalidArgumentError):
        Rescale(scale=0.0)


def test_odd_token_grid_28x28_patch_4():
    """28×28 with p = 4: a 7×7 grid of 49 tokens, split 25 / 24 by the masked boards (no padding)."""
    flow = jet((28, 28, 1), patch_size=4, couplings=5, depth=1, width=8, heads=1)
    shapes = flow.variable_specs()
    position = [s for path, s in shapes.items() if "position" in str(path)]
    assert position and all(tuple(s.shape) == (7, 7, 8) for s in position)
    layer = _coupling("checkerboard", 0)
    x = jax.random.normal(jax.random.key(0), (1, 7, 7, 16))
    variables = _init(layer, x)
    y, _ = jax.jit(functools.partial(layer.apply, method="forward"))(variables, x)
    x_back, _ = jax.jit(functools.partial(layer.apply, method="inverse"))(variables, y)
    np.testing.assert_allclose(np.asarray(x_back), np.asarray(x), atol=1e-5)
    changed = np.asarray(jnp.any(y != x, axis=-1))[0]
    assert changed.sum() == 24 and not changed[0, 0]


def test_coupling_plan_follows_jets_interleaving():
    plan = coupling_plan(12, ("channel",) * 4 + ("spatial",), tuple(SPATIAL_PATTERNS))
    assert [kind for kind, _, _ in plan] == (["channel"] * 4 + ["spatial"]) * 2 + ["channel"] * 2
    assert [(m, p) for k, m, p in plan if k == "spatial"] == [("checkerboard", 0), ("checkerboard", 1)]
    spatial = coupling_plan(7, ("spatial",), tuple(SPATIAL_PATTERNS))
    assert [(m, p) for _, m, p in spatial] == [
        ("checkerboard", 0),
        ("checkerboard", 1),
        ("vertical_stripes", 0),
        ("vertical_stripes", 1),
        ("horizontal_stripes", 0),
        ("horizontal_stripes", 1),
        ("checkerboard", 0),
    ]
    with pytest.raises(InvalidArgumentError, match="kinds"):
        coupling_plan(2, ("channels",), ("checkerboard",))
    with pytest.raises(InvalidArgumentError, match="spatial_patterns"):
        coupling_plan(2, ("spatial",), ("diagonal",))


NETWORK_PATHS = [
    "block_0/attention/key/bias",
    "block_0/attention/key/kernel",
    "block_0/attention/out/bias",
    "block_0/attention/out/kernel",
    "block_0/attention/query/bias",
    "block_0/attention/query/kernel",
    "block_0/attention/value/bias",
    "block_0/attention/value/kernel",
    "block_0/mlp_in/bias",
    "block_0/mlp_in/kernel",
    "block_0/mlp_out/bias",
    "block_0/mlp_out/kernel",
    "block_0/norm_attention/bias",
    "block_0/norm_attention/scale",
    "block_0/norm_mlp/bias",
    "block_0/norm_mlp/scale",
    "embed/bias",
    "embed/kernel",
    "head/bias",
    "head/kernel",
    "norm/bias",
    "norm/scale",
    "position",
]


def test_parameter_paths_are_stable():
    """Checkpoints name these paths: renaming a layer breaks every saved Jet."""
    specs = _tiny_jet().variable_specs()
    paths = {"/".join(str(getattr(k, "key", k)) for k in path): tuple(s.shape) for path, s in specs.items()}
    expected = {"constants/bijector/channel_0/shuffle/permutation"}
    expected |= {f"params/bijector/channel_0/coupling/network/{p}" for p in NETWORK_PATHS}
    expected |= {f"params/bijector/spatial_1/network/{p}" for p in NETWORK_PATHS}
    assert set(paths) == expected
    assert paths["params/bijector/channel_0/coupling/network/embed/kernel"] == (2, 8)  # 2 of 4 values read
    assert paths["params/bijector/channel_0/coupling/network/head/kernel"] == (8, 4)  # (b, h_s) per value
    assert paths["params/bijector/spatial_1/network/head/kernel"] == (8, 8)
    assert paths["params/bijector/spatial_1/network/position"] == (2, 2, 8)
    assert paths["params/bijector/spatial_1/network/block_0/mlp_in/kernel"] == (8, 32)


def test_registered_and_validated():
    assert MODELS["jet"] is jet
    with pytest.raises(ShapeError, match="multiples of patch_size"):
        jet((6, 6, 1), patch_size=4)
    with pytest.raises(InvalidArgumentError, match="multiple of heads"):
        jet((8, 8, 1), width=10, heads=4)
    with pytest.raises(InvalidArgumentError, match="depth"):
        jet((8, 8, 1), depth=0)
    with pytest.raises(ShapeError, match="grid of patch tokens"):
        ViTConditioner(out_channels=2, width=4, heads=1).init(jax.random.key(0), jnp.zeros((2, 3)))


def test_fashion_mnist_config_builds_a_jet():
    from jaxflows.models import build_model
    from jaxflows.train import load_config

    for smoke in (False, True):
        config = load_config("experiments/configs/jet_fashion_mnist.py", smoke=smoke)
        kwargs = {k: v for k, v in config.model.items() if k != "name"}
        assert config.model["name"] == "jet"
        flow = build_model("jet", (28, 28, 1), kwargs, data_range=(0.0, 1.0))
        assert flow.event_shape == (28, 28, 1)


@pytest.mark.slow
def test_train_step_benchmark_takes_a_registered_model():
    import json

    from benchmarks.train_step import main

    kwargs = {"patch_size": 2, "couplings": 2, "depth": 1, "width": 8, "heads": 1}
    argv = ["--model", "jet", "--image", "4x4x1", "--batch", "2", "--iters", "1", "--warmup", "0"]
    result = main([*argv, "--model-kwargs", json.dumps(kwargs)])
    assert result["model"] == "jet" and result["model_kwargs"] == kwargs
    assert result["achieved_gflops"] > 0 and result["max_reconstruction_error"] < 1e-5  # XLA counted FLOPs


@pytest.mark.slow
def test_gradient_modes_agree():
    """gradient="remat" and "invertible" (rebuild each coupling's input with its inverse) give the
    standard gradients of the likelihood."""
    x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1))
    variables = perturb_params(jax.jit(_tiny_jet().init)(jax.random.key(1), x), 0.2, jax.random.key(2))
    grads = {}
    for mode in ("standard", "remat", "invertible"):
        flow = _tiny_jet(gradient=mode)
        loss = lambda p, flow=flow: -flow.apply({**variables, "params": p}, x, method="log_prob").mean()
        grads[mode] = jax.jit(jax.grad(loss))(variables["params"])
    for mode in ("remat", "invertible"):
        leaves = jax.tree_util.tree_leaves
        for a, b in zip(leaves(grads[mode]), leaves(grads["standard"]), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)
