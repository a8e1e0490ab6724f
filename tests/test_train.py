"""The training pipeline: baseline, non-finite skipping, exact resume, data parallelism, the CLI."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from jaxflows.data import ArraySource
from jaxflows.models import glow
from jaxflows.train import (
    TrainConfig,
    init_state,
    make_mesh,
    make_optimizer,
    make_train_step,
    pixel_baseline_bits_per_dim,
    split_cpu_into_devices,
    train,
)
from jaxflows.train.evaluate import fit_pixel_histogram, histogram_bits_per_dim
from jaxflows.train.host import _FORCED_DEVICES
from jaxflows.train.state import skip_nonfinite

REPO = Path(__file__).resolve().parent.parent

# One tiny configuration shared by the tests below, so they reuse each other's compilations.
TINY = TrainConfig(
    dataset="digits",
    model={"levels": 1, "depth": 1, "hidden": 8},
    batch_size=16,
    init_batch_size=64,
    warmup_steps=2,
    num_steps=6,
    log_every=1,
    checkpoint_every=2,
    keep_checkpoints=2,
    eval_every=0,
    eval_batch_size=128,
    samples_per_temperature=4,
    seed=0,
)


def test_pixel_baseline_on_a_hand_checkable_case():
    # Two 1x1 training images, both 0, two levels, Laplace α = 1: p(0) = 3/4, p(1) = 1/4.
    train = ArraySource(np.zeros((2, 1, 1, 1), np.uint8))
    log_p = fit_pixel_histogram(train, bins=2)
    np.testing.assert_allclose(np.exp(log_p), [[0.75, 0.25]])
    assert histogram_bits_per_dim(log_p, ArraySource(np.ones((1, 1, 1, 1), np.uint8)), 2) == pytest.approx(
        2.0
    )
    held_out = ArraySource(np.array([0, 1], np.uint8).reshape(2, 1, 1, 1))
    expected = (math.log2(4 / 3) + 2.0) / 2  # mean over the two held-out examples
    assert pixel_baseline_bits_per_dim(train, held_out, 2) == pytest.approx(expected)
    # per pixel: a 1x2 image whose pixels differ gets separate histograms
    train2 = ArraySource(np.array([[0, 1], [0, 1]], np.uint8).reshape(2, 1, 2, 1))
    test2 = ArraySource(np.array([[0, 1]], np.uint8).reshape(1, 1, 2, 1))
    assert pixel_baseline_bits_per_dim(train2, test2, 2) == pytest.approx(math.log2(4 / 3))


def test_skip_nonfinite_never_applies_a_nonfinite_update():
    opt = skip_nonfinite(optax.adam(0.1))
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    for _ in range(3):  # more than any "max consecutive errors" would allow
        updates, state = opt.update({"w": jnp.array([1.0, jnp.nan, 0.0])}, state, params)
        np.testing.assert_array_equal(updates["w"], 0.0)
    assert int(state.skipped) == 3
    assert int(state.inner_state[0].count) == 0  # adam's state untouched
    updates, state = opt.update({"w": jnp.ones(3)}, state, params)
    assert bool(jnp.all(updates["w"] < 0)) and int(state.skipped) == 3


def test_nan_batch_is_skipped_and_counted():
    flow = glow((4, 4, 1), levels=1, depth=1, hidden=4)
    config = TrainConfig(warmup_steps=0, learning_rate=1e-2)
    optimizer, mesh = make_optimizer(config), make_mesh()
    pixels = np.random.default_rng(0).integers(0, 4, (8, 4, 4, 1)).astype(np.float32)
    state = init_state(flow, optimizer, pixels, 4, seed=0)
    step = make_train_step(flow, optimizer, 4, mesh)
    bad = pixels.copy()
    bad[2, 1, 1, 0] = np.nan
    before = jax.tree_util.tree_map(np.asarray, state.params)
    state, metrics = step(state, jnp.asarray(bad))
    assert not np.isfinite(float(metrics["loss"])) and int(metrics["skipped_updates"]) == 1
    after = jax.tree_util.tree_map(np.asarray, state.params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
    assert not any(np.isnan(x).any() for x in jax.tree_util.tree_leaves(after))
    state, metrics = step(state, jnp.asarray(pixels))
    assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped_updates"]) == 1
    changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, np.asarray(b)), after, state.params)
    assert any(jax.tree_util.tree_leaves(changed)), "a finite batch must update the parameters"


def _losses(history):
    return {int(row["step"]): row["loss"] for row in history}


def test_resume_after_sigterm_reproduces_the_uninterrupted_run(tmp_path):
    full = train(TINY, tmp_path / "full", progress=False)
    assert [int(r["step"]) for r in full.history] == list(range(1, 7))

    def interrupt(step, state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train(TINY, tmp_path / "resumed", progress=False, on_step=interrupt)
    assert first.preempted and int(first.state.step) == 3
    second = train(TINY, tmp_path / "resumed", progress=False)
    assert [int(r["step"]) for r in second.history] == [4, 5, 6]
    resumed_losses = {**_losses(first.history), **_losses(second.history)}
    assert resumed_losses == _losses(full.history)  # exactly equal, not approximately
    for a, b in zip(
        jax.tree_util.tree_leaves(full.state), jax.tree_util.tree_leaves(second.state), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kept = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == ["4", "6"]  # every 2 steps, the last 2 kept (3 was the SIGTERM save)


def _without_forced_device_count(environ) -> dict:
    """The environment for a subprocess that sets its own CPU device count: a forced count in
    XLA_FLAGS would win over it; the other flags (the suite's compile settings) stay."""
    env = dict(environ)
    env["XLA_FLAGS"] = _FORCED_DEVICES.sub("", env.get("XLA_FLAGS", ""))  # the pattern host.py honours
    return env


_MULTI_DEVICE_SCRIPT = """
import json, sys, jax
from jaxflows.train import apply_process_settings, train
from tests.test_train import TINY
config = TINY.replace(num_steps=3, cpu_devices=8)
apply_process_settings(config, default_prng_impl=sys.argv[2])  # 8 CPU devices, this test's PRNG
result = train(config, sys.argv[1], progress=False)
print(json.dumps({"devices": jax.device_count(), "losses": [r["loss"] for r in result.history]}))
"""


def test_eight_devices_match_one_device_and_resume_on_one(tmp_path):
    env = _without_forced_device_count(os.environ) | {"JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-c", _MULTI_DEVICE_SCRIPT, str(tmp_path / "eight")]
    command.append(jax.config.jax_default_prng_impl)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eight = json.loads(proc.stdout.strip().splitlines()[-1])
    assert eight["devices"] == 8
    one = train(TINY.replace(num_steps=3), tmp_path / "one", progress=False)
    assert jax.device_count() == 1
    one_losses = [r["loss"] for r in one.history]
    np.testing.assert_allclose(eight["losses"], one_losses, rtol=2e-5)
    assert one_losses[0] != one_losses[2]  # the comparison spans real updates
    # The 8-device checkpoint resumes on one device (cpu_devices may change on resume).
    resumed = train(TINY.replace(num_steps=4), tmp_path / "eight", progress=False)
    assert [int(r["step"]) for r in resumed.history] == [4] and np.isfinite(resumed.history[0]["loss"])


_SPLIT_SCRIPT = """
import json, sys, jax
from jaxflows.train import split_cpu_into_devices
got = split_cpu_into_devices(int(sys.argv[1]))
jax.numpy.zeros(1).block_until_ready()  # the backend is running now
try:
    split_cpu_into_devices(int(sys.argv[1]) + 1)
    late = "no error"
except RuntimeError as error:
    late = str(error)
print(json.dumps({"returned": got, "devices": len(jax.devices("cpu")), "late": late,
                  "same": split_cpu_into_devices(len(jax.devices("cpu")))}))
"""


@pytest.mark.parametrize(
    ("xla_flags", "expected"), [(None, 3), ("--xla_force_host_platform_device_count=5", 5)]
)
def test_split_cpu_into_devices(xla_flags, expected):
    env = _without_forced_device_count(os.environ) | {"JAX_PLATFORMS": "cpu"}
    if xla_flags is not None:  # an explicit XLA flag wins over the requested count
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}"
    command = [sys.executable, "-c", _SPLIT_SCRIPT, "3"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["returned"] == out["devices"] == out["same"] == expected
    if xla_flags is None:
        assert "already running with 3 device(s)" in out["late"]
    with pytest.raises(ValueError, match="expected a device count"):
        split_cpu_into_devices(0)


def test_cores_picks_a_device_count_that_divides_the_batch(monkeypatch):
    from jaxflows.train import host

    monkeypatch.setattr(host, "available_cores", lambda: 8)
    assert host.cpu_devices_for(TINY.replace(batch_size=12, cpu_devices="cores")) == 6
    assert host.cpu_devices_for(TINY.replace(batch_size=16, cpu_devices="cores")) == 8
    assert host.cpu_devices_for(TINY.replace(cpu_devices=2)) == 2
    assert host.cpu_devices_for(TINY) is None


def test_main_job_cli_end_to_end(tmp_path, capsys):
    from experiments.train import main

    config = tmp_path / "tiny.py"
    config.write_text(
        "from tests.test_train import TINY\n\ndef get_config():\n    return TINY.replace(num_steps=4)\n"
    )
    workdir = tmp_path / "run"
    main(["--config", str(config), "--workdir", str(workdir), "--no_progress"])
    out = capsys.readouterr().out
    assert "dataset: digits" in out
    assert "per level (first held-out examples): base" in out and "level1 " in out
    flow_bpd = float(out.split("held-out bits/dim (flow):")[1].split()[0])
    base_bpd = float(out.split("held-out bits/dim (per-pixel histogram base):")[1].split()[0])
    assert 0 < flow_bpd < 10 and 0 < base_bpd < math.log2(17)
    grid = workdir / "samples_T0.5_0.7_1.0.png"
    assert grid.exists() and (workdir / "training_curve.png").exists() and (workdir / "metrics.csv").exists()
    width, height = Image.open(grid).size
    assert height >= 3 * 48 and width > 4 * 48  # three temperature rows of four 8x8 samples, upscaled
    assert any((workdir / "tensorboard").iterdir())

    main(["--workdir", str(workdir), "--mode", "eval"])  # config from the workdir
    again = capsys.readouterr().out
    assert f"{flow_bpd:.4f}" in again and f"{base_bpd:.4f}" in again  # same checkpoint, same numbers
    main(["--workdir", str(workdir), "--mode", "interpolate"])
    assert (workdir / "interpolation_0_1.png").exists()


def test_level_diagnostics_add_up_to_the_bits_per_dim():
    from jaxflows.core import bits_per_dim, dequantize
    from jaxflows.train.evaluate import level_diagnostics

    flow = glow((8, 8, 1), levels=2, depth=1, hidden=8)
    pixels = np.random.default_rng(0).integers(0, 17, (16, 8, 8, 1), dtype=np.uint8)
    variables = jax.jit(flow.init)(jax.random.PRNGKey(1), dequantize(jax.random.PRNGKey(2), pixels, 17))
    diagnostics = level_diagnostics(flow, variables, pixels, 17, seed=3)
    terms = {k: v for k, v in diagnostics.items() if k.startswith("bpd_term/")}
    assert set(terms) == {"bpd_term/base", "bpd_term/level1", "bpd_term/level2"}
    x = dequantize(jax.random.PRNGKey(3), pixels, 17)
    expected = float(jnp.mean(bits_per_dim(flow.apply(variables, x), 64, 17)))
    np.testing.assert_allclose(sum(terms.values()) + math.log2(17), expected, rtol=1e-4)
    errors = {k: v for k, v in diagnostics.items() if k.startswith("reconstruction_error/")}
    assert set(errors) == {f"reconstruction_error/{k}" for k in ("level1", "level2", "model")}
    assert all(0 <= v < 1e-4 for v in errors.values())
