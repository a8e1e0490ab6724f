"""The workdir: one writer at a time (a lock), writes that fail loudly, and resume-compatible configs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxflows.train.checkpoint import stored_shapes
from jaxflows.train.config import RESUMABLE_FIELDS, TrainConfig, config_from_dict, config_to_dict
from jaxflows.train.errors import (
    CheckpointFormatError,
    ConfigMismatchError,
    WorkdirLockedError,
    WorkdirWriteError,
)
from jaxflows.train.rules import normalized_model

LOCK = ".lock"
CONFIG = "config.json"
CONFIG_HISTORY = "config_history.jsonl"
FORMAT = "format.json"
# The layout of a workdir's config and checkpoints. 1 (no format.json): glow(steps=K), a level's
# flow steps under the scope levelN/steps; 2: glow(depth=K), the scope levelN/flow_steps.
FORMAT_VERSION = 2
CONVERT_COMMAND = "python -m jaxflows.train.convert"
_VERSION1_SCOPE = re.compile(r"(^|/)level\d+/steps(/|$)")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing `path` (disk full, quota, permissions) into WorkdirWriteError."""
    try:
        yield
    except OSError as error:
        raise WorkdirWriteError(f"could not write {path}: {error.strerror or error}") from error


def write_text_atomically(path: Path, text: str) -> None:
    """Write `path` through a temporary file and a rename: readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        tmp.write_text(text)
        os.replace(tmp, path)


@contextlib.contextmanager
def workdir_lock(workdir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `workdir/.lock` (recording this process) while training.

    The lock is an advisory `flock`: the kernel drops it when its holder exits, however it dies, so
    a lock file left by a killed run is stale by construction and is simply taken over.
    """
    if not enabled:
        yield
        return
    path = Path(workdir) / LOCK
    with writing(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise WorkdirLockedError(
                f"{workdir} is already being trained by {holder}; wait for it to finish, stop it, "
                f"or train in another --workdir"
            ) from None
        with writing(path):
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {stamp}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def save_config(config: TrainConfig, workdir: Path) -> None:
    """Write config.json and the format version of the workdir."""
    write_text_atomically(Path(workdir) / CONFIG, json.dumps(config_to_dict(config), indent=2))
    record_format(workdir)


def record_format(workdir: Path) -> None:
    write_text_atomically(Path(workdir) / FORMAT, json.dumps({"version": FORMAT_VERSION}) + "\n")


def load_workdir_config(workdir: Path) -> TrainConfig:
    """The config a workdir was trained with (written by `train`); CheckpointFormatError if the
    workdir is in an older format."""
    path = Path(workdir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: train in this workdir first, or pass --config")
    check_format(workdir)
    return config_from_dict(json.loads(path.read_text()), str(path))


def checkpoint_dirs(directory: Path) -> list[Path]:
    """The step directories of a checkpoint directory (a workdir's `checkpoints/`), oldest first."""
    directory = Path(directory)
    steps = [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()] if directory.is_dir() else []
    return sorted(steps, key=lambda p: int(p.name))


def _uses_version1_names(config: dict[str, Any]) -> bool:
    """Whether a saved config (a dict) sets glow's or the dequantizer's `steps` (version 1's name)."""
    return any("steps" in (config.get(field) or {}) for field in ("model", "dequantizer"))


def _holds_version1_scopes(step_dir: Path) -> bool:
    """Whether a checkpoint stores arrays under a version-1 scope (levelN/steps/...)."""
    return any(_VERSION1_SCOPE.search(path) for path in stored_shapes(step_dir))


def workdir_format(workdir: Path) -> int:
    """The format version of `workdir`: recorded in format.json, else 1 if its config or one of its
    checkpoints uses version 1's names, else the current version."""
    path = Path(workdir) / FORMAT
    if path.is_file():
        try:
            return int(json.loads(path.read_text())["version"])
        except (ValueError, KeyError, TypeError) as error:
            expected = '{"version": N}'
            raise CheckpointFormatError(f"{path} is unreadable ({error}); expected {expected}") from None
    config = Path(workdir) / CONFIG
    if config.is_file() and _uses_version1_names(json.loads(config.read_text())):
        return 1
    for step_dir in checkpoint_dirs(Path(workdir) / "checkpoints"):
        with contextlib.suppress(Exception):  # an unreadable checkpoint is reported when restoring
            if _holds_version1_scopes(step_dir):
                return 1
    return FORMAT_VERSION


def check_format(workdir: Path) -> None:
    """Raise CheckpointFormatError, naming the converter command, unless `workdir` is in the current
    format (nothing in the workdir is read beyond its metadata, moved or changed)."""
    version = workdir_format(workdir)
    if version > FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{workdir} is in checkpoint format {version}, newer than this jaxflows reads "
            f"({FORMAT_VERSION}); use the jaxflows version that wrote it"
        )
    if version < FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{workdir} is in checkpoint format {version} (glow(steps=K): parameters under "
            f"levelN/steps/...); this jaxflows reads format {FORMAT_VERSION} (glow(depth=K): "
            f"levelN/flow_steps/...). Convert it, keeping the original checkpoints, with:\n"
            f"  {CONVERT_COMMAND} {workdir}"
        )


def _config_changes(saved: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, new value)} for every field that differs (JSON-normalised)."""
    new = config_to_dict(config)
    same = lambda k, v: normalized_model(saved[k]) == normalized_model(v) if k == "model" else saved[k] == v
    return {k: (saved.get(k), v) for k, v in new.items() if k not in saved or not same(k, v)}


def check_resume(config: TrainConfig, workdir: Path) -> dict[str, tuple[Any, Any]]:
    """Before resuming a workdir's checkpoints: refuse a config that changes the model, the data or
    the structure of the optimiser state (ConfigMismatchError listing the differences); return the
    allowed changes (see `record_config_changes`). A workdir in an older format is a
    CheckpointFormatError."""
    check_format(workdir)
    path = Path(workdir) / CONFIG
    if not path.exists():
        raise ConfigMismatchError(
            f"{workdir} has checkpoints but no {CONFIG}: cannot check that this config matches them; "
            f"train in a new --workdir"
        )
    changes = _config_changes(json.loads(path.read_text()), config)
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_FIELDS}
    if refused:
        lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in sorted(refused.items()))
        raise ConfigMismatchError(
            f"{workdir} was trained with a different model, data or optimiser; these fields differ from "
            f"its {CONFIG}:\n{lines}\nuse another --workdir, or the saved values to resume "
            f"(fields that may change on resume: {', '.join(sorted(RESUMABLE_FIELDS))})"
        )
    return changes


def record_config_changes(workdir: Path, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
    """Append the fields a resumed run changed, and the step it resumed at, to config_history.jsonl."""
    if not changes:
        return
    record = {"step": step, "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}}
    history = Path(workdir) / CONFIG_HISTORY
    with writing(history), history.open("a") as f:
        f.write(json.dumps(record) + "\n")
