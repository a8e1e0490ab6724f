"""Config overrides from the command line, hyperparameters that live in the optimiser state, the
fields' declared rules, configs built on a base and smoke modes."""

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxflows.train import (
    ConfigError,
    TrainConfig,
    load_config,
    make_mesh,
    make_optimizer,
    make_train_step,
    train,
)
from jaxflows.train.config import RESUMABLE_FIELDS, apply_overrides
from jaxflows.train.experiment import global_batch, setup
from jaxflows.train.loop import initial_state
from jaxflows.train.state import learning_rate_schedule
from jaxflows.train.steps import compiled_train_step
from tests.test_train import TINY


def test_overrides_set_any_field_with_its_type():
    config = apply_overrides(
        TrainConfig(),
        ["model.hidden=16", "learning_rate=3e-4", "num_steps=7", "sample_temperatures=(0.7, 1)",
         "ema_decay=None", "dataset=fashion_mnist", "grad_clip_norm=2", "dequantizer={'hidden': 8}",
         "reuse_freed_memory=True"],
    )  # fmt: skip
    assert config.model == {**TrainConfig().model, "hidden": 16}
    assert (config.learning_rate, config.num_steps, config.ema_decay) == (3e-4, 7, None)
    assert config.sample_temperatures == (0.7, 1) and config.dataset == "fashion_mnist"
    assert config.grad_clip_norm == 2.0 and isinstance(config.grad_clip_norm, float)
    assert config.dequantizer == {"hidden": 8} and config.reuse_freed_memory is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=1e-3", "TrainConfig has no field 'lr'"),
        ("num_steps=abc", "--set num_steps=abc: expected int, got str"),
        ("num_steps=2.5", "expected int, got float"),
        ("ema_decay=high", "expected float or NoneType, got str"),
        ("batch_size=0", "batch_size must be a positive integer, got 0"),
        ("model.hiden=8", r"model 'glow' .* takes no argument\(s\) \['hiden'\]"),
        ("num_steps", "--set expects field=value"),
        ("seed.x=1", "seed is 0, not a dict"),
        ("cpu_devices=0", 'cpu_devices must be None, "cores" or an integer >= 1, got 0'),
        ("cpu_devices=all", "cpu_devices must be None"),
        ("cpu_devices=3", "cpu_devices must be a count that divides batch_size 64, got 3"),
        ("reuse_freed_memory=1", "expected bool, got int 1"),
    ],
)
def test_overrides_name_the_unknown_field_or_the_wrong_type(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TrainConfig(), [override])


def test_the_cli_applies_overrides(tmp_path):
    from experiments.train import parse_args, resolve_config

    argv = ["--set", "num_steps=3", "model.hidden=8", "--set", "seed=2", "--workdir", str(tmp_path)]
    config = resolve_config(parse_args(argv))
    assert (config.num_steps, config.model["hidden"], config.seed) == (3, 8, 2)


def _one_step(config: TrainConfig):
    exp = setup(config)
    state = initial_state(exp)
    pixels = exp.dataset.train[np.arange(config.batch_size)]
    return exp, state, global_batch(pixels, exp.mesh)


def test_a_learning_rate_sweep_and_a_longer_run_reuse_the_compiled_step():
    step = compiled_train_step(setup(TINY))
    sweep = [
        TINY.replace(learning_rate=5e-3),
        TINY.replace(num_steps=9, warmup_steps=0, lr_decay="cosine"),
        TINY.replace(grad_clip_norm=0.5),
    ]
    for config in sweep:
        assert compiled_train_step(setup(config)) is step
    TINY_result = train(TINY.replace(num_steps=2), None, progress=False)
    compiled = step._cache_size()
    results = [train(c.replace(num_steps=2), None, progress=False) for c in sweep]
    assert step._cache_size() == compiled  # no recompilation for new numbers
    params = [jax.tree_util.tree_leaves(r.state.params) for r in [TINY_result, *results]]
    for other in params[1:]:  # ... and the numbers were used: every run trained differently
        assert any(not np.allclose(a, b) for a, b in zip(params[0], other, strict=True))
    wider = TINY.replace(model={**TINY.model, "hidden": 4})
    assert compiled_train_step(setup(wider)) is not step  # a different model is a different program


@pytest.mark.parametrize(
    "config",
    [TINY.replace(learning_rate=3e-3, warmup_steps=0), TINY.replace(lr_decay="cosine", num_steps=20),
     TINY.replace(grad_clip_norm=1e-3)],
)  # fmt: skip
def test_state_hyperparameters_give_the_same_update_as_an_optimizer_built_from_the_config(config):
    exp, state, pixels = _one_step(config)
    expected_step = make_train_step(exp.flow, make_optimizer(config), exp.dataset.num_bins, make_mesh())
    copy = jax.tree_util.tree_map(np.array, state)
    got, _ = compiled_train_step(exp)(state, pixels)
    want, _ = expected_step(jax.tree_util.tree_map(jax.numpy.asarray, copy), pixels)
    for a, b in zip(
        jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(want.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_schedule_matches_optax():
    import optax

    config = TrainConfig(learning_rate=2e-3, warmup_steps=10, lr_decay="cosine", num_steps=50)
    reference = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 10, 50)
    steps = np.arange(60)
    schedule = learning_rate_schedule(config)
    host = [schedule(int(s)) for s in steps]
    assert all(isinstance(rate, float) for rate in host)  # computed on the host: no device programs
    np.testing.assert_allclose(host, jax.vmap(reference)(steps), rtol=1e-5, atol=1e-9)


CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "configs"


def test_every_field_declares_its_rule_and_whether_a_resume_may_change_it():
    fields = {f.name: f.metadata for f in dataclasses.fields(TrainConfig)}
    assert all(set(meta) == {"rule", "resumable"} for meta in fields.values())
    assert {name for name, meta in fields.items() if meta["resumable"]} == RESUMABLE_FIELDS
    model_or_data = {"dataset", "model", "n_bits", "batch_size", "optimizer", "ema_decay", "seed",
                     "init_batch_size", "dequantizer", "prng_impl"}  # fmt: skip
    assert model_or_data == set(fields) - RESUMABLE_FIELDS
    with pytest.raises(ConfigError, match=r"TrainConfig.ema_decay must be None or a number in \(0, 1\)"):
        TrainConfig(ema_decay=1.0)


def test_configs_built_on_a_base_change_only_what_they_name():
    glow, emerging = load_config(CONFIGS / "glow_cifar10.py"), load_config(CONFIGS / "emerging_cifar10.py")
    assert emerging.replace(model=glow.model) == glow
    assert {k for k in emerging.model if emerging.model[k] != glow.model.get(k)} == {"conv", "conv_kwargs"}
    main_job, long = load_config(CONFIGS / "default.py"), load_config(CONFIGS / "fashion_mnist.py")
    assert (long.lr_decay, long.prng_impl, long.eval_batch_size) == (main_job.lr_decay, "rbg", 500)
    assert (long.dataset, long.ema_decay, long.num_steps, long.train_time_limit_s) == (
        "fashion_mnist", 0.999, 18_000, None,
    )  # fmt: skip


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.py")), ids=lambda p: p.stem)
def test_every_config_file_loads_and_names_a_registered_model_with_valid_arguments(path):
    config = load_config(path)  # validation checks the model's name and keyword arguments
    assert isinstance(config, TrainConfig) and config.num_steps > 0


def test_the_smoke_mode_is_a_smaller_shorter_run_of_the_same_config():
    full, smoke = load_config(CONFIGS / "digits.py"), load_config(CONFIGS / "digits.py", smoke=True)
    assert smoke.dataset == full.dataset and smoke.num_steps < full.num_steps
    assert smoke.model == {**full.model, "depth": 2, "hidden": 32}
    assert (smoke.eval_every, smoke.sample_temperatures, smoke.prng_impl) == (0, (0.7, 1.0), "rbg")
    with pytest.raises(ConfigError, match="has no smoke mode"):
        load_config(CONFIGS / "default.py", smoke=True)


def test_the_command_line_trains_a_configs_smoke_mode():
    from experiments.train import parse_args, resolve_config

    args = parse_args(["--config", str(CONFIGS / "digits.py"), "--smoke", "--set", "num_steps=5"])
    assert resolve_config(args) == load_config(CONFIGS / "digits.py", smoke=True).replace(num_steps=5)
    assert resolve_config(parse_args(["--config", str(CONFIGS / "digits.py")])).num_steps == 1500
