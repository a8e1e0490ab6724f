"""Glow's permutation ablation (Kingma & Dhariwal 2018, Fig. 3): reverse, shuffle and the learned
1x1 convolution (LU) as the channel mixer, each with additive and with affine couplings.

    .venv/bin/python -m experiments.compare_permutations --config experiments/configs/default.py \\
        --set num_steps=6000 train_time_limit_s=None dataset=fashion_mnist --seeds 3

Held-out bits/dim (mean ± std over seeds), seconds per epoch, and the training curves (bits/dim
against epochs, mean over seeds) overlaid per coupling, as the paper's Figure 3 plots them. The
paper's ordering is 1x1 convolution < shuffle < reverse. Writes compare_permutations.md, .png and
compare_permutations_curves.png.
"""

from __future__ import annotations

import json

import numpy as np

from experiments import compare as cmp
from experiments import report

MODULE = "experiments.compare_permutations"
MIXERS = {"reverse": "reverse", "shuffle": "shuffle", "1x1 conv (LU)": "lu"}
COUPLINGS = ("additive", "affine")


def variants() -> list[cmp.Variant]:
    return [
        cmp.Variant(
            f"{coupling} + {name}",
            {"conv": conv, "coupling": coupling, "conv_kwargs": {}},
            group=coupling,
            x=name,
        )
        for coupling in COUPLINGS
        for name, conv in MIXERS.items()
    ]


def ordering_note(runs, vs) -> list[str]:
    """Whether 1x1 < shuffle < reverse holds per coupling, and each gap in pooled standard deviations."""
    notes = []
    for coupling in COUPLINGS:
        bpd = {v.x: report.values(runs, v, "bpd") for v in vs if v.group == coupling}
        if set(bpd) != set(MIXERS):
            continue
        means = {k: float(np.mean(b)) for k, b in bpd.items()}
        gaps = []
        for better, worse in (("1x1 conv (LU)", "shuffle"), ("shuffle", "reverse")):
            gap, in_stds = report.pooled_gap(bpd[better], bpd[worse])
            sds = f" ({in_stds:+.1f} pooled std)" if in_stds is not None else ""
            gaps.append(f"{worse} − {better} = {gap:+.3f}{sds}")
        holds = means["1x1 conv (LU)"] < means["shuffle"] < means["reverse"]
        best = min(means, key=means.get)
        verdict = ("holds" if holds else "does not hold") + f" (lowest: {best})"
        gaps_text = "; ".join(gaps)
        notes.append(f"{coupling}: the paper's ordering 1x1 < shuffle < reverse {verdict}; {gaps_text}.")
    return notes


def curves_plot(path, runs, vs, examples_per_epoch: float) -> None:
    """Training bits/dim against epochs per coupling: for each mixer the median over seeds, then a
    running median over 9 logged points (a few loss spikes of 10⁶ bits/dim, skipped updates or
    recovered within a hundred steps, would otherwise fill the axis); the raw curves go to a JSON
    file beside the plot."""
    fig, axes = report.plt.subplots(1, len(COUPLINGS), figsize=(11, 4), sharey=True)
    shown = []
    raw = {}
    for ax, coupling in zip(np.atleast_1d(axes), COUPLINGS, strict=True):
        for v in (v for v in vs if v.group == coupling):
            mine = [r.metrics["curve"] for r in runs if r.variant == v]
            if not mine:
                continue
            raw[v.name] = [list(map(list, curve)) for curve in mine]
            steps = np.asarray([s for s, _ in mine[0]], float)
            median = np.median([[b for _, b in curve] for curve in mine], axis=0)
            window = 9
            padded = np.pad(median, window // 2, mode="edge")
            smooth = np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=-1)
            shown.append(smooth)
            ax.plot(steps / examples_per_epoch, smooth, label=v.x)
        ax.set_title(f"{coupling} coupling")
        ax.set_xlabel("epochs")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    if shown:
        values = np.concatenate(shown)
        ax.set_ylim(values.min() - 0.1, np.percentile(values, 97) + 0.3)
    np.atleast_1d(axes)[0].set_ylabel("training bits/dim (median over seeds, running median)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    report.plt.close(fig)
    record = {"examples_per_epoch": examples_per_epoch, "curves": raw}
    path.with_suffix(".json").write_text(json.dumps(record))


def main(argv=None) -> dict:
    c = cmp.begin(MODULE, __doc__, argv)
    vs = cmp.select(variants(), c.args.only)
    runs = c.run(vs)
    rows = [[v.group, v.x, *report.outcome_cells(runs, v)] for v in vs]
    header = ["coupling", "channel mixer", "held-out bits/dim", "time / epoch (s)", "params", "skipped"]
    first = runs[0].metrics
    examples_per_epoch = first["epoch_s"] / first["step_s"]  # training examples / batch size
    curves_plot(c.args.out / "compare_permutations_curves.png", runs, vs, examples_per_epoch)
    notes = [
        *ordering_note(runs, vs),
        "Same Glow in every row (actnorm, channel mixer, coupling per step); the permutations have no "
        "parameters, so their rows have fewer.",
        "Training curves: compare_permutations_curves.png (bits/dim of the training batches against "
        "epochs; raw per-seed curves in compare_permutations_curves.json).",
        "time / epoch = wall time per training step after the first (compiling) one × (training examples "
        "/ batch size), mean ± std over seeds; measured with other work sharing the 2 cores at times, "
        "so only roughly comparable between rows.",
    ]
    return c.report(
        "compare_permutations",
        "Permutations against the 1x1 convolution (Glow Fig. 3, small scale)",
        "channel mixer × coupling (mean ± std over seeds)",
        runs,
        vs,
        header,
        rows,
        notes,
    )


if __name__ == "__main__":
    main()
