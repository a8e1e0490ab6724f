"""Training on a user's own arrays: TrainConfig.dataset takes a Dataset, (train, held_out, num_bins)
of uint8 arrays or array sources, checked like the named datasets; config.json records the arrays by
their description and a resume needs the same ones; the lower-level path (init_state with an optax
optimiser, TrainState.variables) names what it needs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxflows.core.errors import InputDtypeError, InvalidArgumentError, InvalidInputError, ShapeError
from jaxflows.data import ArraySource, array_dataset, describe_dataset, digits
from jaxflows.train import (
    ConfigError,
    ConfigMismatchError,
    TrainConfig,
    apply_overrides,
    init_state,
    load_workdir_config,
    make_mesh,
    make_train_step,
    setup,
    skip_nonfinite,
    train,
)
from tests.test_train import TINY

DIGITS = digits()
TRAIN, HELD_OUT = DIGITS.train.all(), DIGITS.held_out.all()


def test_train_on_arrays_then_resume_only_with_the_same_arrays(tmp_path):
    config = TINY.replace(dataset=(TRAIN, HELD_OUT, 17), num_steps=2, log_every=2)
    result = train(config, tmp_path, progress=False)
    assert result.experiment.dataset.image_shape == (8, 8, 1)
    assert [row["step"] for row in result.history] == [1, 2]  # step 1: the first checkpoint's row
    saved = json.loads((tmp_path / "config.json").read_text())["dataset"]
    assert saved == describe_dataset(array_dataset(TRAIN, HELD_OUT, 17))
    assert saved["train_examples"] == len(TRAIN) and saved["num_bins"] == 17

    resumed = train(config.replace(num_steps=4), tmp_path, progress=False)
    assert int(resumed.state.step) == 4

    changed = TRAIN.copy()
    changed[0, 0, 0, 0] = (changed[0, 0, 0, 0] + 1) % 17
    with pytest.raises(ConfigMismatchError, match=r"dataset:.*sha256"):
        train(config.replace(dataset=(changed, HELD_OUT, 17), num_steps=6), tmp_path, progress=False)

    # the workdir's config names the arrays but holds none: setting it up says what to pass
    stored = load_workdir_config(tmp_path)
    assert stored.dataset == saved
    with pytest.raises(ConfigError, match="holds none: set it to the same data"):
        setup(stored)
    assert apply_overrides(stored, ["dataset=digits"]).dataset == "digits"


def test_a_dataset_an_array_source_and_arrays_are_one_description():
    as_arrays = TrainConfig(dataset=(TRAIN, HELD_OUT, 17))
    as_sources = TrainConfig(dataset=(ArraySource(TRAIN), ArraySource(HELD_OUT), 17))
    as_dataset = TrainConfig(dataset=array_dataset(TRAIN, HELD_OUT, 17))
    descriptions = [describe_dataset(c.dataset) for c in (as_arrays, as_sources, as_dataset)]
    assert descriptions[0] == descriptions[1] == descriptions[2]
    assert as_arrays.dataset.train.all().dtype == np.uint8
    train, held_out = ArraySource(TRAIN, np.zeros(len(TRAIN))), ArraySource(HELD_OUT, np.ones(len(HELD_OUT)))
    labelled = array_dataset(train, held_out, 17, num_classes=2)
    assert describe_dataset(labelled)["sha256"] != descriptions[0]["sha256"]


@pytest.mark.parametrize(
    ("dataset", "error", "message"),
    [
        ((TRAIN[..., 0], HELD_OUT, 17), ShapeError, r"held_out: expected examples of shape \(8, 8\)"),
        ((TRAIN[:, 0, 0, 0], HELD_OUT, 17), ShapeError, "train: expected a batch .* of rank ≥ 2"),
        ((TRAIN, HELD_OUT[:, :4], 17), ShapeError, r"held_out: expected examples of shape \(8, 8, 1\)"),
        ((TRAIN, HELD_OUT, 16), InvalidInputError, "train"),
        ((TRAIN + 0.5, HELD_OUT, 17), InvalidInputError, "non-integer"),
        ((TRAIN.astype(bool), HELD_OUT, 17), InputDtypeError, "dtype bool"),
        ((TRAIN[:0], HELD_OUT, 17), ShapeError, "at least one example"),
        ((TRAIN, HELD_OUT, 300), InvalidArgumentError, "num_bins must be an integer in 2..256"),
        ((TRAIN, HELD_OUT), InvalidArgumentError, r"integer arrays \(uint8\) are discrete data: pass their"),
        ((TRAIN, HELD_OUT, 17, 1), ConfigError, r"must be \(train, held_out\) .* got 4 items"),
        (
            ArraySource(TRAIN),
            ConfigError,
            "must be a dataset name, a jaxflows.data.Dataset, .*got ArraySource",
        ),
        (TRAIN, ConfigError, "must be a dataset name"),
    ],
)
def test_arrays_are_checked_like_the_named_datasets(dataset, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(dataset=dataset)


def test_labels_are_required_for_classes():
    with pytest.raises(InvalidArgumentError, match="needs labels"):
        array_dataset(TRAIN, HELD_OUT, 17, num_classes=10)
    with pytest.raises(InvalidArgumentError, match=r"labels must be in 0..1"):
        train = ArraySource(TRAIN, np.full(len(TRAIN), 2))
        array_dataset(train, ArraySource(HELD_OUT, np.zeros(len(HELD_OUT))), 17, num_classes=2)


def test_init_state_names_a_plain_optax_optimiser_and_variables_feed_apply():
    exp = setup(TINY.replace(dataset=(TRAIN, HELD_OUT, 17)))
    pixels = jnp.asarray(exp.init_batch)
    with pytest.raises(ConfigError, match=r"wrap it, e.g. jaxflows.train.skip_nonfinite\(optax.adam"):
        init_state(exp.flow, optax.adam(2e-3), pixels, 17, seed=0)
    optimizer = skip_nonfinite(optax.adam(2e-3))
    state = init_state(exp.flow, optimizer, pixels, 17, seed=0)
    step = make_train_step(exp.flow, optimizer, 17, make_mesh())
    state, metrics = step(state, pixels[:16])
    assert int(state.step) == 1 and int(metrics["skipped_updates"]) == 0
    plain = state.replace(opt_state=optax.adam(2e-3).init(state.params))  # a state built by hand
    with pytest.raises(ConfigError, match=r"wrap it, e.g. jaxflows.train.skip_nonfinite"):
        make_train_step(exp.flow, optax.adam(2e-3), 17, make_mesh())(plain, pixels[:16])
    key = jax.random.PRNGKey(1)
    log_prob = exp.flow.apply(state.variables(), pixels[:4], key, 17, method="discrete_log_prob")
    assert log_prob.shape == (4,) and bool(jnp.all(jnp.isfinite(log_prob)))
