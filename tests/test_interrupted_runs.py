"""The smaller faults of issue 42: a second Ctrl-C (one line, and the save it cut short is sealed,
not later called unverified), metrics.csv deleted during a run (recreated with a warning), and config
files that do not run or set unknown fields (one ConfigFileError line with file and line)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jaxflows.train import train
from jaxflows.train.checkpoint import CHECKSUMS, CheckpointStore
from jaxflows.train.config import load_config
from jaxflows.train.errors import ConfigError, ConfigFileError
from jaxflows.train.metrics import read_metrics
from tests.test_train import TINY

REPO = Path(__file__).resolve().parent.parent


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_a_second_ctrl_c_seals_the_save_it_cut_short_and_deleted_metrics_come_back(
    tmp_path, monkeypatch, capfd
):
    """Ctrl-C at step 3 saves step 3; a second one while the loop waits for that save raises
    KeyboardInterrupt, and the clean-up still seals the save. metrics.csv, deleted at step 2,
    is written again with every row of the run."""

    def on_step(step, state):
        if step == 2:
            (tmp_path / "metrics.csv").unlink()
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    finish, calls = CheckpointStore.finish, []

    def finish_cut_short(self):
        calls.append(1)
        if len(calls) == 1:  # the loop's wait for the step-3 save: the second Ctrl-C lands in it
            manager_wait = self.manager.wait_until_finished

            def cut():
                self.manager.wait_until_finished = manager_wait
                raise KeyboardInterrupt

            self.manager.wait_until_finished = cut
        return finish(self)

    monkeypatch.setattr(CheckpointStore, "finish", finish_cut_short)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, tmp_path, progress=False, on_step=on_step)
    assert len(calls) == 2 and 3 in _steps(tmp_path)
    assert (tmp_path / "checkpoints" / "3" / CHECKSUMS).is_file()
    assert [int(r["step"]) for r in read_metrics(tmp_path)] == [1, 2, 3]
    warnings = [line for line in capfd.readouterr().err.splitlines() if "metrics.csv" in line]
    assert len(warnings) == 1 and "was deleted during the run; recreated it" in warnings[0]

    # A save that completed but was never sealed (kill -9 between the two) is used, not moved
    (tmp_path / "checkpoints" / "3" / CHECKSUMS).unlink()
    monkeypatch.setattr(CheckpointStore, "finish", finish)
    resumed = train(TINY.replace(num_steps=4), tmp_path, progress=False)
    assert [int(r["step"]) for r in resumed.history] == [4]
    assert not (tmp_path / "checkpoints_corrupt").exists()
    assert (tmp_path / "checkpoints" / "3" / CHECKSUMS).is_file()
    assert "checkpoint at step 3 was complete but not sealed" in capfd.readouterr().err


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_config.py"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


@pytest.mark.parametrize(
    ("body", "line", "says"),
    [
        ("from jaxflows.train import TrainConfig\ndef get_config(:\n    pass\n", 2, "syntax error"),
        (
            "from jaxflows.train import TrainConfig\n\ndef get_config():\n"
            "    return TrainConfig(batch_sise=8)\n",
            4,
            "TrainConfig has no field 'batch_sise'; did you mean 'batch_size'?",
        ),
        (
            "from jaxflows.train import TrainConfig\n\ndef get_config():\n    c = TrainConfig()\n"
            "    c.num_step = 5\n    return c\n",
            5,
            "TrainConfig has no field 'num_step'; did you mean 'num_steps'?",
        ),
        ("from jaxflows.train import TrainConfig\nx = undefined_name\n", 2, "NameError"),
    ],
    ids=["syntax", "keyword", "attribute", "name"],
)
def test_a_config_file_that_does_not_run_is_one_line_with_file_and_line(tmp_path, body, line, says):
    path = _write(tmp_path, body)
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line {line}: ") and says in message
    assert "\n" not in message


def test_a_bad_field_value_in_a_config_file_stays_a_config_error(tmp_path):
    path = _write(
        tmp_path,
        "from jaxflows.train import TrainConfig\ndef get_config():\n    return TrainConfig(batch_size=0)\n",
    )
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.mark.slow  # a subprocess that imports jax and trains
def test_a_double_ctrl_c_on_the_command_line_is_one_line(tmp_path):
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "experiments.train", "--config", "experiments/configs/digits.py",
               "--smoke", "--no_progress", "--workdir", str(workdir), "--set", "model.depth=1",
               "model.hidden=8", "batch_size=16", "num_steps=100000", "log_every=1",
               "checkpoint_every=1000"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(read_metrics(workdir)) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert any(line.startswith("interrupted by Ctrl-C: stopped at once; ") for line in err.splitlines()) or (
        "stopped by SIGINT at step" in out
    )  # the first Ctrl-C's save may finish before the second arrives
    for step in _steps(workdir):
        assert (workdir / "checkpoints" / str(step) / CHECKSUMS).is_file()
