"""Reports of the paper comparisons: the detected machine, mean ± std tables, markdown files with
command, date and machine, and bar or line plots of held-out bits/dim."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import matplotlib
import numpy as np

from experiments.variants import Run, Variant
from jaxflows.data import load_dataset

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def describe_machine() -> str:
    """The machine as detected: accelerator (or CPU) model, cores, memory, JAX version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = ""
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    host = f"{os.cpu_count()}-core {cpu}{memory}"
    if jax.default_backend() == "cpu":
        return f"{host}, no accelerator, jax {jax.__version__}"
    return f"{jax.device_count()} × {jax.devices()[0].device_kind} on a {host} host, jax {jax.__version__}"


def values(runs: Sequence[Run], variant: Variant, metric: str) -> np.ndarray:
    return np.asarray([r.metrics[metric] for r in runs if r.variant == variant and metric in r.metrics])


def mean_std(xs: np.ndarray, fmt: str = "{:.3f}") -> str:
    """`mean ± std` (sample std, n-1) over finite values; notes how many were not finite."""
    xs = np.asarray(xs, np.float64)
    finite = xs[np.isfinite(xs)]
    if len(finite) == 0:
        return "n/a" if len(xs) == 0 else "non-finite"
    text = fmt.format(finite.mean())
    if len(finite) > 1:
        text += " ± " + fmt.format(finite.std(ddof=1))
    if len(finite) < len(xs):
        text += f" ({len(xs) - len(finite)} non-finite)"
    return text


def outcome_cells(runs: Sequence[Run], variant: Variant, epoch_fmt: str = "{:.2f}") -> list:
    """A variant's held-out bits/dim and time per epoch (mean ± std over seeds), parameters and
    skipped updates: the last columns of every comparison's table."""
    return [
        mean_std(values(runs, variant, "bpd")),
        mean_std(values(runs, variant, "epoch_s"), epoch_fmt),
        int(values(runs, variant, "params")[0]),
        int(values(runs, variant, "skipped").sum()),
    ]


def pooled_gap(better: np.ndarray, worse: np.ndarray) -> tuple[float, float | None]:
    """mean(worse) − mean(better), and that gap in pooled sample standard deviations (None when
    both spreads are zero)."""
    gap = float(np.mean(worse) - np.mean(better))
    spread = float(np.sqrt((np.var(better, ddof=1) + np.var(worse, ddof=1)) / 2))
    return gap, (gap / spread if spread > 0 else None)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def describe_config(base) -> str:
    return (
        f"base model {base.model}; {base.num_steps} steps of batch {base.batch_size}, "
        f"{base.optimizer} lr {base.learning_rate:g} (linear warm-up {base.warmup_steps}, then "
        f"{base.lr_decay}), "
        f"grad clip {base.grad_clip_norm}"
    )


def save_lines(directory: Path, name: str, lines: Sequence[str]) -> Path:
    """Write `lines` to `directory/name` (creating the directory), print them, return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


def git_commit() -> str:
    """The checkout's short commit hash ("unknown" outside a git checkout)."""
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return git.stdout.strip() or "unknown"


def run_facts(module: str, argv, wall_s: float) -> list[str]:
    """The first facts of a results page: the command as typed (`argv`; None: this process's), the
    date, the machine and the wall time."""
    cli = sys.argv[1:] if argv is None else list(argv)
    return [
        f"command: `python -m {module} {shlex.join(cli)}`",
        f"date: {datetime.date.today().isoformat()}; machine: {describe_machine()}; wall time {wall_s:.0f} s",
    ]


def save_page(directory: Path, name: str, title: str, facts: Sequence[str], *blocks: str) -> Path:
    """Write (and print) a results page `directory/name`: the title, `facts` as a list, then each
    block (a paragraph or a `markdown_table`) after a blank line."""
    lines = [f"# {title}", "", *(f"- {fact}" for fact in facts)]
    for block in blocks:
        lines += ["", block]
    return save_lines(directory, name, lines)


def write_markdown(
    path: Path,
    title: str,
    base,
    seeds: Sequence[int],
    table: str,
    notes: Sequence[str],
    command: str,
    wall_s: float,
    dataset_desc: str,
) -> Path:
    lines = [
        f"# {title}",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {describe_machine()}",
        f"- dataset: {dataset_desc}",
        f"- command: `{command}`",
        f"- setup: {describe_config(base)}; seeds {list(seeds)}",
        f"- wall time of the whole command: {wall_s:.0f} s",
        "",
        table,
        "",
        *[f"- {n}" for n in notes],
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def dataset_description(base) -> str:
    d = load_dataset(base.dataset, base.data_dir, base.n_bits)
    split = f"{len(d.train)} train / {len(d.held_out)} held-out"
    return f"{d.name} ({split}, {d.event_shape}, {d.num_bins} levels)"


def bar_plot(
    path: Path,
    runs: Sequence[Run],
    variants: Sequence[Variant],
    metric: str,
    ylabel: str,
    title: str,
    baseline: float | None = None,
) -> Path:
    """Mean ± std of `metric` per variant (non-finite runs left out), one bar per variant; or, when the
    variants carry an `x`, one line per group against x (log scale)."""

    def stats(v):
        xs = values(runs, v, metric)
        xs = xs[np.isfinite(xs)]
        sd = xs.std(ddof=1) if len(xs) > 1 else 0.0
        return (xs.mean() if len(xs) else np.nan), sd

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if all(v.x is not None for v in variants):
        groups = list(dict.fromkeys(v.group or v.name for v in variants))
        for g in groups:
            vs = [v for v in variants if (v.group or v.name) == g]
            m, s = zip(*(stats(v) for v in vs), strict=True)
            ax.errorbar([v.x for v in vs], m, yerr=s, marker="o", capsize=3, label=g)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.legend()
    else:
        m, s = zip(*(stats(v) for v in variants), strict=True)
        ax.bar(range(len(variants)), m, yerr=s, capsize=4, color="tab:blue")
        ax.set_xticks(range(len(variants)), [v.name for v in variants], rotation=15)
        finite = [a for a in m if np.isfinite(a)] + ([baseline] if baseline is not None else [])
        if finite:
            lo, hi = min(finite), max(finite)
            pad = max(0.05, (hi - lo) * 0.5)
            ax.set_ylim(lo - pad - max(s), hi + pad + max(s))
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label="per-pixel histogram")
        ax.legend()
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def command_line(module: str, argv=None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    return " ".join([".venv/bin/python", "-m", module, *map(shlex.quote, map(str, argv))])


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Save `fig` as `path` (creating its directory) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def density_sample_grid(rows: Sequence[dict], extent: float):
    """2D flows: a row of panels per density (rows' "density"), the training points (the row whose
    "flow" is "data": its "samples"), then each flow's "density_grid" (p(x) on a square grid over
    [−extent, extent]², rows the second coordinate) and its "samples"."""
    densities = list(dict.fromkeys(r["density"] for r in rows))
    flows = [r["flow"] for r in rows if r["density"] == densities[0] and r["flow"] != "data"]
    size = (len(densities), 1 + 2 * len(flows))
    fig, axes = plt.subplots(*size, figsize=(2.0 * size[1], 2.6 * size[0]), squeeze=False)
    for i, density in enumerate(densities):
        by_flow = {r["flow"]: r for r in rows if r["density"] == density}
        panels = [(f"{density}:\ndata", "k", by_flow["data"]["samples"])]
        for name in flows:
            row = by_flow[name]
            panels += [
                (f"{name}:\ndensity", None, row["density_grid"]),
                (f"{name}:\nsamples", "C0", row["samples"]),
            ]
        for ax, (label, colour, values) in zip(axes[i], panels, strict=True):
            if colour is None:
                ax.imshow(values, origin="lower", extent=(-extent, extent) * 2, cmap="viridis")
            else:  # points
                ax.scatter(values[:, 0], values[:, 1], s=0.5, c=colour)
            ax.set(xlim=(-extent, extent), ylim=(-extent, extent), xticks=[], yticks=[], aspect="equal")
            ax.set_title(label, fontsize=9)
    fig.tight_layout()
    return fig


def sample_blocks(draws: dict[float, np.ndarray]):
    """One square block of image samples (n, h, w, 1) per temperature, pixels clipped to [0, 1] and
    framed in white."""
    fig, axes = plt.subplots(1, len(draws), figsize=(3.2 * len(draws), 3.4), squeeze=False)
    for ax, (t, x) in zip(axes[0], draws.items(), strict=True):
        side = int(np.sqrt(len(x)))
        clipped = np.clip(x[: side * side, ..., 0], 0, 1)
        framed = np.pad(clipped, ((0, 0), (1, 1), (1, 1)), constant_values=1.0)
        h, w = framed.shape[1:]
        tiled = framed.reshape(side, side, h, w).transpose(0, 2, 1, 3).reshape(side * h, side * w)
        ax.imshow(tiled, cmap="gray", vmin=0, vmax=1)
        ax.set(xticks=[], yticks=[], title=f"T = {t:g}")
    fig.tight_layout()
    return fig
