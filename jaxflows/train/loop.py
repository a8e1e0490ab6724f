"""The training loop and the workdir-level commands (train, evaluate, sample, interpolate).

A workdir holds config.json, checkpoints/, metrics.csv, tensorboard/ and the PNGs. Training in a
workdir that has checkpoints resumes from the latest one: parameters, optimiser state, RNG and data
position (the batch of step s is a function of the seed and s) all continue, so an interrupted run
and an uninterrupted one produce identical losses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxflows.core import Flow
from jaxflows.data import ArraySource, BatchIterator, Dataset, batch_indices, load_dataset, validate_batch
from jaxflows.models import VariationalDequantizer, glow
from jaxflows.train.checkpoint import CheckpointStore
from jaxflows.train.config import TrainConfig
from jaxflows.train.errors import DivergenceError
from jaxflows.train.evaluate import evaluate_bits_per_dim, level_diagnostics, pixel_baseline_bits_per_dim
from jaxflows.train.metrics import MetricsWriter, plot_training_curve
from jaxflows.train.optim import learning_rate_schedule, make_optimizer
from jaxflows.train.sampling import interpolate, sample_grid, sample_grid_path
from jaxflows.train.steps import (
    TrainState,
    cached,
    global_batch,
    init_state,
    make_mesh,
    make_train_step,
    replicated,
)
from jaxflows.train.workdir import (
    check_resume,
    record_config_changes,
    save_config,
    workdir_lock,
    writing,
)

MULTIHOST_ENV = "JAXFLOWS_MULTIHOST"


def maybe_initialize_distributed(multihost: bool = False) -> None:
    """Call `jax.distributed.initialize()` when asked (flag or JAXFLOWS_MULTIHOST=1).

    It must run before any other JAX call. On Cloud TPU, SLURM and similar clusters it discovers the
    coordinator itself; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    Every host then runs the same command; each reads its own share of every batch.
    """
    if multihost or os.environ.get(MULTIHOST_ENV) == "1":
        jax.distributed.initialize()


class Experiment(NamedTuple):
    config: TrainConfig
    dataset: Dataset
    flow: Flow
    mesh: Mesh
    init_pixels: np.ndarray


class TrainResult(NamedTuple):
    state: TrainState
    experiment: Experiment
    history: list[dict[str, float]]  # one entry per logged step
    preempted: bool  # stopped early by a signal (checkpointed)
    signal: str | None = None  # "SIGTERM" or "SIGINT" when preempted


def build_flow(config: TrainConfig, image_shape: tuple[int, int, int]) -> Flow:
    deq = None if config.dequantizer is None else VariationalDequantizer(**config.dequantizer)
    return glow(tuple(image_shape), **config.model, dequantizer=deq)


def setup(config: TrainConfig, mesh: Mesh | None = None) -> Experiment:
    """Dataset, flow, mesh and the (identical on every host) initialisation batch."""
    dataset = load_dataset(config.dataset, config.data_dir, config.n_bits)
    flow = build_flow(config, dataset.image_shape)
    mesh = make_mesh() if mesh is None else mesh
    if config.batch_size % mesh.devices.size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {mesh.devices.size} devices")
    n_init = min(config.init_batch_size, len(dataset.train))
    idx = batch_indices(len(dataset.train), n_init, 0, config.seed + 1)
    init_pixels = validate_batch(dataset.train[idx], dataset.num_bins, dataset.image_shape, "init batch")
    return Experiment(config, dataset, flow, mesh, init_pixels)


def _optimizer_key(config: TrainConfig) -> tuple:
    return (
        config.optimizer, config.learning_rate, config.warmup_steps, config.grad_clip_norm, config.ema_decay,
        config.lr_decay, config.num_steps if config.lr_decay != "constant" else None,
    )  # fmt: skip


def init_fn(exp: Experiment):
    """pixels -> TrainState: data-dependent initialisation and a fresh optimiser state (jit-able)."""
    optimizer = make_optimizer(exp.config)
    c = exp.config
    return lambda pixels: init_state(exp.flow, optimizer, pixels, exp.dataset.num_bins, c.seed, c.ema_decay)


def initial_state(exp: Experiment, store: CheckpointStore) -> TrainState:
    """The newest verified checkpoint if there is one, else data-dependent initialisation."""
    init = init_fn(exp)
    if store.steps():
        return store.restore(jax.eval_shape(init, exp.init_pixels), replicated(exp.mesh))
    key = ("init", exp.flow, _optimizer_key(exp.config), exp.dataset.num_bins, exp.config.seed, exp.mesh)
    return cached(key, lambda: jax.jit(init, out_shardings=replicated(exp.mesh)))(exp.init_pixels)


def compiled_train_step(exp: Experiment):
    """`make_train_step` for this experiment, compiled once per process."""
    key = ("train", exp.flow, _optimizer_key(exp.config), exp.dataset.num_bins, exp.mesh)
    c = exp.config
    build = lambda: make_train_step(exp.flow, make_optimizer(c), exp.dataset.num_bins, exp.mesh, c.ema_decay)
    return cached(key, build)


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


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def train(
    config: TrainConfig,
    workdir: str | Path,
    *,
    progress: bool = True,
    on_step: Callable[[int, TrainState], Any] | None = None,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Train (or resume training) up to `config.num_steps` updates; checkpoints land in `workdir`.

    Raises WorkdirLockedError if another process trains in `workdir`, ConfigMismatchError if its
    checkpoints belong to a different model or data, DivergenceError after
    `config.max_consecutive_skips` non-finite updates in a row, and WorkdirWriteError when a write
    fails; in every case the last good checkpoint is kept.
    """
    workdir, lead = Path(workdir), jax.process_index() == 0
    with writing(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(workdir, enabled=lead):
        store = CheckpointStore(workdir, config.checkpoint_every, config.keep_checkpoints)
        try:
            changes = check_resume(config, workdir) if store.steps() else {}
            return _train(setup(config, mesh), workdir, store, changes, progress, on_step)
        finally:
            with contextlib.suppress(Exception):  # after an error: still seal a save that completed
                store.finish()
            store.close()


def _train(exp: Experiment, workdir: Path, store: CheckpointStore, changes, progress, on_step) -> TrainResult:
    config, bins, lead = exp.config, exp.dataset.num_bins, jax.process_index() == 0
    state = initial_state(exp, store)
    start = int(state.step)
    if lead:
        record_config_changes(workdir, start, changes)
        save_config(config, workdir)
    train_step = compiled_train_step(exp)
    schedule = learning_rate_schedule(config)
    writer = MetricsWriter(workdir, enabled=lead, start_step=start)
    batches = BatchIterator(
        exp.dataset.train, config.batch_size, bins, config.seed, start,
        jax.process_index(), jax.process_count(), config.prefetch,
    )  # fmt: skip
    history: list[dict[str, float]] = []
    window: list[dict[str, jax.Array]] = []
    bar = tqdm(total=config.num_steps, initial=start, disable=not (progress and lead), unit="step")
    tick, saved = time.perf_counter(), True
    deadline = tick + config.train_time_limit_s if config.train_time_limit_s else None
    try:
        with _StopSignals() as signals:
            for step, pixels in batches if start < config.num_steps else ():
                state, metrics = train_step(state, global_batch(pixels, exp.mesh))
                done = step + 1
                window.append(metrics)
                out_of_time = deadline is not None and time.perf_counter() > deadline
                last = done == config.num_steps or signals.received is not None or out_of_time
                if done % config.log_every == 0 or last:
                    row = _log_row(exp, state, window, tick, schedule(step), done, last)
                    history.append({"step": done, **row})
                    writer.write(done, row)
                    _show(bar, row)
                    bar.update(len(window))
                    window, tick = [], time.perf_counter()
                save = last or store.due(done)
                if save or done % config.max_consecutive_skips == 0:
                    _check_divergence(config, store, done, int(metrics["skipped_in_a_row"]))
                if save:
                    saved = _save_if_healthy(exp, store, state)
                else:
                    store.save(state)  # only seals a finished save
                if on_step is not None:
                    on_step(done, state)
                if last:
                    break
                if signals.received is not None:  # arrived during on_step
                    saved = _save_if_healthy(exp, store, state)
                    break
        store.finish()
    finally:
        bar.close()
        writer.close()
    if not saved:
        raise DivergenceError(
            f"the state at step {int(state.step)} has non-finite held-out bits/dim; it was not saved "
            f"(last good checkpoint: step {store.latest_step()})"
        )
    if deadline is not None and int(state.step) < config.num_steps and signals.received is None:
        print(f"train_time_limit_s={config.train_time_limit_s} reached: stopped at step {int(state.step)}")
    return TrainResult(state, exp, history, signals.received is not None, signals.received)


def _show(bar, row: dict) -> None:
    postfix = {"loss": f"{row['loss']:.3f}", "bpd": f"{row['bits_per_dim']:.3f}"}
    bar.set_postfix(**postfix, img_s=f"{row['images_per_sec']:.0f}", skipped=row["skipped_updates"])


def _log_row(exp: Experiment, state: TrainState, window, tick: float, lr, done: int, last: bool) -> dict:
    config = exp.config
    fetched = jax.device_get(window)
    row = {
        "loss": float(fetched[-1]["loss"]),
        "bits_per_dim": float(np.mean([m["loss"] for m in fetched])),
        "images_per_sec": len(fetched) * config.batch_size / max(time.perf_counter() - tick, 1e-9),
        "learning_rate": float(lr),
        "grad_norm": float(fetched[-1]["grad_norm"]),
        "skipped_updates": int(fetched[-1]["skipped_updates"]),
    }
    if config.eval_every and done % config.eval_every == 0 and not last:
        row["eval_bits_per_dim"] = evaluate_bits_per_dim(
            exp.flow, state.variables(averaged=True), exp.dataset.test, exp.dataset.num_bins, exp.mesh,
            config.eval_batch_size, config.eval_dequant_draws, config.seed,
        )  # fmt: skip
        row.update(_diagnostics(exp, state))
    return row


def _check_divergence(config: TrainConfig, store: CheckpointStore, done: int, in_a_row: int) -> None:
    if in_a_row < config.max_consecutive_skips:
        return
    first = done - in_a_row + 1
    kept = store.latest_step()
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
    c, test = exp.config, exp.dataset.test
    check = ArraySource(test[np.arange(min(c.eval_batch_size, len(test)))])
    bpd = evaluate_bits_per_dim(exp.flow, state.variables(averaged=True), check, exp.dataset.num_bins,
                                exp.mesh, c.eval_batch_size, 1, c.seed, warn=False)  # fmt: skip
    if not np.isfinite(bpd):
        _warn(f"warning: step {int(state.step)}: held-out bits/dim is {bpd}; not checkpointed "
              f"(last good checkpoint: step {store.latest_step()})")  # fmt: skip
        return False
    store.save(state, force=True)
    return True


def restore_for_inference(config: TrainConfig, workdir: str | Path) -> tuple[Experiment, TrainState]:
    """Experiment and the latest checkpointed state of `workdir` (raises if there is none)."""
    exp = setup(config)
    if not (Path(workdir) / "checkpoints").is_dir():
        raise FileNotFoundError(f"no checkpoint in {Path(workdir) / 'checkpoints'}: train first")
    store = CheckpointStore(Path(workdir), config.checkpoint_every, config.keep_checkpoints, writer=False)
    try:
        if not store.steps():
            raise FileNotFoundError(f"no checkpoint in {store.directory}: train first")
        return exp, initial_state(exp, store)
    finally:
        store.close()


DIAGNOSTIC_EXAMPLES = 64


def _diagnostics(exp: Experiment, state: TrainState) -> dict[str, float]:
    """Per-level log-det terms and reconstruction errors on the first held-out examples."""
    pixels = exp.dataset.test[np.arange(min(DIAGNOSTIC_EXAMPLES, len(exp.dataset.test)))]
    variables = state.variables(averaged=True)
    return level_diagnostics(exp.flow, variables, pixels, exp.dataset.num_bins, exp.config.seed)


def evaluate(exp: Experiment, state: TrainState) -> dict[str, float]:
    """Held-out bits/dim of the flow (its parameters' moving average when trained with one; then also
    `flow_bits_per_dim_without_ema`) and of the per-pixel histogram baseline on the same split, and
    the per-level log-det terms and reconstruction errors (`level_diagnostics`)."""
    c, d = exp.config, exp.dataset

    def held_out(averaged: bool, draws: int = c.eval_dequant_draws, samples: int = 1) -> float:
        variables = state.variables(averaged)
        return evaluate_bits_per_dim(
            exp.flow, variables, d.test, d.num_bins, exp.mesh, c.eval_batch_size, draws, c.seed, samples
        )  # fmt: skip

    scores = {"flow_bits_per_dim": held_out(averaged=True)}
    if state.ema_params is not None:
        scores["flow_bits_per_dim_without_ema"] = held_out(averaged=False)
    if c.eval_importance_samples > 1:
        iw = held_out(averaged=True, draws=1, samples=c.eval_importance_samples)
        scores[f"flow_bits_per_dim_iw{c.eval_importance_samples}"] = iw
    baseline = pixel_baseline_bits_per_dim(d.train, d.test, d.num_bins, c.baseline_smoothing)
    return {
        **scores,
        "baseline_bits_per_dim": baseline,
        "held_out_examples": len(d.test),
        **_diagnostics(exp, state),
    }


def write_samples(exp: Experiment, state: TrainState, workdir: str | Path) -> Path:
    c = exp.config
    key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 7)
    image, _ = sample_grid(
        exp.flow,
        state.variables(averaged=True),
        key,
        exp.dataset.num_bins,
        c.sample_temperatures,
        c.samples_per_temperature,
    )
    path = sample_grid_path(workdir, c.sample_temperatures)
    with writing(path):
        image.save(path)
    return path


def write_interpolation(exp: Experiment, state: TrainState, workdir: str | Path, pair=(0, 1)) -> Path:
    test = exp.dataset.test
    a, b = test[np.array([pair[0]])][0], test[np.array([pair[1]])][0]
    image = interpolate(
        exp.flow, state.variables(averaged=True), a, b, exp.dataset.num_bins, exp.config.interpolation_steps
    )
    path = Path(workdir) / f"interpolation_{pair[0]}_{pair[1]}.png"
    with writing(path):
        image.save(path)
    return path


def write_curve(workdir: str | Path, baseline: float | None = None) -> Path:
    return plot_training_curve(Path(workdir), baseline)
