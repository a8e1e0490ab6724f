"""Checkpoints with orbax, each sealed with a checksum record and verified before it is restored.

Orbax saves asynchronously; once a save has finished, `CheckpointStore` hashes every file of the
step's directory into `<step>/jaxflows_checksums.json`. Restoring takes the newest checkpoint whose
files match their record and that orbax can read; a corrupt or unreadable one is named in a one-line
warning and (for a writer) moved to `checkpoints_corrupt/` so that training cannot rotate the good
ones out behind it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding

from jaxflows.train.errors import CheckpointError, CheckpointStructureError, WorkdirWriteError, warn
from jaxflows.train.state import TrainState

CHECKSUMS = "jaxflows_checksums.json"
UNVERIFIED = "unverified (no checksum record: written before a crash or by an older jaxflows)"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def write_checksums(step_dir: Path) -> None:
    """Record the size and SHA-256 of every file of a finished checkpoint."""
    record = {str(p.relative_to(step_dir)): [p.stat().st_size, _digest(p)] for p in _files(step_dir)}
    tmp = step_dir / (CHECKSUMS + ".tmp")
    tmp.write_text(json.dumps(record, indent=0))
    tmp.replace(step_dir / CHECKSUMS)


def verify_checksums(step_dir: Path) -> str | None:
    """None if every file of the checkpoint matches its record, else what is wrong (one line)."""
    record_path = step_dir / CHECKSUMS
    if not record_path.is_file():
        return UNVERIFIED
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as error:
        return f"unreadable checksum record ({error})"
    present = {str(p.relative_to(step_dir)) for p in _files(step_dir)}
    missing = sorted(set(record) - present)
    if missing:
        return f"missing file(s) {missing[:3]}"
    for name, (size, digest) in record.items():
        path = step_dir / name
        if path.stat().st_size != size:
            return f"corrupt: {name} has {path.stat().st_size} bytes, {size} were saved"
        if _digest(path) != digest:
            return f"corrupt: {name} does not match its checksum"
    return None


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs every failed read at length (hundreds of lines); the caller reports one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class CheckpointStore:
    """Save every `every` steps keeping the last `keep`; seal finished saves; restore verified ones.

    `writer=False` (evaluation, sampling) never moves or deletes anything in the workdir.
    """

    def __init__(self, workdir: Path, every: int, keep: int, writer: bool = True):
        # orbax logs a failed write at length from its own threads (about 200 lines); the store
        # reports each failure as one WorkdirWriteError, so orbax stays quiet while it is open
        self._quiet = contextlib.ExitStack()
        self._quiet.enter_context(_quiet_orbax())
        self.workdir = Path(workdir).absolute()
        self.directory = self.workdir / "checkpoints"
        self.writer = writer
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every, create=writer, read_only=not writer
        )
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except BaseException:
            self._quiet.close()
            raise
        self._unsealed: int | None = None

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, state: TrainState, force: bool = False) -> bool:
        """Start saving `state` under its step (if the interval says so, or `force`)."""
        step = int(state.step)
        if not (force or self.due(step)):
            self.poll()
            return False
        self._seal(wait=True)
        try:
            saved = self.manager.save(step, args=ocp.args.StandardSave(state), force=force)
        except Exception as error:
            raise WorkdirWriteError(f"could not save the checkpoint of step {step}: {error}") from error
        if saved:
            self._unsealed = step
        return saved

    def _seal(self, wait: bool) -> None:
        """Checksum the last save once orbax has finished it (without blocking unless `wait`)."""
        if self._unsealed is None or (not wait and self.manager.is_saving_in_progress()):
            return
        step = self._unsealed
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as error:
            self._unsealed = None
            raise WorkdirWriteError(f"the checkpoint of step {step} could not be written: {error}") from error
        # Cleared only now: a wait cut short (a second Ctrl-C) leaves the save to be sealed by the
        # `finish` of the run's clean-up, instead of an unverified checkpoint.
        self._unsealed = None
        step_dir = self.directory / str(step)
        self.manager.reload()
        if step not in self.manager.all_steps() or not step_dir.is_dir():
            raise WorkdirWriteError(f"the checkpoint of step {step} was not written to {step_dir}")
        if jax.process_index() != 0:  # one host writes the record of a shared directory
            return
        try:
            write_checksums(step_dir)
        except OSError as error:
            raise WorkdirWriteError(f"could not write the checksums of {step_dir}: {error}") from error

    def poll(self) -> None:
        """Seal the last save if orbax has finished it; never blocks (call it between saves)."""
        self._seal(wait=False)

    def finish(self) -> None:
        """Wait for the last save and seal it."""
        self._seal(wait=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.manager.close()
        self._quiet.close()

    def restore(self, template: TrainState, sharding: NamedSharding) -> TrainState | None:
        """The newest verified checkpoint that orbax can read into the structure of `template`
        (arrays or shapes); None if the workdir has no checkpoint.

        Each rejected checkpoint gets a one-line warning. A checkpoint without a checksum record is
        used (and sealed) when it is newer than every verified one and reads back whole (a save
        that completed as the run stopped), else only when no verified one is left. Raises
        CheckpointError if none can be restored.
        """
        steps = self.steps()
        if not steps:
            return None
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template
        )
        problems = {step: verify_checksums(self.directory / str(step)) for step in steps}
        # Every process has looked at the same files before process 0 moves any (a process that
        # looked later would see fewer checkpoints and restore another step than its peers).
        _barrier("jaxflows_checkpoint_scan")
        unverified = [s for s in reversed(steps) if problems[s] == UNVERIFIED]
        verified = [s for s in reversed(steps) if problems[s] is None]
        for step in reversed(steps):
            if problems[step] is not None and step not in unverified:
                self._reject(step, problems[step])
        # Orbax lists a step only once its save has committed (written to a temporary directory,
        # then renamed), so an unverified checkpoint newer than every verified one is a complete
        # save whose sealing was cut short (a second Ctrl-C, kill -9 in between): it is tried
        # first, and sealed if every array reads back. Older unverified ones stay a last resort.
        newest = max(verified, default=-1)
        order = [s for s in unverified if s > newest] + verified + [s for s in unverified if s < newest]
        for step in order:
            try:
                with _quiet_orbax():
                    state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as error:
                if problems[step] is None:  # its checksums verified: an intact checkpoint of another model?
                    self._check_structure(step, abstract)
                problems[step] = f"unreadable ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                self._reject(step, problems[step])
                continue
            for newer in (s for s in unverified if s > step and (self.directory / str(s)).is_dir()):
                self._reject(newer, problems[newer])  # training would otherwise save over it
            if problems[step] is not None and step > newest:
                self._seal_found(step)
            elif problems[step] is not None:
                warn(f"warning: restored the checkpoint at step {step}, which is {problems[step]}")
            # Process 0 has moved the rejected checkpoints: every process lists the same steps
            # again, or their managers would disagree on which steps are due a save.
            _barrier("jaxflows_checkpoints_moved")
            self.manager.reload()
            return state
        details = "; ".join(f"step {s}: {problems[s]}" for s in steps)
        raise CheckpointError(f"no checkpoint in {self.directory} could be restored ({details})")

    def _seal_found(self, step: int) -> None:
        """Seal a complete checkpoint that was restored without a checksum record (a writer only)."""
        if self.writer and jax.process_index() == 0:
            try:
                write_checksums(self.directory / str(step))
            except OSError as error:
                raise WorkdirWriteError(f"could not write the checksums of step {step}: {error}") from error
        warn(
            f"note: the checkpoint at step {step} was complete but not sealed (the run stopped while "
            f"finishing it); every array read back, so it is used{' and sealed' if self.writer else ''}"
        )

    def _check_structure(self, step: int, abstract: TrainState) -> None:
        """Raise CheckpointStructureError, naming the differences, if the checkpoint at `step` holds
        arrays under other paths or with other shapes than `abstract` (the model being restored)."""
        stored = stored_shapes(self.directory / str(step))
        expected = _shapes(abstract)
        missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        reshaped = sorted(p for p in set(expected) & set(stored) if expected[p] != stored[p])
        if not (missing or extra or reshaped):
            return
        parts = [
            f"{label} ({len(paths)}): {', '.join(paths[:4])}{', …' if len(paths) > 4 else ''}"
            for label, paths in (
                ("missing from the checkpoint", missing),
                ("in the checkpoint but not in the model", extra),
                ("of another shape", [f"{p} {stored[p]} -> {expected[p]}" for p in reshaped]),
            )
            if paths
        ]
        raise CheckpointStructureError(
            f"the checkpoint at step {step} in {self.directory} is intact but holds a different model: "
            + "; ".join(parts)
            + ". Nothing was moved; train this config in a new --workdir, or restore with the config "
            "(and jaxflows version) that wrote it"
        )

    def _reject(self, step: int, problem: str) -> None:
        moved = ""
        if self.writer and jax.process_index() == 0:
            target = self.workdir / "checkpoints_corrupt" / str(step)
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(self.directory / str(step)), target)
            self.manager.reload()
            moved = f" (moved to {target})"
        warn(f"warning: checkpoint at step {step} is {problem}; falling back to an earlier one{moved}")


def _barrier(name: str) -> None:
    """Wait for every process (nothing to wait for in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def stored_shapes(step_dir: Path) -> dict[str, tuple[int, ...]]:
    """{"params/bijector/level1/...": shape} of every array a checkpoint holds (from its metadata)."""
    with _quiet_orbax():
        stored = ocp.StandardCheckpointer().metadata(Path(step_dir).absolute() / "default")
    return _shapes(getattr(stored, "item_metadata", stored))


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """{"params/bijector/level1/...": shape} for every array (or array metadata) of a tree."""

    def name(entry) -> str:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                return str(getattr(entry, attribute))
        return str(entry)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(e) for e in path): tuple(getattr(leaf, "shape", ())) for path, leaf in leaves}
