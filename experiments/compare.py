"""Shared machinery of the paper-comparison entries (issue 6): run a grid of variants × seeds, collect
metrics, write a markdown table and a PNG plot under experiments/results/.

The entries are thin modules that list their variants and metrics:

    python -m experiments.compare_1x1        # MEF Table 5: plain / LU / QR / matrix-exp 1x1 convs
    python -m experiments.compare_coupling   # MEF Table 4: couplings × learning rates, divergence
    python -m experiments.compare_convs      # Emerging: 1x1 vs emerging 3x3 vs periodic
    python -m experiments.compare_models     # Glow vs MEF vs Emerging at equal parameter budget

Each accepts --config PATH (a TrainConfig file: the variants override its `model` entries and, for the
coupling sweep, its learning rate), --steps, --seeds and --out. Without --config they use SMALL_CONFIG,
sized for scikit-learn's 8x8 digits on a 2-core CPU.

Runs use a lean loop over the library's pieces (`setup`, `compiled_train_step`, `BatchIterator`,
`evaluate_bits_per_dim`) rather than `train()`: no checkpoints, no per-level diagnostics, and one
initialisation compile per architecture (the seed is a traced argument), which matters when every
compile costs tens of seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).parent / "results"


def describe_machine() -> str:
    """The machine as detected: accelerator (or CPU) model, cores, memory, JAX version."""
    import os
    import platform

    import jax

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


def small_config():
    """The default base config: a small Glow on 8x8 digits (17 levels); the entries override `model`."""
    from jaxflows.train.config import TrainConfig

    return TrainConfig(
        dataset="digits",
        model={"levels": 2, "steps": 2, "hidden": 32, "conv": "lu", "coupling": "affine"},
        batch_size=64,
        eval_batch_size=512,
        optimizer="adam",
        learning_rate=1e-3,
        warmup_steps=50,
        num_steps=800,
        init_batch_size=512,
        eval_every=0,
        sample_temperatures=(0.7, 1.0),
        samples_per_temperature=8,
        prng_impl="rbg",
    )


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of a comparison: a name and the changes to the base config (`model` is merged)."""

    name: str
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    group: str = ""  # for plots with several series (e.g. the coupling); defaults to name
    x: Any = None  # the x value within a group (e.g. the learning rate)

    def apply(self, base):
        return base.replace(model={**base.model, **self.model}, **self.config)


@dataclasses.dataclass
class Run:
    variant: Variant
    seed: int
    metrics: dict[str, float]


# ---------------------------------------------------------------------------------------------- runs


def count_params(params) -> int:
    import jax

    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def param_count(config) -> int:
    """Parameters of the flow `config` describes, without compiling (shape evaluation only)."""
    import jax

    from jaxflows.train import init_fn, setup

    exp = setup(config)
    return count_params(jax.eval_shape(init_fn(exp), exp.init_pixels).params)


def _init_state(exp, seed: int):
    """The library's `init_state` with the seed traced, so each architecture compiles it once."""
    import jax
    import jax.numpy as jnp

    from jaxflows.train.optim import make_optimizer
    from jaxflows.train.steps import cached, init_state, replicated

    c = exp.config
    optimizer = make_optimizer(c)
    # the optimiser's initial state does not depend on the learning rate, so a sweep shares this compile
    key = ("compare-init", exp.flow, c.optimizer, c.grad_clip_norm is None, exp.dataset.num_bins, exp.mesh)
    build = lambda: jax.jit(
        lambda pixels, s: init_state(exp.flow, optimizer, pixels, exp.dataset.num_bins, s),
        out_shardings=replicated(exp.mesh),
    )
    return cached(key, build)(exp.init_pixels, jnp.int32(seed))


def sampling_time(exp, variables, batch: int = 64, repeats: int = 3) -> float:
    """Seconds for one jitted inverse (latent -> image) of a batch, after compilation (best of repeats)."""
    import jax

    inverse = jax.jit(lambda v, z: exp.flow.apply(v, z, method="inverse")[0])
    z = jax.random.normal(jax.random.PRNGKey(1), (batch, *exp.flow.event_shape))
    jax.block_until_ready(inverse(variables, z))
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(inverse(variables, z))
        best = min(best, time.perf_counter() - t)
    return best


def run_one(config, *, sample_time: bool = False, samples_to: Path | None = None) -> dict[str, float]:
    """Train `config` from scratch and evaluate on the held-out split. Metrics:

    bpd (held-out bits/dim), baseline_bpd, params, step_s and epoch_s (wall time per update and per pass
    over the training split, measured after the first, compiling, step), final_loss, max_loss_finite
    (1 if every logged training loss was finite), skipped (non-finite updates skipped by the optimiser),
    compile_s (first step, including compilation), and optionally sample_s.
    """
    import jax

    from jaxflows.data import BatchIterator
    from jaxflows.train import compiled_train_step, setup
    from jaxflows.train.evaluate import evaluate_bits_per_dim, pixel_baseline_bits_per_dim
    from jaxflows.train.sampling import sample_grid
    from jaxflows.train.steps import global_batch

    exp = setup(config)
    data, bins = exp.dataset, exp.dataset.num_bins
    state = _init_state(exp, config.seed)
    train_step = compiled_train_step(exp)
    batches = BatchIterator(data.train, config.batch_size, bins, config.seed, 0, prefetch=config.prefetch)
    losses, t_first, t_start = [], 0.0, time.perf_counter()
    for step, pixels in batches:
        state, metrics = train_step(state, global_batch(pixels, exp.mesh))
        losses.append(metrics["loss"])
        if step == 0:
            jax.block_until_ready(state)
            t_first = time.perf_counter()
        if step + 1 >= config.num_steps:
            break
    jax.block_until_ready(state)
    t_end = time.perf_counter()
    losses = np.asarray(jax.device_get(losses), np.float64)
    step_s = (t_end - t_first) / max(config.num_steps - 1, 1)
    variables = state.variables()
    out = {
        "bpd": evaluate_bits_per_dim(
            exp.flow, variables, data.test, bins, exp.mesh, config.eval_batch_size, 1, config.seed
        ),
        "baseline_bpd": pixel_baseline_bits_per_dim(data.train, data.test, bins, config.baseline_smoothing),
        "params": count_params(state.params),
        "step_s": step_s,
        "epoch_s": step_s * len(data.train) / config.batch_size,
        "compile_s": t_first - t_start,
        "final_loss": float(np.mean(losses[-min(20, len(losses)) :])),
        "all_losses_finite": float(np.all(np.isfinite(losses))),
        "skipped": int(state.opt_state.skipped),
    }
    if sample_time:
        out["sample_s"] = sampling_time(exp, variables)
    if samples_to is not None:
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
        image, _ = sample_grid(
            exp.flow, variables, key, bins, config.sample_temperatures, config.samples_per_temperature
        )
        samples_to.parent.mkdir(parents=True, exist_ok=True)
        image.save(samples_to)
    return out


def run_grid(
    base,
    variants: Sequence[Variant],
    seeds: Sequence[int],
    *,
    sample_time: bool = False,
    samples_to: Callable[[Variant], Path] | None = None,
    log: Callable[[str], Any] = print,
) -> list[Run]:
    """Every variant × seed; variants outer so that each architecture's compiled step is reused."""
    runs = []
    for v in variants:
        for seed in seeds:
            t = time.perf_counter()
            config = v.apply(base).replace(seed=seed)
            grid_path = samples_to(v) if samples_to is not None and seed == seeds[0] else None
            metrics = run_one(config, sample_time=sample_time and seed == seeds[0], samples_to=grid_path)
            runs.append(Run(v, seed, metrics))
            log(
                f"{v.name:>24s} seed {seed}: bpd {metrics['bpd']:.4f}, skipped {metrics['skipped']}, "
                f"{metrics['step_s'] * 1e3:.1f} ms/step ({time.perf_counter() - t:.1f} s)"
            )
    return runs


# ------------------------------------------------------------------------------------------- summary


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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def describe_config(base) -> str:
    return (
        f"base model {base.model}; {base.num_steps} steps of batch {base.batch_size}, "
        f"{base.optimizer} lr {base.learning_rate:g} (linear warm-up {base.warmup_steps}), "
        f"grad clip {base.grad_clip_norm}"
    )


def write_markdown(
    path: Path, title: str, base, seeds: Sequence[int], table: str, notes: Sequence[str], command: str,
    wall_s: float, dataset_desc: str,
) -> Path:  # fmt: skip
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
    from jaxflows.data import load_dataset

    d = load_dataset(base.dataset, base.data_dir, base.n_bits)
    return f"{d.name} ({len(d.train)} train / {len(d.test)} held-out, {d.image_shape}, {d.num_bins} levels)"


def fit_kernel(base, kernel_size: int) -> tuple[Any, str | None]:
    """Drop multi-scale levels until the smallest level is at least `kernel_size` pixels wide (a k×k
    emerging conv needs that), keeping the total number of flow steps; returns the config and a note."""
    from jaxflows.data import load_dataset

    height = min(load_dataset(base.dataset, base.data_dir, base.n_bits).image_shape[:2])
    levels = old_levels = int(base.model.get("levels", 3))
    steps = int(base.model.get("steps", 32))
    while levels > 1 and height // 2**levels < kernel_size:
        levels -= 1
    if levels == old_levels:
        return base, None
    model = {**base.model, "levels": levels, "steps": steps * old_levels // levels}
    note = (
        f"The base model's {old_levels} levels would shrink the {height}-pixel image below the "
        f"{kernel_size}x{kernel_size} kernel, so every model here uses {levels} level(s) of "
        f"{model['steps']} steps (the same total number of flow steps)."
    )
    return base.replace(model=model), note


def bar_plot(path: Path, runs: Sequence[Run], variants: Sequence[Variant], metric: str, ylabel: str,
             title: str, baseline: float | None = None) -> Path:  # fmt: skip
    """Mean ± std of `metric` per variant (non-finite runs left out), one bar per variant; or, when the
    variants carry an `x`, one line per group against x (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


# ------------------------------------------------------------------------------------------- CLI


@dataclasses.dataclass
class Comparison:
    """One entry's command-line run: arguments, base config and seeds, and where its report goes."""

    module: str
    argv: Any
    args: argparse.Namespace
    base: Any
    seeds: list[int]
    start: float

    def run(self, variants: Sequence[Variant], **kwargs: Any) -> list[Run]:
        """`run_grid` over this comparison's base config and seeds (quiet with --quiet)."""
        log = (lambda *a: None) if self.args.quiet else print
        return run_grid(self.base, variants, self.seeds, log=log, **kwargs)

    def report(
        self, name: str, title: str, plot_title: str, runs: Sequence[Run], variants: Sequence[Variant],
        header: Sequence[str], rows, notes: Sequence[str],
    ) -> dict[str, Any]:  # fmt: skip
        """Write `<name>.png` (held-out bits/dim per variant) and `<name>.md` (table, notes with the
        per-pixel baseline appended, command, wall time) under --out, print the markdown, return paths."""
        baseline = float(runs[0].metrics["baseline_bpd"])
        notes = [*notes, f"Per-pixel histogram baseline on the same held-out split: {baseline:.3f} bits/dim."]
        plot, out = self.args.out / f"{name}.png", self.args.out / f"{name}.md"
        bar_plot(plot, runs, variants, "bpd", "held-out bits/dim", plot_title, baseline)
        write_markdown(out, title, self.base, self.seeds, markdown_table(header, rows), notes,
                       command_line(self.module, self.argv), time.perf_counter() - self.start,
                       dataset_description(self.base))  # fmt: skip
        print(out.read_text())
        return {"runs": runs, "markdown": out, "plot": plot}


def begin(
    module: str, description: str, argv=None, default_seeds: int = 3, default_steps: int | None = None
) -> Comparison:
    """Parse an entry's command line and build its base config (which also sets the PRNG)."""
    start = time.perf_counter()
    args = parse_args(description, argv, default_seeds)
    base = base_config(args, default_steps)
    return Comparison(module, argv, args, base, list(range(args.seeds)), start)


def parse_args(description: str, argv=None, default_seeds: int = 3) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, default=None, help="TrainConfig file (default: small digits)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--seeds", type=int, default=default_seeds, help="number of seeds (0, 1, …)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the .md and .png")
    parser.add_argument("--only", default=None, help="comma-separated variant names to run (default: all)")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def select(variants: Sequence[Variant], only: str | None) -> list[Variant]:
    """The variants named in `only` (comma-separated; None: all), in their original order."""
    if only is None:
        return list(variants)
    names = [n.strip() for n in only.split(",")]
    unknown = sorted(set(names) - {v.name for v in variants})
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; expected names from {[v.name for v in variants]}")
    return [v for v in variants if v.name in names]


def base_config(args: argparse.Namespace, default_steps: int | None = None):
    """The base config (file or SMALL) with --steps; sets the PRNG implementation before any JAX work."""
    import jax

    from jaxflows.train import load_config

    config = load_config(args.config) if args.config is not None else small_config()
    if args.config is None and default_steps is not None:
        config = config.replace(num_steps=default_steps)
    if args.steps is not None:
        config = config.replace(num_steps=args.steps)
    jax.config.update("jax_default_prng_impl", config.prng_impl or "rbg")
    return config


def command_line(module: str, argv=None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    return " ".join([".venv/bin/python", "-m", module, *map(shlex.quote, map(str, argv))])
