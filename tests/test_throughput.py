"""Honest numbers: every images/s of a run (progress bar, metrics.csv, TensorBoard) and
TrainResult.step_s come from one StepTimer that waits for the device only after the first step and
at logged rows; the final held-out evaluation is a row of metrics.csv; the training types document
their fields. Training time (`train_seconds`, what `train_time_limit_s` and `eval_every_s` count) leaves
out each start's first step and the held-out evaluations, and a resumed run counts on from its
checkpoint's row."""

import dataclasses
import functools
import math
import re
from pathlib import Path

import pytest

from jaxflows.train import TrainConfig, TrainResult, TrainState, train
from jaxflows.train import loop as loop_module
from jaxflows.train.metrics import FIELDS, MetricsWriter, StepTimer, read_metrics
from tests.test_train import TINY


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_timer_waits_only_at_the_first_step_and_logged_rows():
    clock, waited = FakeClock(), []
    timer = StepTimer(32, clock, wait=waited.append)
    clock.now = 5.0  # the first step compiles
    timer.stepped("state 1")
    assert timer.first_s == 5.0 and waited == ["state 1"]
    for step in range(2, 5):
        clock.now += 0.1
        timer.stepped(f"state {step}")
    assert waited == ["state 1"]  # steps 2-4 dispatched without waiting
    first_row = timer.images_per_sec("state 4")
    assert first_row == pytest.approx(3 * 32 / 0.3)
    clock.now += 2.0  # an evaluation and a checkpoint after the row: part of the next window
    for step in range(5, 9):
        clock.now += 0.2
        timer.stepped(f"state {step}")
    second_row = timer.images_per_sec("state 8")
    assert second_row == pytest.approx(4 * 32 / 2.8)
    assert waited == ["state 1", "state 4", "state 8"]
    assert timer.step_s == pytest.approx(3.1 / 7)
    assert 3 * 32 / first_row + 4 * 32 / second_row == pytest.approx(7 * timer.step_s)


def test_a_row_of_the_first_step_alone_reports_its_own_rate():
    clock = FakeClock()
    timer = StepTimer(8, clock, wait=lambda state: None)
    clock.now = 2.0
    timer.stepped(None)
    assert timer.images_per_sec(None) == 4.0 and math.isnan(timer.step_s)


def test_metrics_csv_images_per_sec_agree_with_step_s_and_hold_the_final_evaluation(tmp_path, monkeypatch):
    waits = []
    timer = functools.partial(StepTimer, wait=lambda state: waits.append(int(state.step)))
    monkeypatch.setattr(loop_module, "StepTimer", timer)
    config = TINY.replace(num_steps=7, log_every=3, eval_every=7, checkpoint_every=7)
    result = train(config, tmp_path, progress=False)
    rows = read_metrics(tmp_path)
    # step 1 has a row as the run's first checkpoint (orbax saves the first step it is offered)
    assert [r["step"] for r in rows] == [1, 3, 6, 7] and waits == [1, 3, 6, 7]
    assert [r["images_per_sec"] for r in rows] == [h["images_per_sec"] for h in result.history]
    assert rows[0]["images_per_sec"] == pytest.approx(config.batch_size / result.first_step_s)
    # the later rows' windows: steps 2-3, 4-6 and 7 (the first step is timed on its own)
    windows = zip((2, 3, 1), rows[1:], strict=True)
    seconds = sum(n * config.batch_size / r["images_per_sec"] for n, r in windows)
    assert seconds == pytest.approx(6 * result.step_s, rel=1e-9)
    assert "eval_bits_per_dim" in rows[-1] and "eval_bits_per_dim" not in rows[0]
    assert math.isfinite(rows[-1]["eval_bits_per_dim"])


def test_training_time_leaves_out_the_first_step_and_paused_work_and_adds_the_resumed_time():
    clock = FakeClock()
    timer = StepTimer(8, clock, wait=lambda state: None, resumed_s=100.0)
    assert timer.train_seconds() == 100.0
    clock.now = 30.0  # the first step compiles: not training time
    timer.stepped(None)
    clock.now = 35.0
    assert timer.train_seconds() == 105.0
    with timer.paused():
        clock.now = 60.0  # a held-out evaluation
    clock.now = 62.0
    assert timer.train_seconds() == 107.0


def _clocked_run(config, workdir, clock, monkeypatch):
    """Train with a clock that advances 10 s per step and 1000 s per held-out evaluation."""
    held_out_row = loop_module.held_out_row

    def slow_evaluation(exp, state):
        clock.now += 1000.0
        return held_out_row(exp, state)

    def tick(done, state):
        clock.now += 10.0

    monkeypatch.setattr(loop_module, "_clock", clock)
    monkeypatch.setattr(loop_module, "held_out_row", slow_evaluation)
    train(config, workdir, progress=False, on_step=tick)
    return {int(r["step"]): (r["train_seconds"], "eval_bits_per_dim" in r) for r in read_metrics(workdir)}


def test_time_limit_and_timed_evaluations_count_training_time_across_resumptions(tmp_path, monkeypatch):
    clock = FakeClock()
    config = TINY.replace(
        num_steps=30, log_every=5, checkpoint_every=4, eval_every_s=25.0, train_time_limit_s=55.0
    )
    # step n ends at 10 (n - 1) s of training: timed evaluations at 30 s (step 4) and 50 s (step 6);
    # past 55 s at step 7, which stops and is checkpointed; every checkpoint step (1, 4) has a row
    rows = _clocked_run(config, tmp_path, clock, monkeypatch)
    assert rows == {1: (0.0, False), 4: (30.0, True), 5: (40.0, False), 6: (50.0, True), 7: (60.0, False)}
    # resumed with a longer limit: the count goes on from step 7's 60 s (the new start's first step
    # is not counted); evaluations at 75 → step 10 and at the limit's 100 s, where it stops
    rows = _clocked_run(config.replace(train_time_limit_s=95.0), tmp_path, clock, monkeypatch)
    assert {s: r for s, r in rows.items() if s > 7} == {8: (60.0, False), 10: (80.0, True), 12: (100.0, True)}
    # rerun with its time spent: no more steps
    assert _clocked_run(config.replace(train_time_limit_s=95.0), tmp_path, clock, monkeypatch) == rows


def test_metrics_of_a_run_from_before_train_seconds_are_kept_on_resume(tmp_path):
    legacy = (Path(__file__).parent / "data" / "checkpoint_v1" / "metrics.csv").read_text()
    (tmp_path / "metrics.csv").write_text(legacy)
    writer = MetricsWriter(tmp_path, start_step=4)
    writer.write(5, {"loss": 1.0, "train_seconds": 12.5})
    writer.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [2, 4, 5] and writer.resumed_train_seconds == 0.0
    assert "train_seconds" not in rows[1] and rows[2]["train_seconds"] == 12.5
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join(FIELDS)
    assert MetricsWriter(tmp_path, start_step=5).resumed_train_seconds == 12.5


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (TrainConfig, [f.name for f in dataclasses.fields(TrainConfig)]),
        (TrainResult, TrainResult._fields),
        (TrainState, [f.name for f in dataclasses.fields(TrainState)]),
    ],
)
def test_the_training_types_document_every_field(kind, fields):
    """Each field starts a line of the docstring: `name: ...`, `a, b: ...` or `name (resumable): ...`."""
    entries = re.findall(r"^ +(\w+(?:, \w+)*)(?: \(resumable\))?:", kind.__doc__, re.MULTILINE)
    documented = {name for entry in entries for name in entry.split(", ")}
    assert set(fields) <= documented, f"{kind.__name__} does not document {set(fields) - documented}"
