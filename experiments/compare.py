"""Runner of the paper comparisons: a grid of variants × seeds, each trained by `jaxflows.train.train`
without a workdir (no checkpoints, metrics or diagnostics), then evaluated on the held-out split.
`experiments.report` writes the tables and plots under experiments/results/; `experiments.variants` holds
what both share (`Variant`, `Run`), so neither imports the other.

The entries are thin modules that list their variants and metrics:

    python -m experiments.compare_1x1        # MEF Table 5: plain / LU / QR / matrix-exp 1x1 convs
    python -m experiments.compare_coupling   # MEF Table 4: couplings × learning rates, divergence
    python -m experiments.compare_convs      # Emerging: 1x1 vs emerging 3x3 vs periodic
    python -m experiments.compare_models     # Glow vs MEF vs Emerging at equal parameter budget

Each accepts --config PATH (a TrainConfig file: the variants override its `model` entries and, for the
coupling sweep, its learning rate), --set FIELD=VALUE (any config field, e.g. num_steps=800), --seeds,
--first-seed, --only and --out. Without --config they use the smoke mode of configs/digits.py, sized
for scikit-learn's 8x8 digits on a 2-core CPU. Every seed of an architecture shares one compiled
initialisation and train step (the seed and the learning rate are data, not constants, of the compiled
code).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments import report
from experiments.variants import Run, Variant
from jaxflows.data import load_dataset
from jaxflows.train import (
    DivergenceError,
    TrainConfig,
    add_override_argument,
    apply_overrides,
    apply_process_settings,
    evaluate_bits_per_dim,
    init_fn,
    load_config,
    pixel_baseline_bits_per_dim,
    sample_grid,
    sample_key,
    setup,
    train,
)

RESULTS_DIR = Path(__file__).parent / "results"
# Without --config: the smoke mode of the digits config (a small Glow on 8x8 digits, 800 steps)
SMOKE_CONFIG = Path(__file__).parent / "configs" / "digits.py"


def count_params(params) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def param_count(config: TrainConfig) -> int:
    """Parameters of the flow `config` describes, without compiling (shape evaluation only)."""
    return _param_count(setup(config))


def _param_count(exp) -> int:
    return count_params(jax.eval_shape(init_fn(exp), exp.init_batch, 0).params)


def _baseline(data, config: TrainConfig) -> float:
    return pixel_baseline_bits_per_dim(data.train, data.held_out, data.num_bins, config.baseline_smoothing)


def sampling_time(exp, variables, batch: int = 64, repeats: int = 3) -> float:
    """Seconds for one jitted inverse (latent -> image) of a batch, after compilation (best of repeats)."""
    inverse = jax.jit(lambda v, z: exp.flow.apply(v, z, method="inverse")[0])
    z = jax.random.normal(jax.random.PRNGKey(1), (batch, *exp.flow.event_shape))
    jax.block_until_ready(inverse(variables, z))
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(inverse(variables, z))
        best = min(best, time.perf_counter() - t)
    return best


def run_one(
    config: TrainConfig, *, sample_time: bool = False, samples_to: Path | None = None
) -> dict[str, float]:
    """Train `config` from scratch (`jaxflows.train.train`, no workdir) and evaluate on the held-out
    split. Metrics:

    bpd (held-out bits/dim; NaN for a run stopped by DivergenceError), baseline_bpd, params, step_s
    and epoch_s (wall time per update and per pass over the training split, after the first,
    compiling, step), compile_s (the first step), final_loss (mean of the last logged losses),
    all_losses_finite, skipped (non-finite updates skipped by the optimiser), diverged, and
    optionally sample_s.
    """
    try:
        result = train(config.replace(log_every=min(config.log_every, 20)), None, progress=False)
    except DivergenceError:
        exp, nan = setup(config), float("nan")
        return {"bpd": nan, "baseline_bpd": _baseline(exp.dataset, config), "params": _param_count(exp),
                "step_s": nan, "epoch_s": nan, "compile_s": nan, "final_loss": nan, "all_losses_finite": 0.0,
                "skipped": config.max_consecutive_skips, "diverged": 1.0}  # fmt: skip
    if result.preempted:  # a comparison row must be a whole run: stop the comparison instead
        raise SystemExit(
            f"stopped by {result.signal} at step {int(result.state.step)}; the comparison is abandoned"
        )
    exp, state, data = result.experiment, result.state, result.experiment.dataset
    variables = state.variables()
    losses = np.asarray([row["loss"] for row in result.history], np.float64)
    out = {
        "bpd": evaluate_bits_per_dim(
            exp.flow,
            variables,
            data.held_out,
            data.num_bins,
            exp.mesh,
            config.eval_batch_size,
            1,
            config.seed,
        ),
        "baseline_bpd": _baseline(data, config),
        "params": count_params(state.params),
        "step_s": result.step_s,
        "epoch_s": result.step_s * len(data.train) / config.batch_size,
        "compile_s": result.first_step_s,
        "final_loss": float(np.mean(losses[-min(5, len(losses)) :])),
        "all_losses_finite": float(np.all(np.isfinite(losses))),
        "skipped": int(state.opt_state.skipped),
        "diverged": 0.0,
        # the logged training curve: (step, training bits/dim) pairs
        "curve": tuple((int(row["step"]), float(row["bits_per_dim"])) for row in result.history),
    }
    if sample_time:
        out["sample_s"] = sampling_time(exp, variables)
    if samples_to is not None:
        image, _ = sample_grid(exp.flow, variables, sample_key(config.seed), data.num_bins,
                               config.sample_temperatures, config.samples_per_temperature)  # fmt: skip
        samples_to.parent.mkdir(parents=True, exist_ok=True)
        image.save(samples_to)
    return out


def run_grid(
    base: TrainConfig,
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


def fit_kernel(base, kernel_size: int) -> tuple[Any, str | None]:
    """Drop multi-scale levels until the smallest level is at least `kernel_size` pixels wide (a k×k
    emerging conv needs that), keeping the total number of flow steps; returns the config and a note."""
    height = min(load_dataset(base.dataset, base.data_dir, base.n_bits).image_shape[:2])
    levels = old_levels = int(base.model.get("levels", 3))
    steps = int(base.model.get("depth", 32))
    while levels > 1 and height // 2**levels < kernel_size:
        levels -= 1
    if levels == old_levels:
        return base, None
    model = {**base.model, "levels": levels, "depth": steps * old_levels // levels}
    note = (
        f"The base model's {old_levels} levels would shrink the {height}-pixel image below the "
        f"{kernel_size}x{kernel_size} kernel, so every model here uses {levels} level(s) of "
        f"{model['depth']} steps (the same total number of flow steps)."
    )
    return base.replace(model=model), note


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
        report.bar_plot(plot, runs, variants, "bpd", "held-out bits/dim", plot_title, baseline)
        report.write_markdown(out, title, self.base, self.seeds, report.markdown_table(header, rows), notes,
                              report.command_line(self.module, self.argv), time.perf_counter() - self.start,
                              report.dataset_description(self.base))  # fmt: skip
        print(out.read_text())
        return {"runs": runs, "markdown": out, "plot": plot}


def begin(
    module: str,
    description: str,
    argv=None,
    default_seeds: int = 3,
    default_steps: int | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Comparison:
    """Parse an entry's command line (the common flags and those `add_arguments` adds) and build its
    base config (which also sets the PRNG)."""
    start = time.perf_counter()
    args = parse_args(description, argv, default_seeds, add_arguments)
    base = base_config(args, default_steps)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    return Comparison(module, argv, args, base, seeds, start)


def parse_args(
    description: str,
    argv=None,
    default_seeds: int = 3,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config", type=Path, default=None, help="TrainConfig file (default: digits, smoke mode)"
    )
    add_override_argument(parser)
    parser.add_argument("--seeds", type=int, default=default_seeds, help="number of seeds (0, 1, …)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="first seed (--first-seed 1 --seeds 2: seeds 1 and 2)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the .md and .png")
    parser.add_argument("--only", default=None, help="comma-separated variant names to run (default: all)")
    parser.add_argument("--quiet", action="store_true")
    if add_arguments is not None:
        add_arguments(parser)
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
    """The base config (the file, or digits' smoke mode) with the --set overrides; applies its process
    settings (PRNG, CPU devices) before any JAX work."""
    config = load_config(args.config) if args.config is not None else load_config(SMOKE_CONFIG, smoke=True)
    if args.config is None and default_steps is not None:
        config = config.replace(num_steps=default_steps)
    config = apply_overrides(config, args.overrides)
    apply_process_settings(config, default_prng_impl="rbg")
    return config
