"""Glow vs MEF vs Emerging at roughly equal parameter budget, with a sample grid for each.

    .venv/bin/python -m experiments.compare_models [--config PATH] [--set num_steps=N] [--seeds S]

Glow (LU 1x1 conv, affine coupling) keeps the base config's hidden width; MEF (matrix-exponential
conv and coupling) and Emerging (3x3 emerging conv, affine coupling) get the hidden width whose
parameter count is closest to Glow's. Writes compare_models.md, compare_models.png and
compare_models_samples_<model>.png.
"""

from __future__ import annotations

import numpy as np

from experiments import compare as cmp
from experiments import report

MODULE = "experiments.compare_models"
MODELS = {
    "Glow": {"conv": "lu", "coupling": "affine", "conv_kwargs": {}, "coupling_kwargs": {}},
    "MEF": {
        "conv": "matrix_exp",
        "coupling": "matrix_exp",
        "mask": "channel",
        "conv_kwargs": {"init_scale": 0.1},
        "coupling_kwargs": {},
    },
    "Emerging": {
        "conv": "emerging",
        "coupling": "affine",
        "conv_kwargs": {"kernel_size": 3},
        "coupling_kwargs": {},
    },
}


def match_hidden(base, model: dict, target: int) -> tuple[int, int]:
    """The hidden width (multiple of 4) whose parameter count is closest to `target`: the count is
    quadratic in the width, so fit it through three widths and check the rounded solutions."""
    h0 = int(base.model["hidden"])
    count = lambda h: cmp.param_count(base.replace(model={**base.model, **model, "hidden": h}))
    hs = [max(4, h0 // 2), h0, 2 * h0]
    a, b, c = np.polyfit(hs, [count(h) for h in hs], 2)
    roots = [r.real for r in np.roots([a, b, c - target]) if abs(r.imag) < 1e-9 and r.real > 0]
    guess = roots[0] if roots else h0
    candidates = {max(4, 4 * int(np.floor(guess / 4))), max(4, 4 * int(np.ceil(guess / 4)))}
    return min(((h, count(h)) for h in candidates), key=lambda hc: abs(hc[1] - target))


def main(argv=None) -> dict:
    c = cmp.begin(MODULE, __doc__, argv, default_seeds=2)
    c.base, level_note = cmp.fit_kernel(c.base, 3)
    glow_hidden = int(c.base.model["hidden"])
    target = cmp.param_count(c.base.replace(model={**c.base.model, **MODELS["Glow"], "hidden": glow_hidden}))
    variants = []
    for name, model in MODELS.items():
        hidden = glow_hidden if name == "Glow" else match_hidden(c.base, model, target)[0]
        variants.append(cmp.Variant(name, {**model, "hidden": hidden}))
    variants = cmp.select(variants, c.args.only)
    grid = lambda v: c.args.out / f"compare_models_samples_{v.name.lower()}.png"
    runs = c.run(variants, samples_to=grid)
    rows = []
    for v in variants:
        params = int(report.values(runs, v, "params")[0])
        rows.append(
            [
                v.name,
                v.model["conv"],
                v.model["coupling"],
                v.model["hidden"],
                f"{params} ({100 * (params / target - 1):+.1f}%)",
                report.mean_std(report.values(runs, v, "bpd")),
                report.mean_std(report.values(runs, v, "step_s") * 1e3, "{:.1f}"),
                f"[{grid(v).name}]({grid(v).name})",
            ]
        )
    header = [
        "model",
        "conv",
        "coupling",
        "hidden",
        "params (vs Glow)",
        "held-out bits/dim",
        "train ms / step",
        "samples",
    ]
    notes = [
        *([level_note] if level_note else []),
        "Same multi-scale skeleton (levels and steps of the base config); the hidden width of MEF and "
        "Emerging is chosen (multiple of 4) to bring their parameter count closest to Glow's.",
        f"Sample grids: first seed, one row per temperature ({c.base.sample_temperatures}).",
    ]
    result = c.report(
        "compare_models",
        "Glow vs MEF vs Emerging at equal parameter budget",
        "models at equal parameter budget (mean ± std over seeds)",
        runs,
        variants,
        header,
        rows,
        notes,
    )
    return {**result, "samples": [grid(v) for v in variants]}


if __name__ == "__main__":
    main()
