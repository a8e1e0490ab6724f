"""Training that cannot lose or corrupt work: each test reproduces a fault a probe run found."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxflows.train import (
    ConfigError,
    ConfigMismatchError,
    DivergenceError,
    TrainConfig,
    WorkdirLockedError,
    evaluate_bits_per_dim,
    restore_for_inference,
    train,
)
from jaxflows.train.checkpoint import CHECKSUMS, verify_checksums
from jaxflows.train.errors import CheckpointStructureError
from jaxflows.train.metrics import FIELDS, read_metrics
from jaxflows.train.workdir import workdir_lock
from tests.test_train import TINY

REPO = Path(__file__).resolve().parent.parent


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _held_out(workdir: Path, config: TrainConfig) -> tuple[int, float]:
    exp, state = restore_for_inference(config, workdir)
    bpd = evaluate_bits_per_dim(exp.flow, state.variables(), exp.dataset.held_out, 17, exp.mesh, 128)
    return int(state.step), bpd


DIVERGING = TINY.replace(
    learning_rate=10.0, warmup_steps=0, num_steps=60, max_consecutive_skips=5, checkpoint_every=5, log_every=5
)


def test_divergence_stops_the_run_and_keeps_only_finite_checkpoints(tmp_path):
    # learning rate 10: the first update is applied and every later loss is non-finite
    with pytest.raises(DivergenceError, match=r"diverged at step \d+") as error:
        train(DIVERGING, tmp_path, progress=False)
    assert "max_consecutive_skips=5" in str(error.value)
    rows = read_metrics(tmp_path)
    assert rows[-1]["step"] <= 15  # stopped soon after 5 skips in a row, not at step 60
    steps = _steps(tmp_path)
    assert steps, "the finite state after the first update was saved"
    for step in reversed(steps):  # nothing non-finite was saved over it
        restored, bpd = _held_out(tmp_path, DIVERGING)
        assert restored == step and np.isfinite(bpd), f"checkpoint {restored} evaluates to {bpd}"
        shutil.rmtree(tmp_path / "checkpoints" / str(step))


def test_divergence_exits_non_zero_from_the_command_line(tmp_path):
    from experiments.train import main

    config = tmp_path / "diverging.py"
    config.write_text(
        "from tests.test_reliability import DIVERGING\n\ndef get_config():\n    return DIVERGING\n"
    )
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(config), "--workdir", str(tmp_path / "run"), "--no_progress"])
    assert str(exit_.value.code).startswith("error: diverged at step")


def _largest_data_file(step_dir: Path) -> Path:
    files = [p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def _xor_four_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 4):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete_metadata(step_dir: Path) -> None:
    (step_dir / "_CHECKPOINT_METADATA").unlink()


CORRUPTIONS = {
    "xor": lambda d: _xor_four_bytes(_largest_data_file(d)),
    "truncate": lambda d: _truncate(_largest_data_file(d)),
    "metadata": _delete_metadata,
}


@pytest.mark.parametrize(
    "corruption",
    [
        "xor",
        "truncate",  # a write cut short: the checksum and the reader both see it
        pytest.param("metadata", marks=pytest.mark.slow),
    ],
)
def test_a_corrupt_checkpoint_falls_back_to_the_previous_good_one(tmp_path, capfd, corruption):
    train(TINY, tmp_path, progress=False)
    assert _steps(tmp_path) == [4, 6] and (tmp_path / "checkpoints" / "6" / CHECKSUMS).is_file()
    CORRUPTIONS[corruption](tmp_path / "checkpoints" / "6")
    assert verify_checksums(tmp_path / "checkpoints" / "6") is not None

    step, bpd = _held_out(tmp_path, TINY)  # --mode eval: read-only
    assert step == 4 and np.isfinite(bpd)
    warning = [line for line in capfd.readouterr().err.splitlines() if "checkpoint at step 6" in line]
    assert len(warning) == 1, warning
    assert _steps(tmp_path) == [4, 6]  # evaluation moves nothing

    resumed = train(TINY.replace(num_steps=8), tmp_path, progress=False)  # continuing training
    assert [int(r["step"]) for r in resumed.history] == [5, 6, 7, 8]
    assert (tmp_path / "checkpoints_corrupt" / "6").is_dir()  # kept aside, never rotated over the good one
    assert _steps(tmp_path) == [6, 8]
    assert all(verify_checksums(tmp_path / "checkpoints" / str(s)) is None for s in _steps(tmp_path))


def test_resume_refuses_a_config_for_a_different_model_or_data(tmp_path):
    train(TINY.replace(num_steps=2), tmp_path, progress=False)
    saved = (tmp_path / "config.json").read_text()
    deeper = TINY.replace(model={**TINY.model, "depth": 2})
    with pytest.raises(ConfigMismatchError, match=r"model: .*'depth': 1.* -> .*'depth': 2"):
        train(deeper, tmp_path, progress=False)
    with pytest.raises(ConfigMismatchError, match=r"dataset: 'digits' -> 'fashion_mnist'") as error:
        train(TINY.replace(dataset="fashion_mnist", seed=3), tmp_path, progress=False)
    assert "seed: 0 -> 3" in str(error.value)  # every difference is listed
    assert (tmp_path / "config.json").read_text() == saved  # nothing was overwritten
    assert len(read_metrics(tmp_path)) == 2  # nor appended to

    train(TINY.replace(num_steps=3, learning_rate=5e-4), tmp_path, progress=False)  # safe changes
    history = [json.loads(line) for line in (tmp_path / "config_history.jsonl").read_text().splitlines()]
    assert history == [
        {
            "step": 2,
            "changes": {"num_steps": {"from": 2, "to": 3}, "learning_rate": {"from": 1e-3, "to": 5e-4}},
        }
    ]
    assert json.loads((tmp_path / "config.json").read_text())["num_steps"] == 3


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    with workdir_lock(tmp_path), pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
        train(TINY.replace(num_steps=2), tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()
    # a lock file left by a killed process (no one holds the lock): training proceeds
    (tmp_path / ".lock").write_text("pid 999999 on host elsewhere since 2026-01-01 00:00:00\n")
    result = train(TINY.replace(num_steps=2), tmp_path, progress=False)
    assert int(result.state.step) == 2


@pytest.mark.slow  # a subprocess that imports jax and trains: ~15-25 s
def test_a_second_process_is_refused_while_the_first_trains(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom jaxflows.train.workdir import workdir_lock\n"
         "with workdir_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirLockedError, match=f"pid {holder.pid} on host"):
            train(TINY.replace(num_steps=2), tmp_path, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert int(train(TINY.replace(num_steps=2), tmp_path, progress=False).state.step) == 2  # lock released


def _endless_config(tmp_path: Path, fields: str) -> list[str]:
    """Command-line arguments training TINY for 100,000 steps with `fields` into tmp_path/run."""
    config = tmp_path / "long.py"
    config.write_text(
        "from tests.test_train import TINY\n\ndef get_config():\n"
        f"    return TINY.replace(num_steps=100000, {fields})\n"
    )
    return ["--config", str(config), "--workdir", str(tmp_path / "run"), "--no_progress"]


_FILE_SIZE_LIMITED = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, ".")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like ENOSPC
    resource.setrlimit(resource.RLIMIT_FSIZE, (16000, 16000))
    from experiments.train import main
    main(sys.argv[1:])
""")


@pytest.mark.slow  # a subprocess that imports jax and trains: ~15-25 s
def test_a_failed_write_stops_the_run_with_a_named_error(tmp_path):
    args = _endless_config(tmp_path, "checkpoint_every=10, keep_checkpoints=2")
    workdir = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-c", _FILE_SIZE_LIMITED, *args]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not write") and "File too large" in last, proc.stderr[-2000:]
    steps = _steps(workdir)
    assert steps, "the checkpoints written before the failure are kept"
    assert all(verify_checksums(workdir / "checkpoints" / str(s)) is None for s in steps)


def test_keep_checkpoints_zero_and_other_unusable_fields_are_rejected_at_load():
    with pytest.raises(ConfigError, match="keep_checkpoints must be a positive integer, got 0"):
        TINY.replace(keep_checkpoints=0)


@pytest.mark.parametrize(
    "field",
    ["num_steps", "batch_size", "log_every", "checkpoint_every", "eval_batch_size", "init_batch_size",
     "samples_per_temperature", "max_consecutive_skips"],
)  # fmt: skip
def test_zero_sizes_and_intervals_are_named_errors(field):
    with pytest.raises(ConfigError, match=f"TrainConfig.{field} must be a positive integer, got 0"):
        TrainConfig(**{field: 0})


def test_bad_config_values_from_the_command_line_fail_before_anything_compiles(tmp_path):
    from experiments.train import main

    with pytest.raises(SystemExit, match="batch_size must be a positive integer, got 0"):
        main(["--workdir", str(tmp_path), "--set", "batch_size=0"])
    assert not tmp_path.joinpath("checkpoints").exists()


def test_a_config_json_with_unknown_fields_is_a_named_error(tmp_path):
    from jaxflows.train import load_workdir_config

    (tmp_path / "config.json").write_text(json.dumps({"num_steps": 5, "learning_rte": 1.0}))
    with pytest.raises(ConfigError, match=r"unknown TrainConfig field\(s\) \['learning_rte'\]"):
        load_workdir_config(tmp_path)


@pytest.mark.parametrize("leftover", ["", "step,loss\n", "1,4.5,4.4,10"])
def test_metrics_csv_left_empty_or_cut_off_by_a_crash_gets_its_header(tmp_path, leftover):
    (tmp_path / "metrics.csv").write_text(leftover)  # kill -9 before (or while) writing the first row
    train(TINY.replace(num_steps=2), tmp_path, progress=False)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == ",".join(FIELDS)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_metrics_are_rewound_to_the_checkpoint_a_run_resumes_from(tmp_path):
    train(TINY.replace(num_steps=4), tmp_path, progress=False)  # checkpoints 2 and 4
    with (tmp_path / "metrics.csv").open("a") as f:  # rows a killed run wrote after its last checkpoint
        f.write("5,4.0,4.0,1.0,0.001,1.0,0,\n6,4.0,4.0,1.0,0.001,1.0,0,\n7,4.0")
    train(TINY.replace(num_steps=6), tmp_path, progress=False)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert read_metrics(tmp_path)[-1]["loss"] != 4.0


def test_sigterm_after_a_scheduled_checkpoint_is_a_clean_preemption(tmp_path):
    """A signal that lands while step 4's scheduled checkpoint is saved (or just after, in on_step)
    must not save step 4 a second time ("already exists"): the run ends preempted at step 4."""

    def terminate(step, state):
        if step == 4:  # checkpoint_every=2: step 4 has just been saved
            os.kill(os.getpid(), signal.SIGTERM)

    result = train(TINY, tmp_path, progress=False, on_step=terminate)
    assert result.preempted and result.signal == "SIGTERM" and int(result.state.step) == 4
    assert 4 in _steps(tmp_path)
    resumed = train(TINY, tmp_path, progress=False)
    assert [int(r["step"]) for r in resumed.history] == [5, 6]


def test_ctrl_c_saves_a_checkpoint_like_sigterm(tmp_path):
    def interrupt(step, state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a background shell
    result = train(TINY, tmp_path, progress=False, on_step=interrupt)
    assert result.preempted and result.signal == "SIGINT" and int(result.state.step) == 3
    assert 3 in _steps(tmp_path)
    assert signal.getsignal(signal.SIGINT) is before  # restored
    resumed = train(TINY, tmp_path, progress=False)
    assert [int(r["step"]) for r in resumed.history] == [4, 5, 6]


@pytest.mark.slow  # a subprocess that imports jax and trains: ~15-25 s
def test_ctrl_c_on_the_command_line_saves_and_exits_cleanly(tmp_path):
    import time

    args = _endless_config(tmp_path, "checkpoint_every=1000, log_every=5")
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "experiments.train", *args]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(read_metrics(workdir)) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    step = int(out.split("stopped by SIGINT at step ")[1].split(";")[0])
    assert _steps(workdir) == [1, step]  # orbax's first save, and the one Ctrl-C asked for
    assert "cannot schedule new futures" not in err and "Traceback" not in err


def test_an_intact_checkpoint_of_another_model_is_named_not_called_corrupt(tmp_path, monkeypatch):
    """After an upgrade that renames or reshapes parameters, the resume check (on the config)
    passes but the checkpoints do not fit the model: that is a named error listing the
    differences, nothing is moved to checkpoints_corrupt/, and the run does not start over."""
    train(TINY, tmp_path, progress=False)
    metrics_before = (tmp_path / "metrics.csv").read_text()
    from jaxflows.models import glow
    from jaxflows.train import experiment

    wider = lambda config, shape, *discrete: glow(
        tuple(shape), levels=1, depth=1, hidden=12
    )  # same config, other shapes
    monkeypatch.setattr(experiment, "build_flow", wider)
    with pytest.raises(
        CheckpointStructureError, match=r"intact but holds a different model: of another shape"
    ):
        train(TINY.replace(num_steps=8), tmp_path, progress=False)
    assert _steps(tmp_path) == [4, 6] and not (tmp_path / "checkpoints_corrupt").exists()
    assert (tmp_path / "metrics.csv").read_text() == metrics_before


def test_a_checkpoint_that_cannot_be_created_ends_the_command_at_once(tmp_path):
    """A save that fails at creation (here `checkpoints` is a file; read-only or unwritable
    directories fail the same way) used to print ~200 lines of orbax tracebacks and then never
    exit: the interpreter waited on orbax's non-daemon threads. It must end, non-zero, in seconds,
    with one line naming the failed write."""
    args = _endless_config(tmp_path, "checkpoint_every=1, compilation_cache_dir=None")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("not a directory")
    command = [sys.executable, "-m", "experiments.train", *args]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("WARNING")]
    assert lines[-1].startswith("error: the checkpoint of step 1 could not be written"), lines[-5:]
    assert len(lines) < 5 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
