"""Metrics sinks: CSV, TensorBoard event files and a PNG plot of the training curve.

Both sinks write from the training thread, so a failed write (disk full) stops the run at once with
WorkdirWriteError instead of killing a background writer and blocking on its queue.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax

from jaxflows.train.workdir import write_text_atomically, writing

FIELDS = ["step", "loss", "bits_per_dim", "images_per_sec", "train_seconds", "learning_rate", "grad_norm",
          "skipped_updates", "eval_bits_per_dim"]  # fmt: skip
# metrics.csv of a run on continuous data: the objective in nats (and per dimension)
CONTINUOUS_FIELDS = ["step", "loss", "nats", "nats_per_dim", "images_per_sec", "train_seconds",
                     "learning_rate", "grad_norm", "skipped_updates", "eval_nats",
                     "eval_nats_per_dim"]  # fmt: skip
# the columns of runs written before train_seconds: their rows are kept (without it) on resume
_LEGACY_FIELDS = [[f for f in fields if f != "train_seconds"] for fields in (FIELDS, CONTINUOUS_FIELDS)]


def _fields_of(text: str, default: list[str]) -> list[str]:
    """The columns a metrics CSV was written with (from its header), else `default`."""
    header = text.split("\n", 1)[0].strip()
    for fields in (FIELDS, CONTINUOUS_FIELDS, *_LEGACY_FIELDS):
        if header == ",".join(fields):
            return fields
    return default


def _parse_rows(text: str, fields: list[str] = FIELDS) -> list[dict[str, str]]:
    """Complete rows of a metrics CSV (with or without its header; a cut-off last row is dropped)."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # a row cut off by a crash
    if lines and lines[0].strip() == ",".join(fields):
        lines = lines[1:]
    rows = []
    for row in csv.reader(lines):
        if len(row) == len(fields) and row[0].isdigit():
            rows.append(dict(zip(fields, row, strict=True)))
    return rows


def _csv_text(rows: list[dict[str, str]], fields: list[str] = FIELDS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class _EventFile:
    """A TensorBoard event file written synchronously (tensorboardX's record format)."""

    def __init__(self, directory: Path):
        from tensorboardX.event_file_writer import EventsWriter

        directory.mkdir(parents=True, exist_ok=True)
        self.writer = EventsWriter(str(directory / "events"))
        logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)  # NaN losses are logged as such

    def add_scalars(self, metrics: dict[str, float], step: int) -> None:
        from tensorboardX.proto import event_pb2
        from tensorboardX.summary import scalar

        for name, value in metrics.items():
            event = event_pb2.Event(wall_time=time.time(), step=step, summary=scalar(name, value))
            self.writer.write_event(event)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class StepTimer:
    """The one clock behind every throughput number of a run: the first step's wall time
    (compilation included), then windows of steps that end at logged rows and follow each other
    without gaps (logging, evaluation and checkpoints fall inside them). It waits for the device
    after the first step and at logged rows only, so the rows' images/s and `step_s` agree:
    Σ (steps in row's window) × batch_size / images_per_sec = (logged steps − 1) × step_s.

    It also keeps the run's training time (`train_seconds`): `resumed_s` (what earlier runs of
    the workdir trained) plus the wall time since this run's first step was computed, less the
    intervals spent `paused()` (held-out evaluations). The first step of each run, which
    compiles, is not counted. `clock` and `wait` (block until a state is computed) are
    injectable for tests."""

    def __init__(
        self,
        batch_size: int,
        clock: Callable[[], float] = time.perf_counter,
        wait: Callable[[Any], Any] | None = None,
        resumed_s: float = 0.0,
    ):
        self.batch_size, self.clock = batch_size, clock
        self.wait = jax.block_until_ready if wait is None else wait
        self.started, self.steps = clock(), 0
        self.mark, self.marked_steps, self.timed_s = math.nan, 0, 0.0
        self.first_s = math.nan
        self.resumed_s, self.paused_s = resumed_s, 0.0

    def stepped(self, state: Any) -> None:
        """Count a dispatched step; after the first, wait for it and time it."""
        self.steps += 1
        if self.steps == 1:
            self.wait(state)
            self.mark, self.marked_steps = self.clock(), 1
            self.first_s = self.mark - self.started

    def train_seconds(self) -> float:
        """Training time of the workdir so far (see the class docstring); `resumed_s` before
        this run's first step."""
        if math.isnan(self.first_s):
            return self.resumed_s
        return self.resumed_s + self.clock() - (self.started + self.first_s) - self.paused_s

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the enclosed work (a held-out evaluation) out of `train_seconds`."""
        begin = self.clock()
        try:
            yield
        finally:
            self.paused_s += self.clock() - begin

    def images_per_sec(self, state: Any) -> float:
        """Images per second of the steps since the previous logged row (the first step's own rate
        when it is the only one), waiting for `state`, the newest one."""
        count = self.steps - self.marked_steps
        if count == 0:
            return self.batch_size / max(self.first_s, 1e-12)
        self.wait(state)
        now = self.clock()
        elapsed, self.mark, self.marked_steps = now - self.mark, now, self.steps
        self.timed_s += elapsed
        return count * self.batch_size / max(elapsed, 1e-12)

    @property
    def step_s(self) -> float:
        """Mean wall time of the steps after the first, up to the last logged row."""
        return self.timed_s / (self.marked_steps - 1) if self.marked_steps > 1 else math.nan


class MetricsWriter:
    """Appends rows to `workdir/metrics.csv` and scalars to `workdir/tensorboard/`.

    Opening rewinds the CSV to `start_step` (rows of steps a resumed run will redo are dropped),
    restores a missing header and drops a row cut off by a crash.
    """

    def __init__(
        self, workdir: Path | None, enabled: bool = True, start_step: int = 0, discrete: bool = True
    ):
        self.enabled = enabled and workdir is not None
        self.resumed_train_seconds = 0.0
        if not self.enabled:
            return
        self.fields = FIELDS if discrete else CONTINUOUS_FIELDS
        self.csv_path = Path(workdir) / "metrics.csv"
        old = self.csv_path.read_text() if self.csv_path.exists() else ""
        rows = [r for r in _parse_rows(old, _fields_of(old, self.fields)) if int(r["step"]) <= start_step]
        # the training time of the last row kept: what the run resumes counting from
        timed = [r["train_seconds"] for r in rows if r.get("train_seconds")]
        self.resumed_train_seconds = float(timed[-1]) if timed else 0.0
        text = _csv_text(rows, self.fields)
        if text != old:
            write_text_atomically(self.csv_path, text)
        with writing(self.csv_path):
            self.csv_file = self.csv_path.open("a", newline="")
        self.csv = csv.DictWriter(
            self.csv_file, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n"
        )
        tensorboard = Path(workdir) / "tensorboard"
        with writing(tensorboard):
            self.tensorboard = _EventFile(tensorboard)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with writing(self.csv_path):
            self.csv.writerow({"step": step, **metrics})
            self.csv_file.flush()
        with writing(self.csv_path.parent / "tensorboard"):
            self.tensorboard.add_scalars(metrics, step)

    def close(self) -> None:
        if self.enabled:
            for close in (self.csv_file.close, self.tensorboard.close):
                with contextlib.suppress(OSError):  # a write error has already stopped the run
                    close()


def read_metrics(workdir: Path) -> list[dict[str, float]]:
    path = Path(workdir) / "metrics.csv"
    if not path.exists():
        return []
    text = path.read_text()
    rows = _parse_rows(text, _fields_of(text, FIELDS))
    return [{k: float(v) for k, v in row.items() if v != ""} for row in rows]


def plot_training_curve(workdir: Path, baseline_bits_per_dim: float | None = None) -> Path:
    """PNG of the training objective (bits/dim, or nats for continuous data), the held-out score
    and the baseline against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(workdir)
    fig, ax = plt.subplots(figsize=(6, 4))
    continuous = any("nats" in r for r in rows)
    score, unit = ("nats", "negative log-likelihood (nats)") if continuous else ("bits_per_dim", "bits/dim")
    train = [(r["step"], r[score]) for r in rows if score in r]
    held_out = [(r["step"], r[f"eval_{score}"]) for r in rows if f"eval_{score}" in r]
    if train:
        ax.plot(*zip(*train, strict=True), label="train" if continuous else "train (dequantised batches)")
    if held_out:
        ax.plot(*zip(*held_out, strict=True), "o-", label="held-out")
    if baseline_bits_per_dim is not None:
        ax.axhline(baseline_bits_per_dim, color="grey", ls="--", label="per-pixel histogram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel(unit)
    ax.legend()
    ax.grid(alpha=0.3)
    path = Path(workdir) / "training_curve.png"
    fig.tight_layout()
    with writing(path):
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
