"""Metrics sinks: CSV, TensorBoard event files and a PNG plot of the training curve."""

from __future__ import annotations

import csv
from pathlib import Path

FIELDS = ["step", "loss", "bits_per_dim", "images_per_sec", "learning_rate", "grad_norm", "skipped_updates",
          "eval_bits_per_dim"]  # fmt: skip


class MetricsWriter:
    """Appends rows to `workdir/metrics.csv` and scalars to `workdir/tensorboard/`."""

    def __init__(self, workdir: Path, enabled: bool = True):
        self.enabled = enabled
        self.csv_path = Path(workdir) / "metrics.csv"
        self.tensorboard = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        new = not self.csv_path.exists()
        self.csv_file = self.csv_path.open("a", newline="")
        self.csv = csv.DictWriter(self.csv_file, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            self.csv.writeheader()
        self.tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.csv.writerow({"step": step, **metrics})
        self.csv_file.flush()
        for name, value in metrics.items():
            self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self.csv_file.close()
            self.tensorboard.close()


def read_metrics(workdir: Path) -> list[dict[str, float]]:
    path = Path(workdir) / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def plot_training_curve(workdir: Path, baseline_bits_per_dim: float | None = None) -> Path:
    """PNG of training bits/dim (and held-out bits/dim, baseline) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(workdir)
    fig, ax = plt.subplots(figsize=(6, 4))
    train = [(r["step"], r["bits_per_dim"]) for r in rows if "bits_per_dim" in r]
    held_out = [(r["step"], r["eval_bits_per_dim"]) for r in rows if "eval_bits_per_dim" in r]
    if train:
        ax.plot(*zip(*train, strict=True), label="train (dequantised batches)")
    if held_out:
        ax.plot(*zip(*held_out, strict=True), "o-", label="held-out")
    if baseline_bits_per_dim is not None:
        ax.axhline(baseline_bits_per_dim, color="grey", ls="--", label="per-pixel histogram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.legend()
    ax.grid(alpha=0.3)
    path = Path(workdir) / "training_curve.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
