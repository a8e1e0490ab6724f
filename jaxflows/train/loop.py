"""The training loop.

A workdir holds config.json, format.json, checkpoints/, metrics.csv, tensorboard/ and the PNGs. Training in a
workdir that has checkpoints resumes from the latest one: parameters, optimiser state, RNG and data
position (the batch of step s is a function of the seed and s) all continue, so an interrupted run
and an uninterrupted one produce identical losses.
"""

from __future__ import annotations

import contextlib
import csv
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxflows.data import BatchIterator, describe_dataset, subset
from jaxflows.train.checkpoint import CheckpointStore
from jaxflows.train.config import TrainConfig, config_to_dict
from jaxflows.train.errors import DivergenceError, warn
from jaxflows.train.evaluate import diagnostics, evaluate_held_out
from jaxflows.train.experiment import Experiment, global_batch, replicated, setup
from jaxflows.train.host import agree_across_processes
from jaxflows.train.metrics import MetricsWriter, StepTimer
from jaxflows.train.rules import normalized_model
from jaxflows.train.state import TrainState, init_fn, learning_rate_schedule, set_hyperparameters
from jaxflows.train.steps import compiled_train_step
from jaxflows.train.workdir import check_resume, record_config_changes, save_config, workdir_lock, writing


class TrainResult(NamedTuple):
    """What `train` returns.

    state: the final `TrainState` (`state.variables()` are the flow's variables for `apply`).
    experiment: the `Experiment` trained: config, dataset, flow and mesh.
    history: one dict per logged row, as in metrics.csv: step, loss (the last step's objective),
        the train step's metrics (bits_per_dim for discrete data, nats and nats_per_dim for
        continuous data: means over the row's steps), images_per_sec, train_seconds (the
        workdir's training time, `StepTimer.train_seconds`), learning_rate, grad_norm,
        skipped_updates, and the held-out score (eval_bits_per_dim, or eval_nats and
        eval_nats_per_dim; with the level diagnostics) every `eval_every` steps, every
        `eval_every_s` seconds of training and at the final step. Rows are logged every
        `log_every` steps, at every checkpoint and at the last step.
    preempted: whether a signal stopped the run early (it was checkpointed).
    signal: "SIGTERM" or "SIGINT" when preempted, else None.
    first_step_s: wall time of the first step, compilation included.
    step_s: mean wall time of the later steps up to the last logged row, logging, evaluation and
        checkpoints included; the rows' images_per_sec come from the same clock (`StepTimer`).
    """

    state: TrainState
    experiment: Experiment
    history: list[dict[str, float]]
    preempted: bool
    signal: str | None = None
    first_step_s: float = float("nan")
    step_s: float = float("nan")


class _StopSignals:
    """Sets `received` on SIGTERM or the first SIGINT (main thread only) so the loop can checkpoint
    and stop cleanly; a second Ctrl-C interrupts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self.previous.get(signal.SIGINT, signal.default_int_handler))

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(
    config: TrainConfig,
    workdir: str | Path | None,
    *,
    progress: bool = True,
    on_step: Callable[[int, TrainState], Any] | None = None,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Train (or resume training) up to `config.num_steps` updates; checkpoints land in `workdir`.

    Raises WorkdirLockedError if another process trains in `workdir`, ConfigMismatchError if its
    checkpoints belong to a different model or data, CheckpointFormatError if they are in an older
    format (`python -m jaxflows.train.convert WORKDIR` converts them), DivergenceError after
    `config.max_consecutive_skips` non-finite updates in a row, and WorkdirWriteError when a write
    fails; in every case the last good checkpoint is kept. With `workdir=None` nothing is written
    (no checkpoints, metrics or lock: the paper comparisons' runs).
    """
    # Several processes: each loads its data and builds its flow, then all compare them before
    # anything is locked, restored or compiled (a difference fails in every process at once).
    exp = None
    if jax.process_count() > 1:
        try:
            exp = setup(config, mesh)
        except Exception as error:  # the others learn why instead of waiting for this process
            agree_across_processes({"error": f"{type(error).__name__}: {error}"})
            raise
        agree_across_processes(process_fingerprint(exp))
    if workdir is None:
        return _train(exp or setup(config, mesh), None, None, {}, progress, on_step)
    workdir, lead = Path(workdir), jax.process_index() == 0
    with writing(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(workdir, enabled=lead):
        store = CheckpointStore(workdir, config.checkpoint_every, config.keep_checkpoints)
        try:
            changes = check_resume(config, workdir) if store.steps() else {}
            return _train(exp or setup(config, mesh), workdir, store, changes, progress, on_step)
        finally:
            with contextlib.suppress(Exception):  # after an error: still seal a save that completed
                store.finish()
            store.close()


# Config fields that may differ between the processes of one run: where each host keeps its files
# and how it runs (the data itself is compared by its fingerprint).
PROCESS_LOCAL_FIELDS = frozenset({"data_dir", "compilation_cache_dir", "prefetch", "reuse_freed_memory"})


def process_fingerprint(exp: Experiment) -> dict[str, Any]:
    """What every process of a run must agree on: the config's fields (the model with its name,
    an in-memory dataset by its description) but the host-local ones, and the data each process
    loaded (`describe_dataset`: name, shape, levels, counts, SHA-256 of both splits)."""
    fields = {k: v for k, v in config_to_dict(exp.config).items() if k not in PROCESS_LOCAL_FIELDS}
    fields["model"] = normalized_model(fields["model"])
    fields["data"] = describe_dataset(exp.dataset)
    return fields


def initial_state(exp: Experiment, store: CheckpointStore | None = None) -> TrainState:
    """The newest verified checkpoint of `store` if there is one, else data-dependent initialisation;
    either way with the optimiser hyperparameters (learning rate, schedule, clipping) of the config."""
    init, c = init_fn(exp), exp.config
    if store is not None and store.steps():
        state = store.restore(jax.eval_shape(init, exp.init_batch, c.seed), replicated(exp.mesh))
    else:
        state = init(exp.init_batch, np.int32(c.seed))
    state = state.replace(opt_state=set_hyperparameters(state.opt_state, c))
    return jax.device_put(state, replicated(exp.mesh))


def _train(
    exp: Experiment, workdir: Path | None, store: CheckpointStore | None, changes, progress, on_step
) -> TrainResult:
    config, bins, lead = exp.config, exp.bins, jax.process_index() == 0
    state = initial_state(exp, store)
    start = int(state.step)
    if lead and workdir is not None:
        record_config_changes(workdir, start, changes)
        save_config(config, workdir)
    train_step = compiled_train_step(exp)
    schedule = learning_rate_schedule(config)
    writer = MetricsWriter(workdir, enabled=lead, start_step=start, discrete=bins is not None)
    resumed_s = _shared_by_lead(writer.resumed_train_seconds)
    timer = StepTimer(config.batch_size, clock=_clock, resumed_s=resumed_s)
    next_eval_s = _next_multiple(resumed_s, config.eval_every_s)
    batches = BatchIterator(
        exp.dataset.train, config.batch_size, bins, config.seed, start,
        jax.process_index(), jax.process_count(), config.prefetch, exp.conditional,
    )  # fmt: skip
    history: list[dict[str, float]] = []
    window: list[dict[str, jax.Array]] = []
    bar = tqdm(total=config.num_steps, initial=start, disable=not (progress and lead), unit="step")
    saved, stop, limit = True, None, config.train_time_limit_s
    try:
        with _StopSignals() as signals:
            # a run resumed with its training time already spent takes no step
            spent = limit is not None and resumed_s >= limit
            for step, batch in batches if start < config.num_steps and not spent else ():
                state, metrics = train_step(state, global_batch(batch, exp.mesh))
                timer.stepped(state)
                done = step + 1
                window.append(metrics)
                seconds = timer.train_seconds()
                out_of_time = limit is not None and seconds > limit
                timed_eval = next_eval_s is not None and seconds >= next_eval_s
                stop, out_of_time, timed_eval = _agreed_stop(signals.received, out_of_time, timed_eval)
                last = done == config.num_steps or stop is not None or out_of_time
                save = store is not None and (last or store.due(done))
                # a checkpoint's step always has a row: its train_seconds is where a resumption counts on
                if done % config.log_every == 0 or last or save or timed_eval:
                    row = _log_row(exp, state, window, timer, schedule(step), done, last, timed_eval)
                    if lead and workdir is not None:
                        _recreate_deleted_metrics(writer, history)
                    history.append({"step": done, **row})
                    writer.write(done, row)
                    _show(bar, row)
                    bar.update(len(window))
                    window = []
                if timed_eval:
                    next_eval_s = _next_multiple(seconds, config.eval_every_s)
                if save or last or done % config.max_consecutive_skips == 0:
                    _check_divergence(config, store, done, int(metrics["skipped_in_a_row"]))
                if save:
                    saved = _save_if_healthy(exp, store, state)
                elif store is not None:
                    store.poll()
                if on_step is not None:
                    on_step(done, state)
                if last:
                    break
                if signals.received is not None and jax.process_count() == 1:
                    # arrived during this step's save or on_step (several processes: the next
                    # step's agreement stops them all after that step)
                    stop = signals.received
                    if not save:  # a step saved on schedule is not saved twice
                        saved = store is None or _save_if_healthy(exp, store, state)
                    break
        if store is not None:
            store.finish()
    finally:
        bar.close()
        writer.close()
    if not saved:
        raise DivergenceError(
            f"the state at step {int(state.step)} has non-finite held-out bits/dim; it was not saved "
            f"(last good checkpoint: step {store.latest_step() if store else None})"
        )
    if limit is not None and int(state.step) < config.num_steps and stop is None:
        print(f"train_time_limit_s={limit} reached: stopped at step {int(state.step)}")
    preempted = stop is not None
    return TrainResult(state, exp, history, preempted, stop, timer.first_s, timer.step_s)


def _recreate_deleted_metrics(writer: MetricsWriter, history: list[dict[str, float]]) -> None:
    """metrics.csv deleted while the run writes it (a clean-up script, a user): write it again
    with its header and this run's rows so far, and say so once (rows of earlier runs are lost)."""
    path = writer.csv_path
    if path.exists():
        return
    first = int(history[0]["step"]) if history else None
    kept = f"this run's rows from step {first} on" if first is not None else "its header"
    warn(f"warning: {path} was deleted during the run; recreated it with {kept} (earlier rows are lost)")
    with writing(path):
        writer.csv_file.close()
        writer.csv_file = path.open("w", newline="")
        writer.csv = csv.DictWriter(
            writer.csv_file, fieldnames=writer.fields, extrasaction="ignore", lineterminator="\n"
        )
        writer.csv.writeheader()
        writer.csv.writerows(history)
        writer.csv_file.flush()


_STOP_CODES = {None: 0, "SIGINT": 1, "SIGTERM": 2}


def _agreed_stop(
    received: str | None, out_of_time: bool, timed_eval: bool = False
) -> tuple[str | None, bool, bool]:
    """Whether any process was signalled, ran out of time or is due a timed evaluation, the same
    answer in every process: each step of a multi-process run ends with this tiny all-gather, so
    every process stops (or evaluates) after the same step and saves it once together (a signal to
    one process stops all; SIGTERM, a preemption, wins over SIGINT). One process: its own signal
    and clock."""
    if jax.process_count() == 1:
        return received, out_of_time, timed_eval
    from jax.experimental import multihost_utils

    mine = np.array([_STOP_CODES[received], int(out_of_time), int(timed_eval)], np.int32)
    code, late, due = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 3).max(axis=0)
    return {v: k for k, v in _STOP_CODES.items()}[int(code)], bool(late), bool(due)


def _clock() -> float:
    """The training clock (a module function so tests can replace it)."""
    return time.perf_counter()


def _shared_by_lead(seconds: float) -> float:
    """The lead process's value (it alone reads metrics.csv) in every process."""
    if jax.process_count() == 1:
        return seconds
    from jax.experimental import multihost_utils

    return float(multihost_utils.broadcast_one_to_all(np.float32(seconds)))


def _next_multiple(seconds: float, every: float | None) -> float | None:
    """The first multiple of `every` above `seconds` (None without `every`)."""
    return None if every is None else (math.floor(seconds / every) + 1) * every


def _show(bar, row: dict) -> None:
    score = {"bpd": f"{row['bits_per_dim']:.3f}"} if "bits_per_dim" in row else {"nats": f"{row['nats']:.3f}"}
    postfix = {"loss": f"{row['loss']:.3f}", **score}
    bar.set_postfix(**postfix, img_s=f"{row['images_per_sec']:.0f}", skipped=row["skipped_updates"])


# How the loop reduces a train-step metric over a logged row's steps: the last value for these,
# the mean for every other one; the step's internal counters are not logged.
LAST_VALUE_METRICS = frozenset({"loss", "grad_norm", "skipped_updates"})
UNLOGGED_METRICS = frozenset({"skipped_in_a_row"})


def reduce_metrics(window: list[dict[str, Any]]) -> dict[str, float]:
    """One row from the train step's metrics of a window of steps (fetched to the host): each
    metric's last value (`LAST_VALUE_METRICS`) or its mean over the window."""
    row: dict[str, float] = {}
    for name, last in window[-1].items():
        if name in UNLOGGED_METRICS:
            continue
        value = last if name in LAST_VALUE_METRICS else np.mean([m[name] for m in window])
        row[name] = int(value) if name == "skipped_updates" else float(value)
    return row


def held_out_row(exp: Experiment, state: TrainState) -> dict[str, float]:
    """The held-out score of the state's (averaged) parameters under its metric names:
    eval_bits_per_dim, or eval_nats and eval_nats_per_dim for continuous data."""
    c = exp.config
    score = evaluate_held_out(
        exp.flow, state.variables(averaged=True), exp.dataset.held_out, exp.bins, exp.mesh,
        c.eval_batch_size, c.eval_dequant_draws, c.seed,
    )  # fmt: skip
    if exp.bins is not None:
        return {"eval_bits_per_dim": score}
    return {"eval_nats": score, "eval_nats_per_dim": score / math.prod(exp.flow.event_shape)}


def _log_row(
    exp: Experiment, state: TrainState, window, timer: StepTimer, lr, done: int, last: bool, timed_eval: bool
) -> dict:
    """One row of metrics.csv: the window's training numbers and training time, and the held-out
    score every `eval_every` steps, at the final step (not when a signal or the time limit stops
    the run) and at a timed evaluation (`eval_every_s`); evaluations are not training time."""
    config = exp.config
    metrics = reduce_metrics(jax.device_get(window))
    row = {
        "loss": metrics.pop("loss"),
        **metrics,
        "images_per_sec": timer.images_per_sec(state),
        "train_seconds": timer.train_seconds(),
        "learning_rate": float(lr),
    }
    final = done == config.num_steps
    if timed_eval or (config.eval_every and (final or (done % config.eval_every == 0 and not last))):
        with timer.paused():
            row.update(held_out_row(exp, state))
            row.update(diagnostics(exp, state))
    return row


def _check_divergence(config: TrainConfig, store: CheckpointStore | None, done: int, in_a_row: int) -> None:
    if in_a_row < config.max_consecutive_skips:
        return
    first = done - in_a_row + 1
    kept = None if store is None else store.latest_step()
    raise DivergenceError(
        f"diverged at step {first}: the {in_a_row} updates of steps {first}-{done} all had a non-finite "
        f"loss or gradient (max_consecutive_skips={config.max_consecutive_skips}); "
        + (
            f"the last good checkpoint (step {kept}) is kept"
            if kept is not None
            else "no checkpoint was saved"
        )
        + f"; lower learning_rate (now {config.learning_rate}) or raise grad clipping"
    )


def _save_if_healthy(exp: Experiment, store: CheckpointStore, state: TrainState) -> bool:
    """Save `state` unless its bits/dim on the first held-out batch are non-finite (a checkpoint of a
    broken state would rotate the good ones out)."""
    c, test = exp.config, exp.dataset.held_out
    check = subset(test, np.arange(min(c.eval_batch_size, len(test))), exp.conditional)
    score = evaluate_held_out(exp.flow, state.variables(averaged=True), check, exp.bins,
                              exp.mesh, c.eval_batch_size, 1, c.seed, report_nonfinite=False)  # fmt: skip
    if not np.isfinite(score):
        warn(f"warning: step {int(state.step)}: held-out score is {score}; not checkpointed "
              f"(last good checkpoint: step {store.latest_step()})")  # fmt: skip
        return False
    store.save(state, force=True)
    return True
