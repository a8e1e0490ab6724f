"""Checkpoint format versions: a workdir written before glow(steps=K) became glow(depth=K) is refused
with a named error until `python -m jaxflows.train.convert` converts it; converted, it evaluates and
resumes exactly as the code that wrote it did.

The fixture tests/data/checkpoint_v1 was written by commit 68ec662 (format 1: the flow steps' scope
`levelN/steps`, config `model.steps`): a digits Glow (levels 2, steps 3, hidden 4) with a
variational dequantizer (hidden 4, steps 1) and ema_decay 0.9, trained 4 steps of batch 16 with
checkpoints at steps 2 and 4 (tensorboard/ and .lock removed), under the test suite's PRNG (rbg)
and XLA flags (tests/conftest.py). tests/data/checkpoint_v1_reference.json
holds what that code computed from it: the held-out bits/dim of the averaged parameters at step 4
(batch 128, one dequantisation key per batch, which the test redraws the same way) and the losses
of steps 5 and 6 after resuming with num_steps=6, log_every=1. Training has since keyed its noise
by example (`resumed_losses_per_example_noise`: the converted fixture's resumed losses, recorded
when its bits/dim still matched the old code's to 1e-7).
"""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxflows.core.objective import discrete_bits_per_dim
from jaxflows.train import (
    CheckpointFormatError,
    WorkdirLockedError,
    convert_workdir,
    importance_weighted_log_prob,
    load_workdir_config,
    restore_for_inference,
    train,
)
from jaxflows.train.config import config_from_dict
from jaxflows.train.convert import converted_config, renamed_scopes
from jaxflows.train.convert import main as convert_main
from jaxflows.train.workdir import FORMAT, FORMAT_VERSION, workdir_format, workdir_lock
from tests.test_train import TINY

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "data" / "checkpoint_v1"
REFERENCE = json.loads((REPO / "tests" / "data" / "checkpoint_v1_reference.json").read_text())


@pytest.fixture
def old_workdir(tmp_path) -> Path:
    workdir = tmp_path / "v1"
    shutil.copytree(FIXTURE, workdir)
    return workdir


def _tree(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_an_unconverted_workdir_is_a_named_error_naming_the_converter(old_workdir):
    before = _tree(old_workdir)
    assert workdir_format(old_workdir) == 1
    command = f"python -m jaxflows.train.convert {old_workdir}"
    with pytest.raises(CheckpointFormatError, match="format 1") as error:
        load_workdir_config(old_workdir)  # eval/sample without --config
    assert command in str(error.value)
    config = config_from_dict(converted_config(json.loads((old_workdir / "config.json").read_text())))
    with pytest.raises(CheckpointFormatError, match=re.escape(command)):
        restore_for_inference(config, old_workdir)  # eval/sample with --config
    with pytest.raises(CheckpointFormatError, match=re.escape(command)):
        train(config.replace(num_steps=6), old_workdir, progress=False)  # resume
    assert _tree(old_workdir) == sorted([*before, ".lock"]), "nothing was moved, written or marked corrupt"


def test_a_converted_workdir_evaluates_and_resumes_as_the_old_code_did(old_workdir, capsys):
    out = subprocess.run(
        [sys.executable, "-m", "jaxflows.train.convert", str(old_workdir)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "checkpoints of steps [2, 4]" in out.stdout
    assert workdir_format(old_workdir) == FORMAT_VERSION
    assert json.loads((old_workdir / FORMAT).read_text()) == {"version": FORMAT_VERSION}
    assert sorted(p.name for p in (old_workdir / "checkpoints_format1").iterdir()) == ["2", "4"]
    config = load_workdir_config(old_workdir)
    assert config.model["depth"] == 3 and "steps" not in config.model
    assert config.dequantizer == {"hidden": 4, "depth": 1}

    exp, state = restore_for_inference(config, old_workdir)
    assert int(state.step) == REFERENCE["step"]
    bpd = _bits_per_dim_with_one_key_per_batch(exp, state.variables(averaged=True), 128)
    assert bpd == pytest.approx(REFERENCE["eval_bits_per_dim_ema"], rel=1e-5)

    # the optimiser's moments follow their parameters: resumed losses are those of the converted
    # checkpoint when it was first verified against the old code (per-example noise since)
    result = train(config.replace(num_steps=6, log_every=1), old_workdir, progress=False)
    losses = {str(int(row["step"])): row["loss"] for row in result.history}
    assert losses == pytest.approx(REFERENCE["resumed_losses_per_example_noise"], rel=1e-5)

    convert_main([str(old_workdir)])
    assert "already in checkpoint format 2" in capsys.readouterr().out


def _bits_per_dim_with_one_key_per_batch(exp, variables, batch_size: int) -> float:
    """Held-out bits/dim drawn as the code that wrote the fixture drew it: one key per batch of
    `batch_size` (zero-padded), `fold_in(fold_in(key(0), draw 0), batch)`, rather than one per example."""
    test, bins = exp.dataset.held_out, exp.dataset.num_bins
    total = 0.0
    for b, start in enumerate(range(0, len(test), batch_size)):
        idx = np.arange(start, min(start + batch_size, len(test)))
        pixels = np.zeros((batch_size, *exp.flow.event_shape), np.uint8)
        pixels[: len(idx)] = test[idx]
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 0), b)
        log_prob = importance_weighted_log_prob(exp.flow, variables, pixels, key, bins, 1)
        total += float(
            np.sum(discrete_bits_per_dim(np.asarray(log_prob)[: len(idx)], math.prod(exp.flow.event_shape)))
        )
    return total / len(test)


def test_only_a_levels_steps_scope_and_the_depth_keys_are_renamed():
    tree = {
        "params": {"bijector": {"level1": {"steps": {"a": 1}, "split": {"steps": 2}}, "steps": 3}},
        "opt_state": [{"level2": {"steps": 4}}],
    }
    assert renamed_scopes(tree) == {
        "params": {"bijector": {"level1": {"flow_steps": {"a": 1}, "split": {"steps": 2}}, "steps": 3}},
        "opt_state": [{"level2": {"flow_steps": 4}}],
    }
    config = {"model": {"levels": 2, "steps": 8}, "dequantizer": {"steps": 2}, "num_steps": 10}
    assert converted_config(config) == {
        "model": {"levels": 2, "depth": 8},
        "dequantizer": {"depth": 2},
        "num_steps": 10,
    }


def test_training_records_the_format_and_a_current_workdir_without_a_record_is_read(tmp_path):
    train(TINY.replace(num_steps=2), tmp_path, progress=False)
    assert json.loads((tmp_path / FORMAT).read_text()) == {"version": FORMAT_VERSION}
    (tmp_path / FORMAT).unlink()  # as written between the rename and the format record
    assert workdir_format(tmp_path) == FORMAT_VERSION
    assert int(restore_for_inference(TINY, tmp_path)[1].step) == 2


def test_the_converter_leaves_a_workdir_that_is_being_trained_alone(old_workdir):
    with workdir_lock(old_workdir), pytest.raises(WorkdirLockedError, match="already being trained"):
        convert_workdir(old_workdir)
    assert workdir_format(old_workdir) == 1 and not (old_workdir / "checkpoints_format1").exists()


def test_the_converter_refuses_a_directory_that_is_not_a_workdir(tmp_path):
    with pytest.raises(CheckpointFormatError, match="not a training workdir"):
        convert_workdir(tmp_path)
    with pytest.raises(SystemExit, match="not a training workdir"):
        convert_main([str(tmp_path / "missing")])
