"""Every flow trains: the model registry, continuous data in `train()`, `fit`, the vector builders,
`functional`'s log_prob/sample and the datasets registry."""

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows import functional
from jaxflows.bijectors import Conv1x1LU, LULinear
from jaxflows.core import Flow, StandardNormal
from jaxflows.core.errors import InvalidArgumentError, InvalidInputError, ShapeError
from jaxflows.data import (
    DATASETS,
    Dataset,
    array_dataset,
    load_dataset,
    register_dataset,
    ring_of_gaussians,
    ring_of_gaussians_log_prob,
)
from jaxflows.models import MODELS, build_model, coupling_flow, glow, register_model
from jaxflows.testing import check_bijector
from jaxflows.train import ConfigError, ConfigMismatchError, TrainConfig, apply_overrides, fit, train
from jaxflows.train.loop import reduce_metrics

ROOT = Path(__file__).resolve().parent.parent
RING_TRAIN = np.asarray(ring_of_gaussians(jax.random.key(0), 2048))
RING_HELD_OUT = np.asarray(ring_of_gaussians(jax.random.key(1), 1024))
TINY_VECTOR = {"name": "coupling_flow", "depth": 2, "hidden": 16}
CONTINUOUS = TrainConfig(
    dataset=(RING_TRAIN, RING_HELD_OUT),
    model=TINY_VECTOR,
    batch_size=128,
    num_steps=4,
    log_every=2,
    eval_every=4,
    checkpoint_every=2,
    warmup_steps=1,
    init_batch_size=256,
    eval_batch_size=512,
    compilation_cache_dir=None,
)

# Tiny keyword arguments of every registered builder on vectors (d = 2) or images: a new family adds its row.
VECTOR_BUILDERS = {
    "coupling_flow": {"depth": 2, "hidden": 8},
    "planar_flow": {"depth": 3},
    "sylvester_flow": {"depth": 2},
    "residual_flow": {"depth": 2, "hidden": 8},
}


def test_every_builder_takes_the_event_shape_first_and_an_int_for_vectors():
    for name, kwargs in VECTOR_BUILDERS.items():
        flow = build_model(name, (2,), kwargs)
        assert flow.event_shape == (2,) and flow.domain is None  # vector data is unbounded
        assert MODELS[name](2, **kwargs).event_shape == (2,)
    assert "glow" in MODELS and MODELS["glow"] is glow


# The residual and Sylvester assemblies' harness cases are slow (root finding and fixed points in
# float64); their layers go through the harness in the default run (test_residual, test_vector_flows).
@pytest.mark.parametrize(
    "name",
    [
        "coupling_flow",
        "planar_flow",
        pytest.param("residual_flow", marks=pytest.mark.slow),
        pytest.param("sylvester_flow", marks=pytest.mark.slow),
    ],
)
def test_vector_builders_are_bijections(name):
    kwargs = {**VECTOR_BUILDERS[name], "depth": 1}  # the layers' own tests cover depth; this, the assembly
    check_bijector(lambda: build_model(name, (2,), kwargs), shape=(3, 2), perturb=0.02)


def test_lu_linear_is_conv1x1_lu_on_vectors():
    check_bijector(LULinear, shape=(3, 4))
    x = jax.random.normal(jax.random.key(0), (5, 4))
    v = LULinear().init(jax.random.key(1), x)
    image = x.reshape(5, 1, 1, 4)  # one pixel: the same matrix
    y, log_det = LULinear().apply(v, x)
    y_image, log_det_image = Conv1x1LU().apply(v, image)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_image).reshape(5, 4))
    np.testing.assert_array_equal(np.asarray(log_det), np.asarray(log_det_image))


def test_unknown_model_keys_and_names_are_config_errors_naming_the_builder():
    with pytest.raises(ConfigError, match=r"model 'coupling_flow' .*takes no argument\(s\) \['levels'\]"):
        TrainConfig(model={"name": "coupling_flow", "levels": 2})
    with pytest.raises(ConfigError, match=r"names model 'nope'; registered models: \["):
        TrainConfig(model={"name": "nope"})
    with pytest.raises(ConfigError, match="set by the pipeline"):
        TrainConfig(model={"name": "coupling_flow", "data_range": None})
    glow_config = TrainConfig()
    switched = apply_overrides(glow_config, ["model.name=planar_flow", "model.depth=4"])
    assert switched.model == {"name": "planar_flow", "depth": 4}  # glow's keys are dropped
    assert apply_overrides(glow_config, ["model.hidden=8"]).model == {**glow_config.model, "hidden": 8}


def test_a_registered_user_builder_trains_by_name():
    def my_flow(event_shape, *, depth: int = 1, data_range=None):
        return coupling_flow(event_shape, depth=depth, hidden=8, data_range=data_range)

    register_model("test_my_flow", my_flow)
    try:
        result = train(CONTINUOUS.replace(model={"name": "test_my_flow"}, num_steps=2), None, progress=False)
        assert np.isfinite(result.history[-1]["loss"])
        with pytest.raises(InvalidArgumentError, match="already registered"):
            register_model("test_my_flow", my_flow)
    finally:
        del MODELS["test_my_flow"]


def test_continuous_data_trains_resumes_and_reports_nats(tmp_path):
    result = train(CONTINUOUS, tmp_path, progress=False)
    last = result.history[-1]
    assert {"nats", "nats_per_dim", "eval_nats", "eval_nats_per_dim"} <= set(last)
    assert "bits_per_dim" not in last and last["loss"] > 0
    np.testing.assert_allclose(last["eval_nats_per_dim"], last["eval_nats"] / 2, rtol=1e-6)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("step,loss,nats,nats_per_dim")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["dataset"]["num_bins"] is None and saved["dataset"]["image_shape"] == [2]
    # the same arrays resume (step for step as an uninterrupted run); other arrays are refused
    longer = train(CONTINUOUS.replace(num_steps=6), tmp_path, progress=False)
    assert int(longer.state.step) == 6
    with pytest.raises(ConfigMismatchError, match="dataset"):
        train(
            CONTINUOUS.replace(dataset=(RING_TRAIN + 1.0, RING_HELD_OUT), num_steps=8),
            tmp_path,
            progress=False,
        )


def test_interrupted_continuous_run_resumes_exactly(tmp_path):
    straight = train(CONTINUOUS.replace(num_steps=4, eval_every=0), None, progress=False)
    train(CONTINUOUS.replace(num_steps=2, eval_every=0), tmp_path, progress=False)
    resumed = train(CONTINUOUS.replace(num_steps=4, eval_every=0), tmp_path, progress=False)
    a, b = jax.tree_util.tree_leaves(straight.state.params), jax.tree_util.tree_leaves(resumed.state.params)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_image_only_fields_and_integer_pairs_are_errors_for_continuous_data():
    from jaxflows.train import setup

    for field, value in [("n_bits", 4), ("eval_dequant_draws", 2), ("baseline_smoothing", 0.5)]:
        with pytest.raises(ConfigError, match=rf"continuous .*\['{field}'\] only apply to discrete"):
            setup(CONTINUOUS.replace(**{field: value}))
    pixels = np.zeros((8, 4), np.uint8)
    with pytest.raises(InvalidArgumentError, match="discrete data: pass their number of levels"):
        TrainConfig(dataset=(pixels, pixels))
    discrete = TrainConfig(dataset=(pixels, pixels, 4))
    assert discrete.dataset.discrete and discrete.dataset.event_shape == (4,)  # 4-d pixel vectors


def test_discrete_pixel_vectors_train_in_bits_per_dim():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4, size=(256, 6)).astype(np.uint8)
    config = CONTINUOUS.replace(dataset=(pixels[:192], pixels[192:], 4), model=TINY_VECTOR, batch_size=64)
    row = train(config, None, progress=False).history[-1]
    assert "eval_bits_per_dim" in row and 0 < row["eval_bits_per_dim"] < 4  # log2(4) = 2 is uniform


def test_fit_reaches_the_ring_density_and_keeps_the_best_held_out_variables():
    flow = coupling_flow(2, coupling="spline", mixing="lu", depth=3, hidden=32)
    variables, history = fit(
        flow, RING_TRAIN, RING_HELD_OUT, steps=600, batch_size=256, key=jax.random.key(0),
        learning_rate=3e-3, eval_every=100, progress=False,
    )  # fmt: skip
    assert [row["step"] for row in history] == [100, 200, 300, 400, 500, 600]
    assert all({"train_loss", "held_out_loss", "seconds"} <= set(row) for row in history)
    nll = -np.asarray(flow.apply(variables, RING_HELD_OUT))
    true_nll = -np.asarray(ring_of_gaussians_log_prob(RING_HELD_OUT))
    gap = nll - true_nll
    paired_se = gap.std(ddof=1) / math.sqrt(len(gap))
    # returned variables are the best evaluation's, and within 0.3 nats of the true density
    assert nll.mean() == pytest.approx(min(row["held_out_loss"] for row in history), rel=1e-5)
    assert 0 < gap.mean() < 0.3 and paired_se < 0.05


def test_fit_stops_with_patience_and_takes_contexts_and_levels():
    flow = coupling_flow(2, depth=1, hidden=8, context_features=1)
    context = np.ones((len(RING_TRAIN), 1), np.float32)
    _, history = fit(
        flow, RING_TRAIN, RING_HELD_OUT, steps=300, batch_size=128, key=jax.random.key(0),
        context=context, held_out_context=context[: len(RING_HELD_OUT)], learning_rate=0.0,
        eval_every=20, patience=2, progress=False,
    )  # fmt: skip
    assert [row["step"] for row in history] == [20, 40, 60]  # no improvement at learning rate 0
    with pytest.raises(InvalidArgumentError, match="conditional: pass context"):
        fit(flow, RING_TRAIN, steps=1, batch_size=8, key=jax.random.key(0))
    pixels = np.random.default_rng(0).integers(0, 4, size=(64, 2)).astype(np.uint8)
    with pytest.raises(InvalidArgumentError, match="needs levels="):
        fit(coupling_flow(2, depth=1, hidden=8), pixels, steps=1, batch_size=8, key=jax.random.key(0))
    _, h = fit(coupling_flow(2, depth=1, hidden=8, data_range=(0.0, 1.0)), pixels, pixels, steps=2,
               batch_size=32, key=jax.random.key(0), levels=4, eval_every=2, progress=False)  # fmt: skip
    assert 0 < h[-1]["held_out_loss"] < 4  # bits/dim of 4-level data


def test_functional_gives_log_prob_and_sample_and_still_unpacks_as_three():
    flow = coupling_flow(2, depth=2, hidden=8)
    variables = flow.init(jax.random.key(0), RING_TRAIN[:8])
    f = functional(flow, variables)
    forward, inverse, log_det = f
    assert callable(inverse) and callable(log_det)
    np.testing.assert_allclose(f.log_prob(RING_TRAIN[:8]), flow.apply(variables, RING_TRAIN[:8]), rtol=1e-6)
    samples = jax.jit(f.sample, static_argnums=1)(jax.random.key(1), 5)
    assert samples.shape == (5, 2) and forward(samples)[0].shape == (5, 2)
    bijector = functional(Conv1x1LU(), Conv1x1LU().init(jax.random.key(0), jnp.ones((1, 2, 2, 2))))
    assert bijector.log_prob is None and bijector.sample is None


def test_a_vector_flow_is_unbounded_by_default_and_an_image_flow_says_how_to_allow_it():
    vector = Flow(LULinear(), StandardNormal(), event_shape=(2,))
    v = vector.init(jax.random.key(0), RING_TRAIN[:4])
    assert np.all(np.isfinite(vector.apply(v, 10.0 * RING_TRAIN[:4])))
    image = Flow(Conv1x1LU(), StandardNormal(), event_shape=(2, 2, 2))
    v = image.init(jax.random.key(0), jnp.full((1, 2, 2, 2), 0.5))
    with pytest.raises(InvalidInputError, match="data_range=None for unbounded data"):
        image.apply(v, jnp.full((1, 2, 2, 2), 2.0))
    with pytest.raises(InvalidArgumentError, match="data_range must be"):
        Flow(LULinear(), StandardNormal(), event_shape=(2,), data_range="images")


def test_named_datasets_registry_and_toy_data():
    assert {"digits", "fashion_mnist", "two_moons", "ring_of_gaussians"} <= set(DATASETS)
    moons = load_dataset("two_moons")
    assert not moons.discrete and moons.event_shape == (2,) and len(moons.held_out) == 10_000
    np.testing.assert_array_equal(moons.train[np.arange(4)], load_dataset("two_moons").train[np.arange(4)])
    mine = array_dataset(RING_TRAIN, RING_HELD_OUT, name="mine")
    register_dataset("test_mine", lambda data_dir: mine)
    try:
        assert load_dataset("test_mine") is mine
        with pytest.raises(InvalidArgumentError, match="already registered"):
            register_dataset("test_mine", lambda data_dir: mine)
    finally:
        del DATASETS["test_mine"]
    with pytest.raises(InvalidArgumentError, match="continuous"):
        load_dataset("two_moons", n_bits=4)


def test_held_out_is_the_split_name_and_test_a_deprecated_alias():
    data = array_dataset(RING_TRAIN, RING_HELD_OUT)
    assert isinstance(data, Dataset) and data.image_shape == data.event_shape == (2,)
    with pytest.warns(DeprecationWarning, match="Dataset.held_out"):
        assert data.test is data.held_out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.held_out is not None


def test_a_new_train_step_metric_is_reduced_by_name():
    window = [
        {
            "loss": 3.0,
            "nats": 3.0,
            "grad_norm": 1.0,
            "skipped_updates": 0,
            "skipped_in_a_row": 0,
            "extra": 1.0,
        },
        {
            "loss": 1.0,
            "nats": 1.0,
            "grad_norm": 2.0,
            "skipped_updates": 1,
            "skipped_in_a_row": 1,
            "extra": 3.0,
        },
    ]
    row = reduce_metrics(window)
    assert row == {"loss": 1.0, "nats": 2.0, "grad_norm": 2.0, "skipped_updates": 1, "extra": 2.0}


def test_the_cli_trains_a_vector_flow_on_two_moons(tmp_path):
    command = [sys.executable, "-m", "experiments.train", "--config", "experiments/configs/two_moons.py",
               "--smoke", "--workdir", str(tmp_path), "--set", "num_steps=20", "eval_every=20",
               "compilation_cache_dir=None"]  # fmt: skip
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "held-out NLL (flow):" in out.stdout and "continuous" in out.stdout
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "training_curve.png").is_file()


def test_glow_workdirs_without_a_model_name_resume_with_one(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 4, size=(64, 4, 4, 1)).astype(np.uint8)
    model = {"levels": 1, "depth": 1, "hidden": 8}
    config = CONTINUOUS.replace(dataset=(pixels, pixels, 4), model=model, batch_size=16, init_batch_size=16)
    train(config.replace(num_steps=2), tmp_path, progress=False)
    resumed = train(config.replace(model={"name": "glow", **model}), tmp_path, progress=False)
    assert int(resumed.state.step) == 4


def test_builder_errors_name_the_builder():
    with pytest.raises(ShapeError, match="coupling_flow: expected the shape of one vector"):
        coupling_flow((4, 4, 1))
    with pytest.raises(ShapeError, match="d must be ≥ 2"):
        coupling_flow(1)
