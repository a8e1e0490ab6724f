"""Flow families side by side at matched parameter counts: the autoregressive study (MAF, the
autoregressive spline flow, RealNVP and spline couplings; issue "autoregressive flows", item 8a-b)
with Fashion-MNIST as 784-d pixel vectors at an equal CPU budget (item 8c, study "pixels"), and
the free-form study (series- and roulette-trained residual flows, FFJORD, planar, spline
couplings at an equal CPU-time budget; issue "free-form flows", item 3).

    .venv/bin/python -m experiments.matched_flows autoregressive --out experiments/results
    .venv/bin/python -m experiments.matched_flows free_form --out experiments/results
    .venv/bin/python -m experiments.matched_flows pixels --cpu-seconds 1800 --out experiments/results

Every flow is a registered builder (`jaxflows.models.MODELS`) whose width (or depth, for planar)
is chosen so that its parameter count is within ±10% of the study's target for that data set, and
is trained by `jaxflows.train.fit` (Adam at 1e-2, 1e-3 in the pixels study, cosine-decayed to 0,
gradient norm clipped at 10). Held-out NLL in nats ± standard error over the held-out points, beside the true
density's (the ring of 8 Gaussians) with the paired difference; each flow's own log-density beside
the exact one (slogdet of the whole flow's Jacobian, reverse mode). Digits (scikit-learn's 8×8, 17
levels, as 64-d vectors) are dequantised and scored in bits/dim, with early stopping on 200
training images held aside (never on the test split). Writes matched_flows_<study>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from experiments.vector_flows import (
    CLIP,
    LEARNING_RATE,
    count_params,
    exact_nats,
    mean_and_error,
    optimizer,
    scorer,
)
from jaxflows.bijectors import ContinuousFlow
from jaxflows.core import Flow, Repeat
from jaxflows.data import load_dataset
from jaxflows.data import ring_of_gaussians_log_prob as ring_log_prob
from jaxflows.models import MODELS
from jaxflows.train import fit

MODULE = "experiments.matched_flows"
TRUE_LOG_PROB = {"ring_of_gaussians": ring_log_prob}
TITLES = {
    "two_moons": "two moons",
    "ring_of_gaussians": "ring of 8 Gaussians",
    "digits": "digits (64-d)",
    "fashion_mnist": "Fashion-MNIST (784-d)",
}

# name -> (registered builder, fixed keyword arguments, the size knob: n -> keyword arguments).
Family = tuple[str, dict[str, Any], Callable[[int], dict[str, Any]]]
AUTOREGRESSIVE: dict[str, Family] = {
    "MAF": ("maf", {}, lambda n: {"hidden": (n, n)}),
    "autoregressive spline": ("autoregressive_spline_flow", {}, lambda n: {"hidden": (n, n)}),
    "RealNVP (affine coupling)": ("coupling_flow", {"coupling": "affine"}, lambda n: {"hidden": n}),
    "spline coupling": ("coupling_flow", {"coupling": "spline"}, lambda n: {"hidden": n}),
}
ROULETTE = {"estimator": "roulette", "roulette": "geometric", "roulette_param": 0.5, "exact_terms": 2}
FREE_FORM: dict[str, Family] = {
    "residual, 10-term series": ("residual_flow", {"log_det_terms": 10}, lambda n: {"hidden": n}),
    "residual, roulette": ("residual_flow", {"block_kwargs": ROULETTE}, lambda n: {"hidden": n}),
    "FFJORD": ("ffjord_flow", {}, lambda n: {"hidden": n}),
    "planar": ("planar_flow", {}, lambda n: {"depth": n}),
    "spline coupling": ("coupling_flow", {"coupling": "spline"}, lambda n: {"hidden": n}),
}
# Per data set: fixed keyword arguments added to a family's (the 64-d splines take K = 4 bins, so a
# MADE of the target size keeps its hidden widths ≥ d − 1 = 63 and reaches every dependency).
DATASET_KWARGS = {
    "digits": {
        "autoregressive spline": {"bins": 4},
        "spline coupling": {"coupling_kwargs": {"bins": 4}},
    },
    # pixels in [0, 1) after dequantisation: every flow starts with Logit (α = 1e-6, as MAF's MNIST)
    "fashion_mnist": {
        "MAF": {"logit": True},
        "autoregressive spline": {"bins": 4, "logit": True},
        "RealNVP (affine coupling)": {"logit": True},
        "spline coupling": {"coupling_kwargs": {"bins": 4}, "logit": True},
    },
}
# study -> (families, data sets with their parameter targets, seeds, what fixes the training length)
STUDIES = {
    "autoregressive": {
        "families": AUTOREGRESSIVE,
        "targets": {"two_moons": 20_000, "ring_of_gaussians": 20_000, "digits": 300_000},
        "seeds": (0, 1, 2),
        "budget": "steps",
    },
    "free_form": {
        "families": FREE_FORM,
        "targets": {"two_moons": 2_000, "ring_of_gaussians": 2_000},
        "seeds": (0,),
        "budget": "cpu_seconds",
    },
    # Fashion-MNIST as 784-d vectors (item 8c): the size of the autoregressive spline with K = 4
    # bins and two hidden layers of 512 (25.45M parameters), an equal CPU budget per flow (the
    # --cpu-seconds flag; 1800 in the results), curves on 2000 training images held aside.
    "pixels": {
        "families": AUTOREGRESSIVE,
        "targets": {"fashion_mnist": 25_451_280},
        "seeds": (0,),
        "budget": "cpu_seconds",
        "validation": 2000,
        "patience": None,
        "timings": True,
        # the 2-D flows' 1e-2 diverged for the 25M-parameter RealNVP within 2 steps (its wide MLPs'
        # Adam step gives every shift a gain that compounds over the 6 couplings) and trailed 1e-3 for
        # MAF after 60 steps (4.42 against 4.23 held-out bits/dim)
        "learning_rate": 1e-3,
    },
    # FFJORD (Hutchinson traces above 32 dimensions) on the autoregressive study's digits, its size.
    "ffjord_digits": {
        "families": {"FFJORD": FREE_FORM["FFJORD"]},
        "targets": {"digits": 300_000},
        "seeds": (0,),
        "budget": "cpu_seconds",
    },
}
# The small Residual Flow on images (Chen et al. 2019's image settings: Poisson(2) roulette after
# 2 exact terms, Hutchinson traces, Neumann-series gradient, LipSwish).
RESIDUAL_IMAGES = {
    "depth": 4,
    "hidden": 32,
    "trace": "hutchinson",
    "block_kwargs": {"estimator": "roulette", "roulette": "poisson", "roulette_param": 2.0, "exact_terms": 2,
                     "activation": "learned_lipswish"},
}  # fmt: skip


def build(family: Family, shape: tuple[int, ...], size: int, **extra) -> Flow:
    builder, fixed, knob = family
    return MODELS.lookup(builder)(shape, **{**fixed, **knob(size), **extra})


def parameters(family: Family, shape: tuple[int, ...], size: int) -> int:
    flow = build(family, shape, size)
    shapes = jax.eval_shape(flow.init, jax.random.key(0), jnp.zeros((2, *shape)))
    return count_params(shapes)


def match_size(family: Family, shape: tuple[int, ...], target: int, tolerance: float = 0.1) -> int:
    """The size (width, or depth) whose parameter count is closest to `target`, within ±`tolerance`
    (the counts grow with the size: bisection; each size is built once)."""
    counts: dict[int, int] = {}

    def count(n: int) -> int:
        if n not in counts:
            counts[n] = parameters(family, shape, n)
        return counts[n]

    lo, hi = 1, 2
    while count(hi) < target:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    size = min((lo, hi), key=lambda n: abs(count(n) - target))
    if abs(count(size) - target) > tolerance * target:
        raise ValueError(
            f"{family[0]}: no size within ±{tolerance:.0%} of {target} parameters ({count(size)})"
        )
    return size


def train(
    flow: Flow, x, steps: int, batch: int, key, levels=None, validation=None, patience=None, lr=LEARNING_RATE
):
    """(variables, history, process CPU seconds, wall seconds) of `fit` at learning rate `lr`."""
    cpu, wall = time.process_time(), time.perf_counter()
    variables, history = fit(
        flow, x, validation, steps=steps, batch_size=batch, key=key, levels=levels,
        optimizer=optimizer(steps, lr), eval_every=max(1, steps // 20), patience=patience, progress=False,
    )  # fmt: skip
    return variables, history, time.process_time() - cpu, time.perf_counter() - wall


def steps_for(flow: Flow, x, batch: int, key, cpu_seconds: float, levels=None) -> tuple[int, float]:
    """Steps that fit in `cpu_seconds` of process CPU time (all threads: insensitive to other
    processes' load, unlike wall time), and the CPU seconds per step: after a warm-up run (which
    compiles), the difference of a short and a long run (which cancels the rest of a call's cost)."""
    short, long = 20, 120
    train(flow, x, 2, batch, key, levels)
    times = [train(flow, x, n, batch, key, levels)[2] for n in (short, long)]
    per_step = (times[1] - times[0]) / (long - short)
    if per_step <= 0:  # noise larger than the difference: the long run's mean is an upper bound
        per_step = times[1] / long
    return max(long, int(cpu_seconds / per_step)), per_step


EVAL_DRAWS = 8  # evaluation keys of a roulette-estimated log-density
TIMED = 64  # examples sampled, and scored, to time sampling against density evaluation


def sampling_and_density_seconds(flow: Flow, variables, x, levels: int, key) -> dict[str, float]:
    """Seconds to draw len(x) samples and to score len(x) examples (the dequantised log-density),
    each jitted, timed on a second call after the compiling first: an autoregressive flow's
    sampling is one network pass per coordinate and layer, its density one pass per layer."""
    n = len(x)
    sample = jax.jit(lambda v, k: flow.apply(v, k, n, method="sample"))
    density = jax.jit(lambda v, a, k: flow.apply(v, a, k, levels, method="discrete_log_prob"))
    seconds = {}
    for name, call in (
        ("sample_s", lambda: sample(variables, key)),
        ("density_s", lambda: density(variables, x, key)),
    ):
        jax.block_until_ready(call())
        start = time.perf_counter()
        jax.block_until_ready(call())
        seconds[name] = time.perf_counter() - start
    return seconds | {"timed_examples": n}


def _roulette(family: Family) -> bool:
    return family[1].get("block_kwargs", {}).get("estimator") == "roulette"


def evaluation_flow(family: Family, shape, size: int) -> Flow:
    """The flow that scores held-out data: the roulette estimator with 20 exact terms first (Chen et
    al. 2019's evaluation); every other flow as trained."""
    if _roulette(family):
        return build(family, shape, size, block_kwargs={**family[1]["block_kwargs"], "evaluation": True})
    return build(family, shape, size)


def ode_evaluations(flow: Flow, variables, x) -> float | None:
    """FFJORD on vectors (`ffjord_flow`: a `Repeat` of `ContinuousFlow` blocks): the mean over `x`
    of the solver's steps in every block's forward solve, times dopri5's 6 evaluations of f per
    step (first-same-as-last); None for other flows."""
    repeat = flow.bijector
    if not isinstance(repeat, Repeat) or not isinstance(repeat.layer, ContinuousFlow):
        return None
    block, stacked = repeat.template(), {"params": variables["params"]["bijector"]}
    steps = []
    for k in range(repeat.length):
        step_variables = Repeat.step_variables(stacked, k)
        steps.append(np.mean(np.asarray(block.apply(step_variables, x, method="num_steps"))))
        x, _ = block.apply(step_variables, x, method="forward")
    return 6.0 * float(np.sum(steps))


def as_vectors(dataset: str) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(train, held-out, levels) of a data set as arrays; images flattened to vectors."""
    data = load_dataset(dataset)
    train_x, test = (np.asarray(s[np.arange(len(s))]) for s in (data.train, data.held_out))
    if data.num_bins is not None:  # images as vectors
        train_x, test = train_x.reshape(len(train_x), -1), test.reshape(len(test), -1)
    return train_x, test, data.num_bins


def study_family(spec: dict, name: str, dataset: str) -> Family:
    """A study's flow `name` with the data set's fixed keyword arguments (`DATASET_KWARGS`)."""
    builder, fixed, knob = spec["families"][name]
    return builder, {**fixed, **DATASET_KWARGS.get(dataset, {}).get(name, {})}, knob


def run(study: str, datasets=None, families=None, budget: float | None = None, steps: int | None = None):
    spec = STUDIES[study]
    rows = []
    for dataset in datasets or spec["targets"]:
        target = spec["targets"][dataset]
        train_x, test, levels = as_vectors(dataset)
        shape = train_x.shape[1:]
        reference = {"density": TITLES.get(dataset, dataset), "flow": "data", "dataset": dataset}
        if dataset in TRUE_LOG_PROB:
            reference["true_nats"] = -np.asarray(TRUE_LOG_PROB[dataset](test), np.float64)
            reference["nll"] = mean_and_error(reference["true_nats"])
        rows.append(reference)
        for name in families or spec["families"]:
            family = study_family(spec, name, dataset)
            size = match_size(family, shape, target)
            for seed in spec["seeds"]:
                key = jax.random.key(seed)
                rows.append(
                    run_one(spec, name, family, shape, size, train_x, test, levels, key, budget, steps)
                    | {"density": reference["density"], "dataset": dataset, "seed": seed}
                )
                if "true_nats" in reference:
                    rows[-1]["nll_minus_true"] = mean_and_error(rows[-1].pop("nats") - reference["true_nats"])
                rows[-1].pop("nats", None)
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "history"}), flush=True)
    return rows


def run_one(spec, name, family, shape, size, train_x, test, levels, key, budget, steps) -> dict:
    flow = build(family, shape, size)
    row = {"flow": name, "size": size}
    batch, validation, patience = 256, None, None
    if levels is not None:  # images: early stopping (or curves) on training images held aside
        aside = spec.get("validation", 200)
        batch, validation, patience = 128, train_x[-aside:], spec.get("patience", 5)
        train_x = train_x[:-aside]
    if spec["budget"] == "cpu_seconds":
        steps, row["cpu_s_per_step"] = steps_for(flow, train_x, batch, key, budget, levels)
    lr = spec.get("learning_rate", LEARNING_RATE)
    variables, history, cpu, wall = train(flow, train_x, steps, batch, key, levels, validation, patience, lr)
    row |= {
        "params": count_params(variables),
        "steps": history[-1]["step"],
        "train_cpu_s": cpu,
        "train_wall_s": wall,
        "history": history,
    }
    scored = evaluation_flow(family, shape, size)
    eval_key = jax.random.fold_in(key, 1)
    if _roulette(family):
        # One roulette draw N per batch: score in batches of 100 under EVAL_DRAWS keys (800 draws
        # over 10,000 points) and average; the spread of the keys' means is the estimator's own.
        draws = [
            scorer(scored, levels, 100)(variables, test, jax.random.fold_in(eval_key, r))
            for r in range(EVAL_DRAWS)
        ]
        nats = np.mean(draws, axis=0)
        row["estimate_spread"] = mean_and_error([d.mean() for d in draws])
    else:
        nats = scorer(scored, levels)(variables, test, eval_key)
    if levels is not None:
        per_dim = 1.0 / (math.prod(shape) * math.log(2.0))
        row["bits_per_dim"] = mean_and_error(nats * per_dim)
        if spec.get("timings"):
            row |= sampling_and_density_seconds(scored, variables, test[:TIMED], levels, eval_key)
        return row
    row["nll"], row["nats"] = mean_and_error(nats), nats
    exact = exact_nats(scored, variables, test, eval_key, jax.jacrev, 1000)  # jacrev: roulette, ODEs
    row["nll_exact_jacobian"] = mean_and_error(exact)
    row["own_minus_exact"] = mean_and_error(nats - exact)
    evaluations = ode_evaluations(scored, variables, test[:1000])
    if evaluations is not None:
        row["ode_evaluations_per_solve"] = evaluations
    return row


def run_residual_images(steps: int, dataset: str = "auto", batch: int = 32, num_test: int = 1000) -> dict:
    """`residual_flow` on images with the unbiased (roulette) log-det estimate, trained by `fit`
    (Adam, cosine decay) and scored on the first `num_test` held-out images with one uniform
    dequantisation draw and the evaluation estimator (20 exact terms, then the roulette)."""
    data, key = load_dataset(dataset), jax.random.key(0)
    shape = tuple(data.event_shape)
    family: Family = ("residual_flow", RESIDUAL_IMAGES, lambda n: {})
    flow = build(family, shape, 0)
    train_x = np.asarray(data.train[np.arange(len(data.train))])
    test = np.asarray(data.held_out[np.arange(min(num_test, len(data.held_out)))])
    variables, history, cpu, wall = train(flow, train_x, steps, batch, key, data.num_bins)
    per_dim = 1.0 / (math.prod(shape) * math.log(2.0))
    scored = evaluation_flow(family, shape, 0)
    start = time.perf_counter()
    bits = per_dim * scorer(scored, data.num_bins, 250)(variables, test, jax.random.fold_in(key, 1))
    return {
        "dataset": f"{data.name} ({len(train_x)} train, first {len(test)} held-out, {shape})",
        "model": f"residual_flow({shape}, **{RESIDUAL_IMAGES})",
        "params": count_params(variables),
        "steps": steps,
        "batch": batch,
        "train_cpu_s": cpu,
        "train_wall_s": wall,
        "steps_per_s": steps / wall,
        "eval_s": time.perf_counter() - start,
        "bits_per_dim": mean_and_error(bits),
        "history": history,
    }


def residual_images_lines(result: dict) -> list[str]:
    bpd, se = result["bits_per_dim"]
    return [
        f"- data: {result['dataset']}",
        f"- model: `{result['model']}`, {result['params']:,} parameters; {result['steps']} Adam steps of "
        f"batch {result['batch']} (lr {LEARNING_RATE:g}, cosine decay, clipped at {CLIP:g}) by "
        "`jaxflows.train.fit`: "
        f"{result['train_wall_s']:.0f} s ({result['steps_per_s']:.2f} steps/s, {result['train_cpu_s']:.0f} "
        f"CPU-s); scoring took {result['eval_s']:.0f} s",
        f"- held-out bits/dim ≈ **{bpd:.3f} ± {se:.3f}** (± over images): an estimate, not an exact "
        "likelihood. Each block's log|det(I + J_g)| is the Russian-roulette estimate (20 exact series terms, "
        "then a Poisson(2) number more, each reweighted by its survival probability: unbiased for the "
        "log-det; Chen et al. 2019, Eq. 8), every trace a one-probe Hutchinson estimate (unbiased), and the "
        "dequantisation one uniform draw per image (an upper bound on bits/dim in expectation). So the "
        "log-density is unbiased for the dequantised density, and the bits/dim an estimate of an upper "
        "bound; the series-trained flow's number on the vector-flows page is biased instead.",
    ]


def table(rows: list[dict]) -> str:
    pm = "{:.3f} ± {:.3f}".format
    cells = []
    for r in rows:
        if r["flow"] == "data":
            if "nll" in r:
                cells.append(
                    [r["density"], "true density (reference)", "–", "–", pm(*r["nll"]), "0", "–", "–"]
                )
            continue
        if "bits_per_dim" in r:
            score, paired, exact = pm(*r["bits_per_dim"]) + " bits/dim", "–", "–"
        else:
            score, exact = pm(*r["nll"]), "{:+.4f} ± {:.4f}".format(*r["own_minus_exact"])
            if "estimate_spread" in r:  # the s.e. of the mean over evaluation keys
                exact += f" (over {EVAL_DRAWS} draws: ± {r['estimate_spread'][1]:.4f})"
            paired = "{:+.3f} ± {:.3f}".format(*r["nll_minus_true"]) if "nll_minus_true" in r else "–"
        cost = f"{r['steps']} steps, {r['train_cpu_s']:.0f} CPU-s ({r['train_wall_s']:.0f} s)"
        if "ode_evaluations_per_solve" in r:
            cost += f", {r['ode_evaluations_per_solve']:.0f} f-evals/solve"
        cells.append(
            [r["density"], r["flow"], str(r["seed"]), f"{r['params']:,}", score, paired, exact, cost]
        )
    header = ["data", "flow", "seed", "params", "held-out NLL (nats)", "NLL − true (paired)",
              "own − exact log-density", "training"]  # fmt: skip
    return report.markdown_table(header, cells)


def summary(rows: list[dict]) -> str:
    """Per data set and flow: the mean over seeds and the seeds' standard error."""
    lines, groups = [], {}
    for r in rows:
        if r["flow"] != "data":
            unit, value = ("bits/dim", r["bits_per_dim"][0]) if "bits_per_dim" in r else ("nats", r["nll"][0])
            groups.setdefault((r["density"], r["flow"], unit), []).append(value)
    for (density, flow, unit), values in groups.items():
        if len(values) > 1:
            mean, se = mean_and_error(values)
            lines.append(f"- {density}, {flow}: {mean:.3f} ± {se:.3f} {unit} over {len(values)} seeds")
    return "\n".join(lines)


def curves(rows: list[dict], aside: int, points: int = 5) -> str:
    """Held-out (validation) bits/dim along each flow's run, at `points` evenly spaced evaluations,
    and each flow's sampling against density time (the pixels study)."""
    cells = []
    for r in rows:
        history = [h for h in r.get("history", []) if "held_out_loss" in h]
        if not history:
            continue
        for i in sorted({round(k * (len(history) - 1) / (points - 1)) for k in range(points)}):
            h = history[i]
            cells.append([r["flow"], str(h["step"]), f"{h['seconds']:.0f}", f"{h['held_out_loss']:.3f}"])
    blocks = []
    if cells:
        header = ["flow", "step", "seconds", "validation bits/dim"]
        note = (
            f"Validation curves ({aside} training images held aside; the best point's variables are scored):"
        )
        blocks += [note, report.markdown_table(header, cells)]
    timed = [r for r in rows if "sample_s" in r]
    if timed:
        n = timed[0]["timed_examples"]
        header = ["flow", f"sample {n} (s)", f"density of {n} (s)", "sampling / density"]
        ratio = lambda r: f"{r['sample_s'] / r['density_s']:.0f}×"
        cells = [[r["flow"], f"{r['sample_s']:.3f}", f"{r['density_s']:.4f}", ratio(r)] for r in timed]
        note = "Sampling against density time (jitted, timed on a second call, this CPU):"
        blocks += [note, report.markdown_table(header, cells)]
    return "\n\n".join(blocks)


def merge(page: dict, rows: list[dict], facts: list[str]) -> tuple[list[dict], list[str]]:
    """An earlier page's rows with those of the flows run now replaced (in the earlier order), and
    both runs' facts."""
    new = {(r["density"], r["flow"], r.get("seed")): r for r in rows}
    merged = [new.pop((r["density"], r["flow"], r.get("seed")), r) for r in page["rows"]]
    return merged + list(new.values()), [*page["facts"], "then (rows of the flows it ran):", *facts]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=[*sorted(STUDIES), "residual_images"])
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--datasets", help="comma-separated (default: the study's)")
    parser.add_argument("--flows", help="names separated by ';' (they contain commas; default: the study's)")
    parser.add_argument("--steps", type=int, default=2000, help="autoregressive study: steps per flow")
    parser.add_argument(
        "--cpu-seconds", type=float, default=180.0, help="free-form and pixels studies: CPU budget per flow"
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the page's earlier rows of the flows not run now"
    )
    parser.add_argument(
        "--images", default="auto", help='residual_images: the data set ("auto": the main job\'s)'
    )
    parser.add_argument(
        "--retime",
        action="store_true",
        help="re-measure the page's sampling and density times (quiet machine)",
    )
    args = parser.parse_args(argv)
    if args.study == "residual_images":
        return [residual_images_main(args, argv)]
    if args.retime:
        return retime(args.study, args.out, argv)
    commit = report.git_commit()
    start = time.perf_counter()
    split = lambda s, sep=",": s.split(sep) if s else None
    rows = run(args.study, split(args.datasets), split(args.flows, ";"), args.cpu_seconds, args.steps)
    wall = time.perf_counter() - start
    facts = [*report.run_facts(MODULE, argv, wall), f"commit: {commit}"]
    earlier = args.out / f"matched_flows_{args.study}.json"
    if args.merge and earlier.exists():
        rows, facts = merge(json.loads(earlier.read_text()), rows, facts)
    spec = STUDIES[args.study]
    length = (
        f"{args.steps} steps (digits: at most, early-stopped)"
        if spec["budget"] == "steps"
        else f"{args.cpu_seconds:.0f} CPU-seconds each (steps from a calibration run)"
    )
    lr = spec.get("learning_rate", LEARNING_RATE)
    facts.append(
        f"parameter targets (±10%): {spec['targets']}; seeds {list(spec['seeds'])}; training: {length}, "
        f"Adam at {lr:g}"
    )
    write_page(args.out, args.study, rows, facts)
    return rows


def write_page(out: Path, study: str, rows: list[dict], facts: list[str]) -> None:
    """matched_flows_<study>.md (tables, summary, curves) and .json (facts and rows)."""
    spec = STUDIES[study]
    out.mkdir(parents=True, exist_ok=True)
    title = f"Flows at matched parameter counts: the {study.replace('_', '-')} study"
    blocks = [table(rows), summary(rows)]
    if "validation" in spec:
        blocks.append(curves(rows, spec["validation"]))
    report.save_page(out, f"matched_flows_{study}.md", title, facts, *[b for b in blocks if b])
    keep = [{k: v for k, v in r.items() if k not in ("true_nats",)} for r in rows]
    (out / f"matched_flows_{study}.json").write_text(json.dumps({"facts": facts, "rows": keep}) + "\n")


def retime(study: str, out: Path, argv) -> list[dict]:
    """Re-measure the sampling and density times of the page's rows, e.g. on a quiet machine after
    runs timed under load: each flow rebuilt at its row's size, its variables after one training
    step (ActNorm's data-dependent init; neither time depends on the values)."""
    page = json.loads((out / f"matched_flows_{study}.json").read_text())
    commit, start, data = report.git_commit(), time.perf_counter(), {}
    for r in page["rows"]:
        if "sample_s" not in r:
            continue
        if r["dataset"] not in data:
            data[r["dataset"]] = as_vectors(r["dataset"])
        train_x, test, levels = data[r["dataset"]]
        family = study_family(STUDIES[study], r["flow"], r["dataset"])
        key = jax.random.key(r["seed"])
        variables, *_ = train(build(family, train_x.shape[1:], r["size"]), train_x, 1, 128, key, levels)
        scored = evaluation_flow(family, train_x.shape[1:], r["size"])
        r |= sampling_and_density_seconds(scored, variables, test[:TIMED], levels, jax.random.fold_in(key, 1))
        print(json.dumps({k: r[k] for k in ("flow", "sample_s", "density_s")}), flush=True)
    wall = time.perf_counter() - start
    facts = [*page["facts"], "timings re-measured (`--retime`):", *report.run_facts(MODULE, argv, wall)]
    write_page(out, study, page["rows"], [*facts, f"commit: {commit}"])
    return page["rows"]


def residual_images_main(args, argv) -> dict:
    commit, start = report.git_commit(), time.perf_counter()
    result = run_residual_images(args.steps, args.images)
    facts = [*report.run_facts(MODULE, argv, time.perf_counter() - start), f"commit: {commit}"]
    args.out.mkdir(parents=True, exist_ok=True)
    title = "A small Residual Flow on images with the unbiased log-det estimate"
    report.save_page(
        args.out, "matched_flows_residual_images.md", title, facts, "\n".join(residual_images_lines(result))
    )
    keep = {k: v for k, v in result.items() if k != "history"} | {"curve": result["history"]}
    (args.out / "matched_flows_residual_images.json").write_text(json.dumps({"facts": facts, **keep}) + "\n")
    return result


if __name__ == "__main__":
    main()
