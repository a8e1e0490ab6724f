"""Export a trained workdir as a shipped model (`jaxflows/pretrained/weights/NAME.npz` + `NAME.json`).

    .venv/bin/python -m experiments.export_pretrained WORKDIR NAME --command "..." --commit SHA \\
        [--description "..."] [--wall-minutes M] [--out jaxflows/pretrained/weights]
    .venv/bin/python -m experiments.export_pretrained --upgrade jaxflows/pretrained/weights/*.json

Writes the variables (the parameters' moving average when the run kept one) and a model card: the
architecture `jaxflows.pretrained.load` rebuilds (the config's model through the model registry, the
networks' dtype unset when it was float32, so `jax_enable_x64` gives float64 networks), the training
command, commit, date, machine and config, the parameter count, the weights' SHA-256, and held-out
bits/dim with and without the average, measured here with a fixed threefry key and one key per test
image (`fold_in(key, i)`), so the values do not depend on batching, devices or JAX's default PRNG.

`--upgrade CARD ...` rewrites cards in the current format with the networks' dtype unset (float32
networks are what float32 maps give); the weights, their SHA-256 and the recorded scores stay.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path

import jax
import numpy as np

from experiments import report
from jaxflows.analysis import bits_per_dim_per_example
from jaxflows.pretrained import ModelCard, card, load, save
from jaxflows.train import apply_process_settings, load_workdir_config, restore_for_inference

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "jaxflows" / "pretrained" / "weights"
CHECK_IMAGES = 1000  # the card's short check: the first images of the test set (tests/test_pretrained.py)
EVAL_SEED = 0


def held_out(flow, variables, pixels, labels, bins: int) -> np.ndarray:
    return bits_per_dim_per_example(flow, variables, pixels, bins=bins, labels=labels, seed=EVAL_SEED)


def nats_per_example(flow, variables, x, labels, batch_size: int = 1000) -> np.ndarray:
    """−log p(x) in nats of each continuous example (no noise: the same on any machine or batching
    up to float rounding)."""
    log_prob = jax.jit(lambda v, x, c: flow.apply(v, x, c, method="log_prob"))
    parts = [
        -np.asarray(
            log_prob(variables, x[i : i + batch_size], None if labels is None else labels[i : i + batch_size])
        )
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts)


def evaluate(exp, state) -> dict:
    """The card's `evaluation`: held-out bits/dim of discrete data (fixed per-image dequantisation
    keys) or nats of continuous data, with and without the parameters' moving average."""
    dataset = exp.dataset
    examples = dataset.held_out.all()
    labels = dataset.held_out.labels(np.arange(len(examples))) if exp.conditional else None
    averaged = state.ema_params is not None

    def score(average: bool) -> np.ndarray:
        variables = state.variables(average)
        if dataset.discrete:
            return held_out(exp.flow, variables, examples, labels, dataset.num_bins)
        return nats_per_example(exp.flow, variables, examples, labels)

    final = score(False)
    shipped = score(True) if averaged else final
    unit = "bits_per_dim" if dataset.discrete else "nats"
    evaluation = {
        "dataset": f"{dataset.name} held-out split ({len(examples)} examples)",
        f"held_out_{unit}": round(float(shipped.mean()), 6),
        f"held_out_{unit}_without_ema": round(float(final.mean()), 6),
        "weights": "moving average of the parameters (EMA)" if averaged else "final parameters (no EMA)",
        f"first_{CHECK_IMAGES}_{unit}": float(shipped[:CHECK_IMAGES].mean()),
    }
    if dataset.discrete:
        evaluation["protocol"] = (
            "one uniform dequantisation draw per image; image i uses fold_in(jax.random.key("
            f"{EVAL_SEED}, impl='threefry2x32'), i); jaxflows.analysis.bits_per_dim_per_example"
            + ("; log P(x | y) under each image's own label" if exp.conditional else "")
        )
    else:
        dims = int(np.prod(dataset.event_shape))
        evaluation["held_out_nats_per_dim"] = round(float(shipped.mean()) / dims, 6)
        evaluation["protocol"] = "−log p(x) in nats per example, flow.apply(..., method='log_prob')"
    return evaluation


def export(workdir: Path, name: str, command: str, commit: str, description: str, wall_minutes, out: Path):
    config = load_workdir_config(workdir)
    apply_process_settings(config)  # the PRNG the run used: its checkpointed key has that shape
    exp, state = restore_for_inference(config, workdir)
    dataset = exp.dataset
    averaged = state.ema_params is not None
    evaluation = evaluate(exp, state)
    training = {
        "command": command,
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "machine": report.describe_machine(),
        "steps": int(state.step),
        "wall_minutes": wall_minutes,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
    }
    written = save(
        out / name,
        {"name": "glow", **config.model},  # a config without a name means glow
        state.variables(averaged),
        event_shape=tuple(dataset.event_shape),
        bins=None if dataset.num_bins is None else int(dataset.num_bins),
        description=description,
        training=training,
        evaluation=evaluation,
        **pipeline(config, dataset.discrete),
    )
    print(written.to_json())
    return written


def pipeline(config, discrete: bool = True) -> dict:
    """The pipeline arguments a card stores for a run of `config`, as training passed them: the data's
    range (dequantised pixels in [0, 1], continuous data unbounded), the network policy with the
    dtype unset when it was float32 (what float32 maps give anyway; float64 under jax_enable_x64),
    and the dequantizer's settings."""
    dtype = getattr(config, "network_dtype", None)
    return {
        "data_range": (0.0, 1.0) if discrete else None,
        "network_dtype": None if dtype in (None, "float32") else dtype,
        "network_precision": config.network_precision,
        "dequantizer": config.dequantizer,
    }


def upgrade(path: Path) -> ModelCard:
    """Rewrites the card at `path` in the current format, the networks' dtype unset when float32 (the
    weights' bytes, SHA-256 and the recorded scores unchanged); returns the card written."""
    old = card(path)
    _, weights = load(path)  # checked against the card's SHA-256
    stored = old.architecture["pipeline"]
    dtype = stored.get("network_dtype")
    note = (
        f"{datetime.date.today().isoformat()}: card rewritten in format {written_version()} by "
        "experiments/export_pretrained.py --upgrade (weights unchanged)"
        + ("; networks' dtype unset (trained with float32 networks)" if dtype == "float32" else "")
    )
    training = {**old.training, "card_history": [*old.training.get("card_history", []), note]}
    written = save(
        path,
        old.model,
        weights,
        event_shape=old.event_shape,
        bins=old.bins,
        description=old.description,
        training=training,
        evaluation=old.evaluation,
        data_range=(0.0, 1.0) if len(old.event_shape) == 3 else None,
        network_dtype=None if dtype in (None, "float32") else dtype,
        network_precision=stored.get("network_precision", "highest"),
        dequantizer=stored.get("dequantizer"),
    )
    if written.sha256 != old.sha256:
        change = f"{old.sha256} -> {written.sha256}"
        raise RuntimeError(f"{path}: rewriting changed the weights' SHA-256 ({change})")
    return written


def written_version() -> int:
    return ModelCard("", "", {}, {}, {}, 0, "", "").format_version


def main(argv=None) -> None:
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if argv and argv[0] == "--upgrade":
        for path in argv[1:]:
            print(f"{path}: {upgrade(Path(path)).architecture}")
        return
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
