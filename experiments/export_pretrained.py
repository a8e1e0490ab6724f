"""Export a trained workdir as a shipped model (`jaxflows/pretrained/weights/NAME.npz` + `NAME.json`).

    .venv/bin/python -m experiments.export_pretrained WORKDIR NAME --command "..." --commit SHA \\
        [--description "..."] [--wall-minutes M] [--out jaxflows/pretrained/weights]

Writes the variables (the parameters' moving average when the run kept one) and a model card: the
architecture `jaxflows.pretrained.load` rebuilds, the training command, commit, date, machine and
config, the parameter count, the weights' SHA-256, and held-out bits/dim with and without the
average, measured here with a fixed threefry key and one key per test image (`fold_in(key, i)`),
so the values do not depend on batching, devices or JAX's default PRNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path

import numpy as np

from experiments import report
from jaxflows.analysis import bits_per_dim_per_example
from jaxflows.pretrained import ModelCard, save
from jaxflows.train import apply_process_settings, load_workdir_config, restore_for_inference

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "jaxflows" / "pretrained" / "weights"
CHECK_IMAGES = 1000  # the card's short check: the first images of the test set (tests/test_pretrained.py)
EVAL_SEED = 0


def held_out(flow, variables, pixels, labels, bins: int) -> np.ndarray:
    return bits_per_dim_per_example(flow, variables, pixels, bins=bins, labels=labels, seed=EVAL_SEED)


def export(workdir: Path, name: str, command: str, commit: str, description: str, wall_minutes, out: Path):
    config = load_workdir_config(workdir)
    apply_process_settings(config)  # the PRNG the run used: its checkpointed key has that shape
    exp, state = restore_for_inference(config, workdir)
    dataset = exp.dataset
    pixels = dataset.test.all()
    labels = dataset.test.labels(np.arange(len(pixels))) if exp.conditional else None
    averaged = state.ema_params is not None
    scores = {
        "averaged" if averaged else "final": held_out(
            exp.flow, state.variables(averaged), pixels, labels, dataset.num_bins
        )
    }
    if averaged:
        scores["final"] = held_out(exp.flow, state.variables(False), pixels, labels, dataset.num_bins)
    shipped = scores["averaged" if averaged else "final"]
    evaluation = {
        "dataset": f"{dataset.name} test split ({len(pixels)} images)",
        "held_out_bits_per_dim": round(float(shipped.mean()), 6),
        "held_out_bits_per_dim_without_ema": round(float(scores["final"].mean()), 6),
        "weights": "moving average of the parameters (EMA)" if averaged else "final parameters (no EMA)",
        f"first_{CHECK_IMAGES}_bits_per_dim": float(shipped[:CHECK_IMAGES].mean()),
        "protocol": (
            "one uniform dequantisation draw per image; image i uses fold_in(jax.random.key("
            f"{EVAL_SEED}, impl='threefry2x32'), i); jaxflows.analysis.bits_per_dim_per_example"
            + ("; log P(x | y) under each image's own label" if exp.conditional else "")
        ),
    }
    architecture = {
        "builder": "glow",
        "image_shape": list(dataset.image_shape),
        "kwargs": {
            **config.model,
            "network_dtype": config.network_dtype,
            "network_precision": config.network_precision,
        },
        "dequantizer": config.dequantizer,
        "bins": int(dataset.num_bins),
    }
    training = {
        "command": command,
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "machine": report.describe_machine(),
        "steps": int(state.step),
        "wall_minutes": wall_minutes,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
    }
    blank = ModelCard(name, description, architecture, training, evaluation, 0, "", "")
    written = save(out, blank, state.variables(averaged))
    print(written.to_json())
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("name")
    parser.add_argument("--command", required=True, help="the command that trained the workdir")
    parser.add_argument("--commit", required=True, help="the commit that trained it")
    parser.add_argument("--description", default="")
    parser.add_argument("--wall-minutes", type=float, default=None)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    export(args.workdir, args.name, args.command, args.commit, args.description, args.wall_minutes, args.out)


if __name__ == "__main__":
    main()
