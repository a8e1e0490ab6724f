"""Honest numbers: every images/s of a run (progress bar, metrics.csv, TensorBoard) and
TrainResult.step_s come from one StepTimer that waits for the device only after the first step and
at logged rows; the final held-out evaluation is a row of metrics.csv; the training types document
their fields."""

import dataclasses
import functools
import math
import re

import pytest

from jaxflows.train import TrainConfig, TrainResult, TrainState, train
from jaxflows.train import loop as loop_module
from jaxflows.train.metrics import StepTimer, read_metrics
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
    assert [r["step"] for r in rows] == [3, 6, 7] and waits == [1, 3, 6, 7]
    assert [r["images_per_sec"] for r in rows] == [h["images_per_sec"] for h in result.history]
    # the rows' windows: steps 2-3, 4-6 and 7 (the first step is timed on its own)
    seconds = sum(n * config.batch_size / r["images_per_sec"] for n, r in zip((2, 3, 1), rows, strict=True))
    assert seconds == pytest.approx(6 * result.step_s, rel=1e-9)
    assert "eval_bits_per_dim" in rows[-1] and "eval_bits_per_dim" not in rows[0]
    assert math.isfinite(rows[-1]["eval_bits_per_dim"])


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
