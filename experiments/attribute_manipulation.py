"""Latent attribute manipulation with a trained flow (Glow Sec 5, Fig. 5; the flow lecture's demo).

    python -m experiments.attribute_manipulation --workdir runs/main_job \\
        --without 0 --with 2 --out experiments/results/attribute_tshirt_to_pullover.png

The attribute is a class of a labelled dataset: its direction is the mean latent of `--examples`
training images of class `--with` minus that of class `--without`
(`jaxflows.analysis.attribute_direction`). Each row of the grid is a held-out image of class
`--without`, and each column f⁻¹(f(x) + α · direction) for one α of `--alphas`
(`jaxflows.train.sampling.attribute_grid`). Uses the workdir's saved config and latest checkpoint
(averaged parameters when it has them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True, help="a trained run (its checkpoints)")
    parser.add_argument("--without", type=int, required=True, help="class without the attribute (the rows)")
    parser.add_argument("--with", dest="with_", type=int, required=True, help="class with the attribute")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1,1.25", help="comma-separated α")
    parser.add_argument("--examples", type=int, default=1000, help="training images per class for the means")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from jaxflows import train as jft
    from jaxflows.train import attribute_grid

    config = jft.load_workdir_config(args.workdir)
    jft.apply_process_settings(config)
    exp, state = jft.restore_for_inference(config, args.workdir)
    data = exp.dataset
    if data.num_classes is None:
        raise SystemExit(f"{data.name} has no labels: the attribute is a class")

    def of_class(source, label: int, count: int) -> np.ndarray:
        labels = source.labels(np.arange(len(source)))
        index = np.flatnonzero(labels == label)[:count]
        if not len(index):
            raise SystemExit(f"no images of class {label} in {data.name}")
        return source[index]

    alphas = [float(a) for a in args.alphas.split(",")]
    image = attribute_grid(
        exp.flow,
        state.variables(averaged=True),
        of_class(data.held_out, args.without, args.rows),
        of_class(data.train, args.with_, args.examples),
        of_class(data.train, args.without, args.examples),
        alphas,
        data.num_bins,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    names = data.class_names or [str(c) for c in range(data.num_classes)]
    with_name, without_name = names[args.with_], names[args.without]
    print(
        f"{data.name}: direction '{with_name}' minus '{without_name}' from {args.examples} training "
        f"images each; rows: held-out '{without_name}'; α = {alphas}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
