"""Convert a workdir written in an older checkpoint format to the current one (`workdir.FORMAT_VERSION`).

    python -m jaxflows.train.convert WORKDIR

Format 1 to 2 (`glow(steps=K)` became `glow(depth=K)`): config.json's `model.steps` and
`dequantizer.steps` become `depth`; in every checkpoint the scope `levelN/steps` becomes
`levelN/flow_steps` in the parameters, constants, moving average and optimiser state, and the
optimiser's flat moment vectors (`optax.flatten` orders the parameters by their sorted paths) are
permuted into the renamed parameters' order. The workdir is converted in place under its lock; the
original checkpoints stay in `checkpoints_format1/` (delete it once the converted run resumes).
Running the command again converts from those originals again.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxflows.train.checkpoint import write_checksums
from jaxflows.train.config import config_from_dict
from jaxflows.train.errors import CheckpointFormatError, ConfigError, TrainingError
from jaxflows.train.workdir import (
    CONFIG,
    FORMAT_VERSION,
    checkpoint_dirs,
    record_format,
    workdir_format,
    workdir_lock,
    write_text_atomically,
)

_LEVEL = re.compile(r"level\d+")
RENAMED_KEYS = {"steps": "depth"}  # of config.json's `model` and `dequantizer` dicts
RENAMED_SCOPES = {"steps": "flow_steps"}  # of a checkpoint's scopes directly under a levelN scope


def converted_config(fields: dict[str, Any]) -> dict[str, Any]:
    """A version-1 config.json (a dict) with glow's and the dequantizer's `steps` named `depth`."""
    out = dict(fields)
    for field in ("model", "dequantizer"):
        if isinstance(out.get(field), dict):
            out[field] = {RENAMED_KEYS.get(k, k): v for k, v in out[field].items()}
    return out


def renamed_scopes(tree: Any, in_level: bool = False) -> Any:
    """`tree` (nested dicts and sequences) with every `steps` key directly under a `levelN` key
    renamed `flow_steps`."""
    if isinstance(tree, dict):
        return {
            (RENAMED_SCOPES.get(k, k) if in_level else k): renamed_scopes(v, bool(_LEVEL.fullmatch(str(k))))
            for k, v in tree.items()
        }
    if isinstance(tree, list | tuple):
        return type(tree)(renamed_scopes(v) for v in tree)
    return tree


def _flat_order(params: Any) -> np.ndarray:
    """Indices into the flat vector of version-1 `params` (leaves in sorted-path order), listed in
    the order of the renamed parameters' flat vector."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    sizes = [int(np.size(leaf)) for leaf in leaves]
    starts = np.cumsum([0, *sizes[:-1]])
    ranges = treedef.unflatten([np.arange(s, s + n) for s, n in zip(starts, sizes, strict=True)])
    return np.concatenate(jax.tree_util.tree_leaves(renamed_scopes(ranges)))


def _converted_state(state: dict[str, Any]) -> dict[str, Any]:
    """A restored version-1 train state (orbax's dict form) in version 2's layout."""
    order = _flat_order(state["params"])
    reorder = lambda a: a[order] if np.shape(a) == order.shape else a  # the flat moment vectors
    return renamed_scopes({**state, "opt_state": jax.tree_util.tree_map(reorder, state["opt_state"])})


def convert(workdir: str | Path) -> list[int]:
    """Convert `workdir` in place to the current format; returns the steps of the checkpoints it
    converted (none if it was already current). Raises WorkdirLockedError while a run trains in it."""
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise CheckpointFormatError(f"{workdir} is not a training workdir (it has no config.json)")
    version = workdir_format(workdir)
    if version == FORMAT_VERSION:
        return []
    if version != 1:
        raise CheckpointFormatError(f"{workdir}: no converter from format {version} to {FORMAT_VERSION}")
    with workdir_lock(workdir):
        live, originals = workdir / "checkpoints", workdir / f"checkpoints_format{version}"
        if live.is_dir() and not originals.exists():
            shutil.copytree(live, originals)
        staging = workdir / "checkpoints.converting"
        shutil.rmtree(staging, ignore_errors=True)
        steps = [int(p.name) for p in checkpoint_dirs(originals)]
        if steps:
            _convert_checkpoints(originals, staging.absolute(), steps)
            shutil.rmtree(live, ignore_errors=True)
            staging.rename(live)
        config_path = workdir / CONFIG
        if config_path.is_file():
            fields = converted_config(json.loads(config_path.read_text()))
            config_from_dict(fields, str(config_path))  # the converted config must load
            write_text_atomically(config_path, json.dumps(fields, indent=2))
        record_format(workdir)
    return steps


def _convert_checkpoints(source: Path, target: Path, steps: list[int]) -> None:
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True)
    manager = ocp.CheckpointManager(target, options=options)
    try:
        for step in steps:
            state = ocp.StandardCheckpointer().restore((source / str(step) / "default").absolute())
            manager.save(step, args=ocp.args.StandardSave(_converted_state(state)), force=True)
            manager.wait_until_finished()
            write_checksums(target / str(step))
    finally:
        manager.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workdir", type=Path, help="a workdir written by `train` in an older format")
    args = parser.parse_args(argv)
    try:
        if not (args.workdir / "config.json").is_file():
            raise CheckpointFormatError(f"{args.workdir} is not a training workdir (it has no config.json)")
        if workdir_format(args.workdir) == FORMAT_VERSION:
            print(f"{args.workdir} is already in checkpoint format {FORMAT_VERSION}; nothing to convert")
            return
        steps = convert(args.workdir)
    except (TrainingError, ConfigError) as error:
        sys.exit(f"error: {error}")
    print(f"converted {args.workdir} to checkpoint format {FORMAT_VERSION}: checkpoints of steps {steps}; "
          f"the originals are in {args.workdir / 'checkpoints_format1'}")  # fmt: skip


if __name__ == "__main__":
    main()
