"""Polyak averaging: the debiased moving average, the train step that keeps it, its checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.models import glow
from jaxflows.train import (
    TrainConfig,
    evaluate,
    init_state,
    make_mesh,
    make_optimizer,
    make_train_step,
    train,
)
from jaxflows.train.state import ema_weight, update_ema


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.999])
def test_debiased_average_equals_the_weighted_mean(decay):
    values = np.random.default_rng(0).normal(size=(7, 3))
    ema = {"w": jnp.asarray(values[0])}  # any start: the first update's weight is 1
    for t in range(1, 8):
        ema = update_ema(ema, {"w": jnp.asarray(values[t - 1])}, decay, t)
        weights = decay ** np.arange(t - 1, -1, -1)  # d^(t-s), s = 1..t
        expected = (weights[:, None] * values[:t]).sum(0) / weights.sum()
        np.testing.assert_allclose(ema["w"], expected, rtol=1e-5, atol=1e-6)
    assert float(ema_weight(0.999, 1)) == pytest.approx(1.0)


def test_constant_parameters_are_their_own_average():
    params = {"a": jnp.full((2,), 3.25)}
    ema = params
    for t in range(1, 50):
        ema = update_ema(ema, params, 0.999, t)
    np.testing.assert_allclose(ema["a"], 3.25, rtol=1e-6)


def test_ema_decay_out_of_range_is_a_named_error():
    flow = glow((4, 4, 1), levels=1, depth=1, hidden=4)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        make_train_step(flow, make_optimizer(TrainConfig()), 4, make_mesh(), ema_decay=1.0)


def test_train_step_keeps_the_average_of_the_parameters_it_produced():
    flow = glow((4, 4, 1), levels=1, depth=1, hidden=4)
    optimizer, mesh, decay = make_optimizer(TrainConfig(warmup_steps=0, learning_rate=1e-2)), make_mesh(), 0.9
    pixels = jnp.asarray(np.random.default_rng(0).integers(0, 4, (8, 4, 4, 1)).astype(np.uint8))
    state = init_state(flow, optimizer, pixels, 4, seed=0, ema_decay=decay)
    step = make_train_step(flow, optimizer, 4, mesh, ema_decay=decay)
    seen = []
    for _ in range(4):
        state, _ = step(state, pixels)
        seen.append(jax.device_get(state.params))  # the next step donates (deletes) them
    weights = decay ** np.arange(3, -1, -1)
    expected = jax.tree_util.tree_map(
        lambda *p: sum(w * np.asarray(x) for w, x in zip(weights, p, strict=True)) / weights.sum(), *seen
    )
    jax.tree_util.tree_map(
        lambda e, a: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6), expected, state.ema_params
    )
    assert state.variables(averaged=True)["params"] is state.ema_params
    assert state.variables()["params"] is state.params


def test_average_is_checkpointed_resumed_and_evaluated(tmp_path):
    config = TrainConfig(
        dataset="digits",
        model={"levels": 1, "depth": 1, "hidden": 8},
        batch_size=16,
        init_batch_size=64,
        warmup_steps=2,
        num_steps=4,
        log_every=2,
        checkpoint_every=2,
        keep_checkpoints=2,
        eval_every=0,
        eval_batch_size=128,
        ema_decay=0.9,
    )
    full = train(config, tmp_path / "full", progress=False)
    first = train(config.replace(num_steps=2), tmp_path / "resumed", progress=False)
    assert first.state.ema_params is not None
    resumed = train(config, tmp_path / "resumed", progress=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, full.state.ema_params, resumed.state.ema_params)
    scores = evaluate(resumed.experiment, resumed.state)
    assert np.isfinite(scores["flow_bits_per_dim"]) and np.isfinite(scores["flow_bits_per_dim_without_ema"])
    assert scores["flow_bits_per_dim"] != scores["flow_bits_per_dim_without_ema"]
