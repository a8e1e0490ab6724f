"""Faults that used to surface as raw library errors, silent infinities or silent misuse get named
errors whose messages say what is wrong: corrupt dataset files, ActNorm on constant data, empty
batches and degenerate model sizes, and variables from another model."""

import gzip
import struct
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import ActNorm, AffineCoupling, Conv1x1LU
from jaxflows.core import (
    Chain,
    Repeat,
    UnusedVariablesError,
    VariablesMismatchError,
    check_variables,
)
from jaxflows.data import CorruptDatasetError, fashion_mnist
from jaxflows.models import VariationalDequantizer, glow

# --- Fashion-MNIST idx files -------------------------------------------------------------------

TRAIN, TEST = "train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"


def idx_images(count: int, rows: int = 28, cols: int = 28, magic: int = 2051) -> bytes:
    """An idx3 image file's bytes: a big-endian header then count·rows·cols pixels."""
    pixels = np.arange(count * rows * cols, dtype=np.uint32).astype(np.uint8).tobytes()
    return struct.pack(">4I", magic, count, rows, cols) + pixels


def write_fashion(directory, train: bytes | None = None, test: bytes | None = None, raw: bool = False):
    """Write the two image files (gzipped unless `raw`); defaults are small valid files."""
    for name, data in ((TRAIN, train), (TEST, test)):
        data = idx_images(3) if data is None else data
        (directory / name).write_bytes(data if raw else gzip.compress(data))
    return directory


def test_small_valid_idx_files_load(tmp_path):
    data = fashion_mnist(write_fashion(tmp_path))
    assert (len(data.train), len(data.held_out)) == (3, 3)
    assert data.train.all().shape == (3, 28, 28, 1) and data.train.all().dtype == np.uint8


def corrupted(how: str) -> bytes:
    """The bytes of a train-images file damaged in the way `how` names."""
    idx = idx_images(3)
    good = gzip.compress(idx)
    crc = slice(len(good) - 8, len(good) - 4)  # the gzip trailer: CRC-32, then the uncompressed size
    damaged = {
        "truncated gzip": lambda: good[: len(good) // 2],
        "bad crc": lambda: good[: crc.start] + bytes(b ^ 0xFF for b in good[crc]) + good[crc.stop :],
        "not gzipped": lambda: idx,
        "empty file": lambda: b"",
        "empty gzip": lambda: gzip.compress(b""),
        "short header": lambda: gzip.compress(idx[:10]),
        "payload too short": lambda: gzip.compress(idx[:-5]),
        "payload too long": lambda: gzip.compress(idx + b"\x00" * 7),
        "bad magic": lambda: gzip.compress(idx_images(3, magic=2049)),
        "wrong image size": lambda: gzip.compress(idx_images(3, rows=8, cols=8)),
        "bad deflate data": lambda: good[:20] + b"\xff" * 10 + good[30:],
    }
    return damaged[how]()


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated gzip", "truncated gzip stream"),
        ("bad crc", "CRC"),
        ("not gzipped", "not a gzip file"),
        ("empty file", "empty"),
        ("empty gzip", "header"),
        ("short header", "header"),
        ("payload too short", r"header says 3×28×28 = 2352 bytes but the payload has 2347"),
        ("payload too long", r"header says 3×28×28 = 2352 bytes but the payload has 2359"),
        ("bad magic", "magic"),
        ("wrong image size", "28×28"),
        ("bad deflate data", "gzip"),
    ],
)
def test_corrupt_fashion_mnist_file_is_named(tmp_path, how, message):
    write_fashion(tmp_path)
    (tmp_path / TRAIN).write_bytes(corrupted(how))
    with pytest.raises(CorruptDatasetError, match=message) as info:
        fashion_mnist(tmp_path)
    assert str(tmp_path / TRAIN) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_corrupt_test_split_names_its_own_file(tmp_path):
    write_fashion(tmp_path, test=idx_images(2)[:-1])
    with pytest.raises(CorruptDatasetError, match=r"t10k-images-idx3-ubyte\.gz: idx header says"):
        fashion_mnist(tmp_path)


def test_corrupt_file_through_load_dataset(tmp_path, monkeypatch):
    from jaxflows.data import datasets as datasets_module
    from jaxflows.data import load_dataset

    write_fashion(tmp_path, train=b"\x1f\x8b" + zlib.compress(b"junk"), raw=True)
    monkeypatch.setattr(datasets_module, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(CorruptDatasetError, match=TRAIN):
        load_dataset("fashion_mnist")


# --- ActNorm on constant data ------------------------------------------------------------------


def test_actnorm_on_a_constant_batch_stays_finite():
    constant = jnp.full((4, 4, 4, 2), 0.7)
    layer = ActNorm()
    variables = layer.init(jax.random.key(0), constant)
    np.testing.assert_allclose(variables["params"]["log_scale"], 0.0)  # nothing to standardise
    np.testing.assert_allclose(variables["params"]["bias"], -0.7, rtol=1e-6)
    y, log_det = layer.apply(variables, jax.random.uniform(jax.random.key(1), (4, 4, 4, 2)))
    assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(jnp.isfinite(log_det)))
    assert float(jnp.abs(y).max()) < 2.0


def test_actnorm_with_one_zero_variance_channel():
    x = jax.random.normal(jax.random.key(0), (8, 4, 4, 2)) * 3.0 + 1.0
    x = x.at[..., 1].set(5.0)
    layer = ActNorm()
    variables = layer.init(jax.random.key(1), x)
    y, log_det = layer.apply(variables, x)
    np.testing.assert_allclose(y[..., 0].std(), 1.0, atol=1e-4)  # the varying channel is standardised
    np.testing.assert_allclose(y[..., 1], 0.0, atol=1e-5)  # the constant one is only centred
    np.testing.assert_allclose(variables["params"]["log_scale"][1], 0.0)
    assert bool(jnp.all(jnp.isfinite(log_det)))


def test_glow_initialised_on_a_constant_batch_has_finite_log_prob():
    # Before: each ActNorm scaled by 1/eps = 1e6, so other inputs got log p ≈ −1e12 … −inf.
    flow = glow((4, 4, 1), levels=1, depth=2, hidden=4)
    variables = jax.jit(flow.init)(jax.random.key(0), jnp.full((4, 4, 4, 1), 0.5))
    log_prob = jax.jit(flow.apply)(variables, jax.random.uniform(jax.random.key(1), (4, 4, 4, 1)))
    assert bool(jnp.all(jnp.abs(log_prob) < 1e3)), log_prob


# --- degenerate sizes and empty batches --------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden": 0}, "hidden must be an integer ≥ 1, got 0"),
        ({"hidden": -3}, "hidden must be an integer ≥ 1, got -3"),
        ({"hidden": 2.5}, "hidden must be an integer ≥ 1, got 2.5"),
        ({"levels": 0}, "levels must be an integer ≥ 1, got 0"),
        ({"levels": -1}, "levels must be an integer ≥ 1, got -1"),
        ({"depth": 0}, "depth must be an integer ≥ 1, got 0"),
        ({"depth": -2}, "depth must be an integer ≥ 1, got -2"),
        ({"depth": True}, "depth must be an integer ≥ 1, got True"),
    ],
)
def test_glow_rejects_degenerate_sizes_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        glow((4, 4, 1), **{"levels": 1, "depth": 1, "hidden": 4, **kwargs})


def abstract_init(flow, x):
    """Variables as shapes only: the checks below run at trace time, before any arithmetic."""
    return jax.eval_shape(flow.init, jax.random.key(1), x)


@pytest.fixture(scope="module")
def small_flow():
    flow = glow((4, 4, 1), levels=1, depth=2, hidden=4)
    x = jnp.full((2, 4, 4, 1), 0.5)
    return flow, abstract_init(flow, x), x


@pytest.mark.parametrize("method", ["__call__", "log_prob", "forward", "inverse"])
def test_empty_batch_is_rejected(small_flow, method):
    flow, variables, _ = small_flow
    with pytest.raises(ValueError, match="empty batch"):
        flow.apply(variables, jnp.zeros((0, 4, 4, 1)), method=method)


def test_empty_batch_is_rejected_while_tracing(small_flow):
    flow, variables, _ = small_flow
    with pytest.raises(ValueError, match="empty batch"):
        jax.eval_shape(flow.apply, variables, jnp.zeros((0, 4, 4, 1)))


def test_empty_pixel_batch_is_rejected(small_flow):
    flow, variables, _ = small_flow
    pixels = jnp.zeros((0, 4, 4, 1), jnp.uint8)
    with pytest.raises(ValueError, match="empty batch"):
        flow.apply(variables, pixels, jax.random.key(0), 256, method="discrete_log_prob")


@pytest.mark.parametrize("method", ["sample", "sample_and_log_prob"])
@pytest.mark.parametrize("num_samples", [0, -1, 2.0])
def test_sample_count_must_be_positive(small_flow, method, num_samples):
    flow, variables, _ = small_flow
    with pytest.raises(ValueError, match=f"num_samples must be an integer ≥ 1, got {num_samples}"):
        flow.apply(variables, jax.random.key(0), num_samples, method=method)


# --- variables from another model --------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_and_shallow():
    x = jnp.full((2, 4, 4, 1), 0.5)
    deep, shallow = glow((4, 4, 1), levels=1, depth=3, hidden=4), glow((4, 4, 1), levels=1, depth=2, hidden=4)
    return deep, abstract_init(deep, x), shallow, abstract_init(shallow, x), x


def test_variables_from_a_deeper_model_are_rejected(deep_and_shallow):
    _, deep_vars, shallow, _, x = deep_and_shallow
    with pytest.raises(UnusedVariablesError, match=r"bijector/level1/flow_steps/.*\(3, .*\(2, ") as info:
        shallow.apply(deep_vars, x)
    assert "3 stacked steps where the model's Repeat has 2" in str(info.value)
    with pytest.raises(UnusedVariablesError):
        jax.eval_shape(lambda v, a: shallow.apply(v, a, method="forward"), deep_vars, x)
    with pytest.raises(UnusedVariablesError):
        shallow.apply(deep_vars, jax.random.key(0), 2, method="sample")


def test_variables_from_a_shallower_model_are_rejected(deep_and_shallow):
    deep, _, _, shallow_vars, x = deep_and_shallow
    with pytest.raises(VariablesMismatchError, match=r"level1/flow_steps/.*\(2, .*\(3, ") as info:
        deep.apply(shallow_vars, x)
    assert not isinstance(info.value, UnusedVariablesError)


def test_matching_variables_pass(deep_and_shallow):
    _, _, shallow, variables, x = deep_and_shallow
    assert jax.eval_shape(shallow.apply, variables, x).shape == (2,)


def test_extra_variables_are_listed(deep_and_shallow):
    _, _, shallow, variables, x = deep_and_shallow
    extra = {**variables, "params": {**variables["params"], "stray": {"w": jnp.zeros(3)}}}
    extra["batch_stats"] = {"mean": jnp.zeros(1)}
    with pytest.raises(UnusedVariablesError, match="params/stray/w") as info:
        shallow.apply(extra, x)
    assert "batch_stats/mean" in str(info.value)


def test_variables_of_a_model_with_more_levels_are_rejected():
    x = jnp.full((2, 8, 8, 1), 0.5)
    two = glow((8, 8, 1), levels=2, depth=1, hidden=4)
    one = glow((8, 8, 1), levels=1, depth=1, hidden=4)
    with pytest.raises(UnusedVariablesError, match="level2"):
        one.apply(abstract_init(two, x), x)


def test_repeat_rejects_a_stack_of_another_length():
    layer = Chain([ActNorm(), Conv1x1LU(), AffineCoupling(hidden=4)], names=["actnorm", "conv", "coupling"])
    x = jax.random.normal(jax.random.key(0), (2, 2, 2, 4))
    three = abstract_init(Repeat(layer, 3), x)
    with pytest.raises(UnusedVariablesError, match=r"Repeat of length 2 .* stacked 3 deep"):
        jax.eval_shape(lambda v: Repeat(layer, 2).apply(v, x), three)
    with pytest.raises(VariablesMismatchError, match=r"Repeat of length 4 .* stacked 3 deep"):
        jax.eval_shape(lambda v: Repeat(layer, 4).apply(v, x, method="inverse"), three)


def test_check_variables(deep_and_shallow):
    deep, deep_vars, shallow, shallow_vars, x = deep_and_shallow
    check_variables(shallow, shallow_vars)
    check_variables(deep, deep_vars, x)
    with pytest.raises(UnusedVariablesError):
        check_variables(shallow, deep_vars)
    layer = AffineCoupling(hidden=4)
    h = jnp.ones((1, 2, 2, 2))
    variables = abstract_init(layer, h)
    check_variables(layer, variables, h)
    with pytest.raises(UnusedVariablesError, match="params/extra"):
        check_variables(layer, {"params": {**variables["params"], "extra": jnp.zeros(1)}}, h)


def test_a_dequantizers_variables_are_not_unused():
    flow = glow((4, 4, 1), levels=1, depth=1, hidden=4, dequantizer=VariationalDequantizer(hidden=4, depth=1))
    pixels = jnp.zeros((2, 4, 4, 1), jnp.uint8)
    init = lambda p: flow.init(jax.random.key(0), p, jax.random.key(1), 256, method="discrete_log_prob")
    variables = jax.eval_shape(init, pixels)
    assert "dequantizer" in variables["params"]
    x = jnp.full((2, 4, 4, 1), 0.5)
    jax.eval_shape(flow.apply, variables, x)  # log_prob does not read the dequantizer: still the model's
    jax.eval_shape(flow.apply, abstract_init(flow, x), x)  # nor need its variables be there for log_prob


def test_the_variables_check_is_invisible_to_method_interceptors():
    # The reference shapes come from an abstract `init`; an enclosing interceptor (as in
    # jaxflows.analysis) must see only the caller's own apply, not that init.
    flow = glow((4, 4, 1), levels=1, depth=1, hidden=4)
    x = jnp.full((2, 4, 4, 1), 0.5)
    variables = abstract_init(flow, x)
    seen = []

    def interceptor(next_fun, args, kwargs, context):
        seen.append((context.method_name, flow.__dict__.get("_jaxflows_variable_specs") is not None))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v: flow.apply(v, x, method="forward"), variables)
    assert seen and all(ready for _, ready in seen), "no call may happen before the reference is known"
    assert "discrete_log_prob" not in {name for name, _ in seen}
