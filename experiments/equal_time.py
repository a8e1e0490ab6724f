"""Image-flow families at equal training time on Fashion-MNIST: the Glow of the long
configuration, TarFlow and Jet (issues "TarFlow" item 6 and "Jet" item 6), each trained alone for
60 minutes of training time (`--minutes`) from its own config, with a held-out score every 5.

    .venv/bin/python -m experiments.equal_time train glow        # resumable: rerun to go on
    .venv/bin/python -m experiments.equal_time train tarflow
    .venv/bin/python -m experiments.equal_time train jet
    .venv/bin/python -m experiments.equal_time train tarflow_classes --minutes 30
    .venv/bin/python -m experiments.equal_time train tarflow_noise --minutes 30
    .venv/bin/python -m experiments.equal_time report --out experiments/results

`train` runs `experiments.train` on the family's config with `train_time_limit_s=3600
eval_every_s=300 eval_every=0` for an hour (training time leaves out compilation and evaluations:
docs/training.md) and `num_steps` set so that the cosine schedule ends at the budget: from the
family's step time, measured once (40 steps after compilation, without a workdir) and kept in
`WORKDIR/equal_time.json`, so a rerun resumes the same schedule. The 15- and 30-minute scores are
read from the same runs (the learning rate then still mid-decay), not from shorter schedules.
A SIGTERM or Ctrl-C stops the run at a checkpoint and `train` exits non-zero (a chain of runs
stops there); the same command resumes it.
`report` reads each workdir's metrics.csv and the final evaluation the command printed
(`WORKDIR/equal_time.log`: with and without averaging, a class-conditional model's Bayes-rule
accuracy) and writes equal_time.{md,json}, the curves against training time and each run's sample
grid; parameter counts and GFLOP per step (XLA's cost analysis of the train step, as
benchmarks/train_step.py) come from each workdir's config.json. `--set FIELD=VALUE ...` overrides
config fields of a run (and its calibration).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "experiments" / "configs"
# name: (config file, its overrides, title)
FAMILIES = {
    "glow": ("fashion_mnist.py", [], "Glow (long config)"),
    "tarflow": ("tarflow_fashion_mnist.py", [], "TarFlow"),
    "jet": ("jet_fashion_mnist.py", [], "Jet"),
    "tarflow_classes": ("tarflow_fashion_mnist_classes.py", [], "TarFlow, class-conditional"),
    # TarFlow's Gaussian mode (the paper's σ = 0.05 on [−1, 1]) for guided and denoised samples;
    # its "bits/dim" are of noisy data
    "tarflow_noise": (
        "tarflow_fashion_mnist_classes.py",
        ["model.noise_std=0.025"],
        "TarFlow, class-conditional, noise-trained (σ = 0.025)",
    ),
}
MINUTES = 60.0
EVALUATIONS = 12  # held-out scores per run, at equal intervals of training time
READ_AT = (0.25, 0.5, 1.0)  # fractions of the budget: 15, 30 and 60 minutes of an hour
CALIBRATION_STEPS = 40
STOP = (signal.SIGTERM, signal.SIGINT)
# experiments.train's line when SIGTERM stopped it (it exits 0 then; after a SIGINT, 130)
STOPPED = re.compile(r"^stopped by SIGTERM at step \d+")


def calibrated_steps(family: str, workdir: Path, budget_s: float, overrides: list[str]) -> int:
    """Steps in `budget_s` of training at the family's step time, measured once (kept in the workdir)."""
    record = workdir / "equal_time.json"
    if record.exists():
        return round(budget_s / json.loads(record.read_text())["calibration_step_s"])
    from jaxflows.train import apply_overrides, apply_process_settings, load_config, train

    config = apply_overrides(load_config(CONFIGS / FAMILIES[family][0]), overrides)
    config = config.replace(num_steps=CALIBRATION_STEPS, eval_every=0, log_every=CALIBRATION_STEPS)
    apply_process_settings(config)
    result = train(config, None, progress=False)
    steps = round(budget_s / result.step_s)
    workdir.mkdir(parents=True, exist_ok=True)
    facts = {"calibration_step_s": result.step_s, "first_step_s": result.first_step_s}
    record.write_text(json.dumps(facts, indent=1) + "\n")
    print(f"{family}: {result.step_s:.3f} s per step after compilation → num_steps={steps}", flush=True)
    return steps


def run_training(family: str, root: Path, minutes: float, overrides: list[str]) -> None:
    """Train `family` in root/family for `minutes` of training time (resumes a stopped run)."""
    workdir, budget_s = root / family, minutes * 60
    overrides = [*FAMILIES[family][1], *overrides]
    steps = calibrated_steps(family, workdir, budget_s, overrides)
    overrides = [*overrides, f"train_time_limit_s={budget_s}", f"eval_every_s={budget_s / EVALUATIONS}"]
    overrides += ["eval_every=0", f"num_steps={steps}"]
    command = [sys.executable, "-m", "experiments.train", "--config", str(CONFIGS / FAMILIES[family][0])]
    command += ["--workdir", str(workdir), "--no_progress", "--set", *overrides]
    print(" ".join(command), flush=True)
    stopped = False
    with (workdir / "equal_time.log").open("a") as log:  # the final evaluation's lines, for `report`
        # The child has its own process group: a SIGTERM or Ctrl-C reaches it once, from here, and
        # it checkpoints and stops as a preempted run.
        child = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, process_group=0
        )
        forward = {sig: signal.signal(sig, lambda signum, frame: child.send_signal(signum)) for sig in STOP}
        try:
            for line in child.stdout:
                print(line, end="", flush=True)
                log.write(line)
                stopped = stopped or STOPPED.match(line) is not None
        finally:
            code = child.wait()
            for sig, handler in forward.items():
                signal.signal(sig, handler)
    if code:
        sys.exit(f"{family}: experiments.train exited with {code}")
    if stopped:  # experiments.train exits 0 when preempted; a chain of runs must not go on
        sys.exit(f"{family}: stopped before its budget (checkpoint kept); rerun the same command to resume")


FINAL_SCORES = {  # what the training command's final evaluation prints
    "final": re.compile(r"held-out bits/dim \(flow(?: given the label)?\):\s*([-\d.]+)"),
    "final_raw": re.compile(r"held-out bits/dim \(flow, without EMA\):\s*([-\d.]+)"),
    "final_marginal": re.compile(r"held-out bits/dim \(flow, marginal over classes\):\s*([-\d.]+)"),
    "bayes_accuracy": re.compile(r"Bayes-rule accuracy .*:\s*([-\d.]+)"),
}


def final_scores(workdir: Path) -> dict[str, float]:
    """The last final evaluation the training command printed (equal_time.log): held-out bits/dim
    with and without the averaged weights, and a class-conditional model's Bayes-rule accuracy."""
    scores: dict[str, float] = {}
    log = workdir / "equal_time.log"
    for line in log.read_text().splitlines() if log.exists() else ():
        for key, pattern in FINAL_SCORES.items():
            if match := pattern.match(line):
                scores[key] = float(match.group(1))
    return scores


def held_out_curve(rows: list[dict[str, float]]) -> list[tuple[float, int, float]]:
    """(training seconds, step, held-out bits/dim) of the rows that hold a held-out score."""
    return [
        (r["train_seconds"], int(r["step"]), r["eval_bits_per_dim"]) for r in rows if "eval_bits_per_dim" in r
    ]


def read_at(curve: list[tuple[float, int, float]], seconds: float) -> tuple[float, int, float] | None:
    """The first held-out score at or after `seconds` of training (None if the run stopped before)."""
    return next((point for point in curve if point[0] >= seconds), None)


def model_facts(workdir: Path) -> dict[str, Any]:
    """Parameters and GFLOP per train step of the run's config (nothing is trained)."""
    import jax

    from benchmarks.train_step import xla_flops
    from jaxflows.train import abstract_inputs, make_mesh, make_optimizer, setup
    from jaxflows.train.workdir import load_workdir_config

    config = load_workdir_config(workdir)
    exp = setup(config)
    optimizer = make_optimizer(config)
    state, _ = abstract_inputs(exp.flow, optimizer, exp.bins, config.batch_size, make_mesh(jax.devices()[:1]))
    params = int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params)))
    gflop = xla_flops(exp.flow, optimizer, exp.bins, config.batch_size) / 1e9
    held_out = len(exp.dataset.held_out)
    return {
        "parameters": params,
        "gflop_per_step": gflop,
        "batch_size": config.batch_size,
        "held_out": held_out,
    }


def summarize(family: str, workdir: Path, marks: list[float]) -> dict[str, Any] | None:
    """The run's figures, its held-out score read at each of `marks` (seconds of training)."""
    from jaxflows.train import load_workdir_config, read_metrics

    rows = read_metrics(workdir)
    if not rows:
        return None
    curve = held_out_curve(rows)
    last = rows[-1]
    scores = final_scores(workdir)
    if "final" in scores and (not curve or curve[-1][1] < int(last["step"])):
        # a run whose schedule ended just short of its budget: its end is the final evaluation
        curve.append((last["train_seconds"], int(last["step"]), scores["final"]))
    budget = load_workdir_config(workdir).train_time_limit_s or math.nan
    end = curve[-1] if "final" in scores else None  # what a mark at the budget reads
    facts = model_facts(workdir)
    summary = {
        "family": family,
        "title": FAMILIES[family][2],
        **facts,
        "steps": int(last["step"]),
        "train_seconds": last.get("train_seconds", math.nan),
        "images_per_sec": int(last["step"]) * facts["batch_size"] / last["train_seconds"],
        "curve": curve,
        "read_at": {
            f"{m / 60:g} min": end if end and math.isclose(m, budget) else read_at(curve, m) for m in marks
        },
        "calibration": json.loads((workdir / "equal_time.json").read_text()),
        **scores,
    }
    return summary


GUIDANCE = (0.0, 1.0, 3.0)


def guided_grids(family: str, workdir: Path, out: Path) -> list[str]:
    """A class-conditional TarFlow's samples under classifier-free guidance (and, noise-trained,
    denoised), one grid per weight from the same draws (`experiments.tarflow_samples`)."""
    from experiments.tarflow_samples import write_grids
    from jaxflows.train.workdir import load_workdir_config

    model = load_workdir_config(workdir).model
    if model.get("name") != "tarflow" or not model.get("num_classes"):
        return []
    paths = write_grids(
        workdir, out, list(GUIDANCE), temperature=1.0, per_class=8, prefix=f"equal_time_{family}"
    )
    lines = ["", f"{FAMILIES[family][2]}: one row per class at T = 1, guidance w = {GUIDANCE}"]
    for path in paths:
        lines += ["", f"`{path.stem}`:", "", f"![{path.stem}]({path.name})"]
    return lines


def plot(summaries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for s in (s for s in summaries if s["curve"]):  # a run stopped before its first score has none
        seconds, _, bpd = zip(*s["curve"], strict=True)
        ax.plot(
            np.array(seconds) / 60, bpd, "o-", ms=3, label=f"{s['title']} ({s['parameters'] / 1e3:.0f} k)"
        )
    ax.set_xlabel("training time (minutes; compilation and evaluations excluded)")
    ax.set_ylabel("held-out bits/dim")
    ax.set_ylim(top=min(6.0, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(root: Path, out: Path) -> None:
    from jaxflows.train.workdir import load_workdir_config

    runs = [f for f in FAMILIES if (root / f / "metrics.csv").exists()]
    budget_s = max((load_workdir_config(root / f).train_time_limit_s or 0.0 for f in runs), default=0.0)
    marks = [f * budget_s for f in READ_AT]
    summaries = [s for f in runs if (s := summarize(f, root / f, marks)) is not None]
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Image-flow families at equal training time on Fashion-MNIST",
        "",
        "Written by `python -m experiments.equal_time report` from the runs of",
        "`python -m experiments.equal_time train FAMILY` (one at a time, this project's 2-core CPU).",
        "Held-out bits/dim of the whole held-out split (averaged weights where the config",
        "keeps them), read at the first timed evaluation at or after each mark.",
        "",
        "| model | parameters | GFLOP / step (batch) | steps | images/s | "
        + " | ".join(f"{m / 60:g} min" for m in marks)
        + " | end, without averaging |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        scores = [f"{p[2]:.4f}" if p else "—" for p in s["read_at"].values()]
        lines.append(
            f"| {s['title']} | {s['parameters']:,} | {s['gflop_per_step']:.1f} ({s['batch_size']}) "
            f"| {s['steps']:,} | {s['images_per_sec']:.1f} | "
            + " | ".join(scores)
            + (f" | {s['final_raw']:.4f} |" if "final_raw" in s else " | — |")
        )
    conditional = [s for s in summaries if "bayes_accuracy" in s]
    if conditional:
        lines += [
            "",
            "Class-conditional models at the end (the training command's evaluation): bits/dim given",
            "the label, of the mixture over classes, and Bayes' rule argmax_c log p(x | c) + log p(c)",
            "on every held-out image (± its binomial standard error).",
            "",
            "| model | given the label | marginal | Bayes-rule accuracy |",
            "|---|---|---|---|",
        ]
        for s in conditional:
            p = s["bayes_accuracy"]
            error = math.sqrt(p * (1 - p) / s["held_out"])
            lines.append(
                f"| {s['title']} | {s['final']:.4f} | {s.get('final_marginal', math.nan):.4f} "
                f"| {100 * p:.1f}% ± {100 * error:.1f}% ({s['held_out']:,} images) |"
            )
    curve_png = out / "equal_time_curves.png"
    if summaries:
        plot(summaries, curve_png)
        lines += ["", f"![held-out bits/dim against training time]({curve_png.name})"]
    for s in summaries:
        grids = sorted((root / s["family"]).glob("samples*.png"))
        if grids:
            target = out / f"equal_time_{s['family']}_samples.png"
            shutil.copyfile(grids[-1], target)
            lines += [
                "",
                f"{s['title']} samples ({grids[-1].stem}):",
                "",
                f"![{s['title']} samples]({target.name})",
            ]
        lines += guided_grids(s["family"], root / s["family"], out)
    (out / "equal_time.md").write_text("\n".join(lines) + "\n")
    (out / "equal_time.json").write_text(json.dumps(summaries, indent=1) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    from jaxflows.train import add_override_argument

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["train", "report"])
    parser.add_argument("family", nargs="?", choices=sorted(FAMILIES))
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "equal_time", help="the runs' workdirs")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    parser.add_argument("--minutes", type=float, default=MINUTES, help="training time of a run (train)")
    add_override_argument(parser)
    args = parser.parse_args(argv)
    if args.command == "train":
        if args.family is None:
            parser.error("train needs a FAMILY")
        run_training(args.family, args.root, args.minutes, args.overrides)
    else:
        report(args.root, args.out)


if __name__ == "__main__":
    main()
