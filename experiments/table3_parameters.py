"""MEF Table 3: parameter counts of the Glow, Emerging and MEF configurations, by layer family.

    python -m experiments.table3_parameters [--out experiments/results]

Counts the parameters of `experiments/configs/{glow,emerging,mef}_cifar10.py` on 32×32×3 images
(shape evaluation only: nothing is initialised or compiled), split into coupling networks,
invertible convolutions, ActNorm and priors, and the Fashion-MNIST (28×28×1) versions of the
models the comparisons train. Writes table3_parameters.md.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from pathlib import Path

CONFIGS = {
    "Glow": "experiments/configs/glow_cifar10.py",
    "Emerging": "experiments/configs/emerging_cifar10.py",
    "MEF": "experiments/configs/mef_cifar10.py",
}
FAMILIES = (  # first matching path segment wins
    ("coupling network", ("network",)),
    ("coupling bounds (MEF)", ("bound",)),
    ("invertible conv", ("conv", "invconv")),
    ("ActNorm", ("actnorm",)),
    ("priors", ("prior", "split")),
)


def family(path: tuple[str, ...]) -> str:
    for name, keys in FAMILIES:
        if any(segment.startswith(key) for segment in path for key in keys):
            return name
    return "other"


def count_by_family(model: dict, image_shape: tuple[int, int, int]) -> Counter:
    import jax
    import jax.numpy as jnp

    from jaxflows.models import glow

    flow = glow(image_shape, **model)
    shapes = jax.eval_shape(flow.init, jax.random.key(0), jnp.zeros((1, *image_shape)))["params"]
    counts: Counter = Counter()
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        counts[family(keys)] += math.prod(leaf.shape)
    return counts


def table(rows: dict[str, Counter]) -> str:
    from experiments.report import markdown_table

    columns = [name for name, _ in FAMILIES if any(c[name] for c in rows.values())]
    cells = []
    for name, counts in rows.items():
        total = sum(counts.values())
        cells.append([name, f"**{total:,}** ({total / 1e6:.2f} M)", *(f"{counts[c]:,}" for c in columns)])
    return markdown_table(["model", "total", *columns], cells)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = parser.parse_args(argv)
    from experiments.report import describe_machine, save_page
    from jaxflows.train import load_config

    start = time.perf_counter()
    cifar, models = {}, {}
    for name, path in CONFIGS.items():
        model = load_config(path).model
        models[name] = model
        cifar[name] = count_by_family(model, (32, 32, 3))
    official = {**models["MEF"], "hidden": 128, "depth": 8}
    cifar["MEF, 128 hidden, K = 8 (the official width)"] = count_by_family(official, (32, 32, 3))
    small = {name: {**m, "levels": 2, "depth": 4, "hidden": 64} for name, m in models.items()}
    # the official code: K = 8, 4, 2 steps per level, 8 residual blocks of 128 channels per network
    fashion = {name: count_by_family(m, (28, 28, 1)) for name, m in small.items()}
    return save_page(
        args.out,
        "table3_parameters.md",
        "MEF Table 3: number of parameters",
        [
            f"command: `python -m experiments.table3_parameters`; {time.strftime('%Y-%m-%d')}; "
            f"{describe_machine()}; {time.perf_counter() - start:.1f} s (shape evaluation only)"
        ],
        "CIFAR-10 (32×32×3) configurations of `experiments/configs/*_cifar10.py` (L = 3, K = 32, "
        "512 hidden channels; Glow: LU 1x1 conv and affine coupling; Emerging: 3×3 emerging conv and "
        "affine coupling; MEF: matrix-exp 1x1 conv and matrix-exp coupling with full S per pixel):",
        table(cifar),
        "The same families at the Fashion-MNIST size of the comparisons (28×28×1, L = 2, K = 4, "
        "64 hidden channels):",
        table(fashion),
        "How this compares with the paper: MEF's Table 3 reports MEF with fewer parameters than Glow "
        "and Emerging because its coupling networks (8 residual blocks of 128 channels) are narrower "
        "than Glow's 512-channel networks. Here all models share Glow's coupling network, so the "
        "counts differ by the coupling's output layer (MEF's full S predicts c + c² values per pixel "
        "instead of 2c: at c = 24 that is 600 output channels of a 3×3 conv from 512) and the "
        "convolutions (an emerging 3×3 conv has 2·9·c² weights, a 1x1 conv c²): at equal width MEF "
        "has *more* parameters than Glow, and only at the official width of 128 does it have fewer. "
        "The paper's own figures are not in the notes available to this project, so they are not "
        "reproduced here.",
    )


if __name__ == "__main__":
    main()
