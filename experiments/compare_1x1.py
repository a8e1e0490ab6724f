"""1x1 convolutions in the same Glow (MEF paper, Table 5): plain, LU, QR and matrix-exponential.

    .venv/bin/python -m experiments.compare_1x1 [--config PATH] [--set num_steps=N] [--seeds S]

Held-out bits/dim and wall time per epoch (per pass over the training split, after compilation),
mean ± std over seeds. Writes compare_1x1.md and compare_1x1.png.
"""

from __future__ import annotations

from experiments import compare as cmp
from experiments import report
from jaxflows.models import CONVS

MODULE = "experiments.compare_1x1"
CONV_KWARGS = {"plain": {}, "lu": {}, "qr": {}, "matrix_exp": {"init_scale": 0.1}}  # registry names
VARIANTS = [
    cmp.Variant(CONVS.label(conv), {"conv": conv, "conv_kwargs": kwargs})
    for conv, kwargs in CONV_KWARGS.items()
]


def main(argv=None) -> dict:
    c = cmp.begin(MODULE, __doc__, argv)
    variants = cmp.select(VARIANTS, c.args.only)
    runs = c.run(variants)
    rows = [
        [
            v.name,
            report.mean_std(report.values(runs, v, "bpd")),
            report.mean_std(report.values(runs, v, "epoch_s"), "{:.2f}"),
            report.mean_std(report.values(runs, v, "step_s") * 1e3, "{:.1f}"),
            int(report.values(runs, v, "params")[0]),
            int(report.values(runs, v, "skipped").sum()),
        ]
        for v in variants
    ]
    header = ["1x1 conv", "held-out bits/dim", "time / epoch (s)", "ms / step", "params", "skipped updates"]
    notes = [
        "Every row is the same Glow (actnorm, 1x1 conv, affine coupling per step); only the conv differs.",
        "time / epoch = wall time per training step, measured after the first (compiling) step, × "
        "(training examples / batch size); mean ± std over seeds (sample std).",
    ]
    return c.report(
        "compare_1x1",
        "1x1 convolutions (MEF Table 5, small scale)",
        "1x1 convolutions (mean ± std over seeds)",
        runs,
        variants,
        header,
        rows,
        notes,
    )


if __name__ == "__main__":
    main()
