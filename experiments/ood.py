"""Out-of-distribution study with a shipped Fashion-MNIST flow (Nalisnick et al. 2019; Kirichenko
et al. 2020; Serrà et al. 2020).

    .venv/bin/python -m experiments.ood --pretrained fashion_mnist_glow_long --out experiments/results

Scores the Fashion-MNIST test set and five sets the model never saw, all 28x28x1 with 256 levels:
scikit-learn's handwritten digits in MNIST's format, Fashion-MNIST flipped upside down, with
inverted intensities, uniform noise, and constant images. Per set: bits/dim (mean ± std, histogram,
AUROC as an OOD score), the per-layer log-det breakdown, and Serrà et al.'s input-complexity score
(bits/dim minus the PNG-compressed size in bits/dim) with its AUROC; saliency maps of the log-det
for one image in and one out of distribution.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.analysis import (
    auroc,
    bits_per_dim_per_example,
    log_det_breakdown,
    log_det_saliency,
    png_bits_per_dim,
)
from jaxflows.data import digits_in_mnist_format, fashion_mnist
from jaxflows.pretrained import card, load

IN_DISTRIBUTION = "fashion_mnist_test"


def datasets(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The in-distribution test images and the five out-of-distribution sets, `count` each."""
    rng = np.random.default_rng(seed)
    test = fashion_mnist().held_out.all()[:count]
    digit_pixels, _ = digits_in_mnist_format()
    levels = rng.integers(0, 256, (count, 1, 1, 1))
    return {
        IN_DISTRIBUTION: test,
        "sklearn_digits_mnist_format": digit_pixels[:count],
        "fashion_mnist_flipped": test[:, ::-1],
        "fashion_mnist_inverted": 255 - test,
        "uniform_noise": rng.integers(0, 256, test.shape).astype(np.uint8),
        "constant": np.broadcast_to(levels, test.shape).astype(np.uint8),
    }


def layer_group(path: str) -> str:
    """'level1/flow_steps/3/coupling' -> 'level1 coupling'; 'level1/split' -> 'level1 split prior';
    a TarFlow's 'blocks/1/reversed' (the second pair of its repeated natural/reversed blocks) ->
    'block 4 (reversed order)'."""
    if path == "base":
        return "base N(0, I)"
    tarflow_block = re.fullmatch(r"blocks/(\d+)/(natural|reversed)", path)
    if tarflow_block:
        pair, order = tarflow_block.groups()
        number = 2 * int(pair) + (1 if order == "natural" else 2)
        return f"block {number:2d} ({order} order)"
    if path == "last_block":
        return "last block (natural order)"
    if "/" not in path:  # a top-level layer: 'rescale', 'patchify'
        return path
    level = path.split("/")[0]
    kind = path.rsplit("/", 1)[-1]
    return f"{level} {'split prior' if kind == 'split' else kind}"


def breakdown_bits_per_dim(flow, variables, images: np.ndarray, batch: int = 250) -> dict[str, float]:
    """Mean contribution of each layer group to bits/dim: −term / (D ln 2) (negative = makes the
    images more likely); the groups and the dequantisation offset add up to the set's bits/dim."""
    num_dims = math.prod(flow.event_shape)
    terms = jax.jit(lambda v, x: log_det_breakdown(flow, v, x))
    totals: dict[str, float] = defaultdict(float)
    key = jax.random.key(0, impl="threefry2x32")
    for start in range(0, len(images), batch):
        pixels = jnp.asarray(images[start : start + batch], jnp.float32)
        noise = jax.random.uniform(jax.random.fold_in(key, start), pixels.shape)
        for path, value in terms(variables, (pixels + noise) / 256.0).items():
            totals[layer_group(path)] += float(jnp.sum(value))
    scale = -1.0 / (len(images) * num_dims * math.log(2.0))
    out = {group: value * scale for group, value in sorted(totals.items())}
    out["dequantisation offset (8 bits)"] = 8.0
    return out


def saliency_figure(flow, variables, images: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [IN_DISTRIBUTION, "sklearn_digits_mnist_format", "fashion_mnist_flipped"]
    fig, axes = plt.subplots(2, len(names), figsize=(3 * len(names), 6))
    for column, name in enumerate(names):
        x = jnp.asarray(images[name][:1], jnp.float32) / 256.0 + 0.5 / 256.0
        saliency = np.asarray(log_det_saliency(flow, variables, x))[0]
        axes[0, column].imshow(images[name][0, ..., 0], cmap="gray", vmin=0, vmax=255)
        axes[0, column].set_title(name.replace("_", " "), fontsize=8)
        axes[1, column].imshow(saliency, cmap="magma")
        axes[1, column].set_title("|d log|det J| / dx|", fontsize=8)
        for ax in axes[:, column]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def histogram_figure(scores: dict[str, np.ndarray], xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    finite = np.concatenate([s[np.isfinite(s)] for s in scores.values()])
    bins = np.linspace(np.percentile(finite, 0.5), np.percentile(finite, 99.5), 80)
    for name, values in scores.items():
        ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins, alpha=0.5, density=True, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(name: str, count: int, out: Path) -> dict:
    flow, variables = load(name)
    model = card(name)
    images = datasets(count)
    start = time.perf_counter()
    bpd = {k: bits_per_dim_per_example(flow, variables, v, bins=model.bins) for k, v in images.items()}
    complexity = {k: png_bits_per_dim(v) for k, v in images.items()}
    corrected = {k: bpd[k] - complexity[k] for k in images}  # complexity_corrected, reusing L(x)
    results = {
        "model": name,
        "count": count,
        "sets": {
            k: {
                "bits_per_dim_mean": float(bpd[k].mean()),
                "bits_per_dim_std": float(bpd[k].std()),
                "png_bits_per_dim_mean": float(complexity[k].mean()),
                "complexity_score_mean": float(corrected[k].mean()),
                "auroc_bits_per_dim": None if k == IN_DISTRIBUTION else auroc(bpd[IN_DISTRIBUTION], bpd[k]),
                "auroc_complexity": None
                if k == IN_DISTRIBUTION
                else auroc(corrected[IN_DISTRIBUTION], corrected[k]),
                "breakdown_bits_per_dim": breakdown_bits_per_dim(flow, variables, images[k]),
            }
            for k in images
        },
    }
    results["seconds"] = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    histogram_figure(bpd, "bits/dim under the Fashion-MNIST flow", out / "ood_bits_per_dim.png")
    histogram_figure(corrected, "bits/dim − PNG bits/dim (Serrà et al.)", out / "ood_complexity.png")
    saliency_figure(flow, variables, images, out / "ood_saliency.png")
    (out / "ood_fashion_mnist.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pretrained", default="fashion_mnist_glow_long", help="a shipped model or a card path"
    )
    parser.add_argument("--count", type=int, default=1000, help="images per set")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = parser.parse_args()
    results = run(args.pretrained, args.count, args.out)
    for name, row in results["sets"].items():
        aurocs = f"AUROC {row['auroc_bits_per_dim']}, complexity AUROC {row['auroc_complexity']}"
        print(f"{name:32s} {row['bits_per_dim_mean']:.3f} ± {row['bits_per_dim_std']:.3f}  {aurocs}")
    print(re.sub(r"\s+", " ", json.dumps({"seconds": results["seconds"]})))


if __name__ == "__main__":
    main()
