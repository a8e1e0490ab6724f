"""Held-out scores of a flow (the evaluation steps over a whole split): bits/dim of discrete data,
nats of continuous data; the pixel-independent histogram baseline on the same split, and per-level
diagnostics."""

from __future__ import annotations

import functools
import math
from collections import defaultdict

import jax
import numpy as np
from jax.sharding import Mesh

from jaxflows.analysis import log_det_breakdown, reconstruction_errors
from jaxflows.core import Flow, dequantize
from jaxflows.core.objective import discrete_bits_per_dim, example_keys
from jaxflows.data import Source, validate_batch
from jaxflows.train.errors import warn
from jaxflows.train.experiment import Experiment, global_batch
from jaxflows.train.state import COMPILED_FUNCTIONS, TrainState
from jaxflows.train.steps import make_class_log_probs_step, make_eval_step


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield np.arange(start, min(start + size, n))


def evaluate_held_out(flow: Flow, variables, source: Source, bins: int | None, mesh: Mesh,
                      batch_size: int = 256, draws: int = 1, seed: int = 0, *, importance_samples: int = 1,
                      report_nonfinite: bool = True) -> float:  # fmt: skip
    """Mean score over every example of `source`: bits/dim of discrete data (`bins` levels),
    averaged over `draws` dequantisation draws, each example's value the importance-weighted
    estimate over `importance_samples` draws (1: the one-draw bound, as in training); or, with
    `bins` None (continuous data), the negative log-likelihood in nats.

    Example i of the split draws its randomness (dequantisation noise) from
    `fold_in(fold_in(PRNGKey(seed), draw), i)`, so the result is the same for any `batch_size`,
    device count and process count. The split is cut into global batches (rounded up to a
    multiple of the device count) and each host evaluates its share; the last batch is padded
    with zero-weight examples. Non-finite per-example values are not dropped: they make the result
    NaN, with a warning unless `report_nonfinite` is False. A conditional flow is evaluated on
    log P(x | y) with each example's own label or context row (`source.labels`).
    """
    conditional = flow.conditional
    devices = mesh.devices.size
    hosts, host = jax.process_count(), jax.process_index()
    global_size = math.ceil(batch_size / devices) * devices
    local = global_size // hosts
    eval_step = make_eval_step(flow, bins, mesh, importance_samples)
    first_context = source.labels(np.arange(1)) if conditional else np.zeros(1, np.int32)
    key = jax.random.PRNGKey(seed)
    dtype = np.uint8 if bins is not None else np.float32
    total, count, bad = 0.0, 0.0, 0
    n = len(source)
    for draw in range(draws):
        for idx in _chunks(n, global_size):
            mine = idx[host * local : (host + 1) * local]
            examples = validate_batch(source[mine], bins, name="held-out batch") if len(mine) else None
            padded = np.zeros((local, *flow.event_shape), dtype)
            weights = np.zeros(local, np.float32)
            indices = np.zeros(local, np.int32)
            labels = np.zeros((local, *first_context.shape[1:]), first_context.dtype)
            if examples is not None:
                padded[: len(mine)], weights[: len(mine)], indices[: len(mine)] = examples, 1.0, mine
                if conditional:
                    labels[: len(mine)] = source.labels(mine)
            batch = (padded, labels) if conditional else padded
            s, c, nonfinite = eval_step(
                variables, global_batch(batch, mesh), global_batch(weights, mesh),
                global_batch(indices, mesh), jax.random.fold_in(key, draw),
            )  # fmt: skip
            total, count, bad = total + float(s), count + float(c), bad + int(nonfinite)
    if bad and report_nonfinite:
        unit = "bits/dim" if bins is not None else "negative log-likelihood"
        warn(f"warning: {bad} held-out example(s) had a non-finite {unit}; the mean is NaN")
    return total / count


evaluate_bits_per_dim = evaluate_held_out  # its name for discrete data


def class_conditional_scores(
    flow: Flow,
    variables,
    source: Source,
    bins: int,
    mesh: Mesh,
    log_prior: np.ndarray,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """A class-conditional flow's held-out scores from log P(x | c) for every class c (one
    dequantisation draw per example, shared by all classes):

    - `conditional_bits_per_dim`: of log P(x | y), y the example's label;
    - `marginal_bits_per_dim`: of log P(x) = log Σ_c p(c) P(x | c), the flow as an unconditional
      model (a mixture over classes with the prior `log_prior`), comparable with unconditional flows;
    - `bayes_accuracy`: how often argmax_c log P(x | c) + log p(c) is the label (Bayes' rule).

    Every host scores the whole split (no sharding across hosts).
    """
    step = make_class_log_probs_step(flow, bins, mesh)
    devices = mesh.devices.size
    size = math.ceil(batch_size / devices) * devices
    key = jax.random.PRNGKey(seed)
    dims = math.prod(flow.event_shape)
    conditional, marginal, correct, n = 0.0, 0.0, 0, len(source)
    for b, idx in enumerate(_chunks(n, size)):
        pixels = np.zeros((size, *flow.event_shape), np.uint8)
        pixels[: len(idx)] = validate_batch(source[idx], bins, name="held-out batch")
        scores = step(variables, global_batch(pixels, mesh), jax.random.fold_in(key, b))
        scores = np.asarray(scores)[: len(idx)]
        labels = source.labels(idx)
        joint = scores + log_prior[None, :]
        conditional += float(discrete_bits_per_dim(scores[np.arange(len(idx)), labels].sum(), dims))
        marginal += float(discrete_bits_per_dim(np.logaddexp.reduce(joint, axis=1).sum(), dims))
        correct += int((joint.argmax(axis=1) == labels).sum())
    return {
        "conditional_bits_per_dim": conditional / n,
        "marginal_bits_per_dim": marginal / n,
        "bayes_accuracy": correct / n,
    }


def class_log_prior(source: Source, num_classes: int, chunk: int = 10000) -> np.ndarray:
    """log p(c), the class frequencies of `source` (Laplace-smoothed by one example per class)."""
    counts = np.ones(num_classes)
    for idx in _chunks(len(source), chunk):
        counts += np.bincount(source.labels(idx), minlength=num_classes)
    return np.log(counts / counts.sum())


def fit_pixel_histogram(source: Source, bins: int, smoothing: float = 1.0, chunk: int = 10000) -> np.ndarray:
    """log p[d, k] of an independent categorical per pixel, Laplace-smoothed: (count + α)/(N + αK)."""
    n = len(source)
    counts = None
    for idx in _chunks(n, chunk):
        flat = validate_batch(source[idx], bins, name="baseline batch").reshape(len(idx), -1).astype(np.int64)
        dims = flat.shape[1]
        offsets = flat + bins * np.arange(dims)[None, :]
        c = np.bincount(offsets.ravel(), minlength=dims * bins).reshape(dims, bins)
        counts = c if counts is None else counts + c
    return np.log(counts + smoothing) - np.log(n + smoothing * bins)


def histogram_bits_per_dim(log_probs: np.ndarray, source: Source, bins: int, chunk: int = 10000) -> float:
    """Mean bits/dim of `source` under the per-pixel histogram `log_probs` (an exact discrete model)."""
    dims = log_probs.shape[0]
    total, n = 0.0, len(source)
    for idx in _chunks(n, chunk):
        flat = validate_batch(source[idx], bins, name="baseline batch").reshape(len(idx), -1).astype(np.int64)
        total += float(log_probs[np.arange(dims)[None, :], flat].sum())
    return discrete_bits_per_dim(total, n * dims)


def pixel_baseline_bits_per_dim(train: Source, test: Source, bins: int, smoothing: float = 1.0) -> float:
    """Fit the per-pixel histogram on `train`, return its bits/dim on `test`."""
    return histogram_bits_per_dim(fit_pixel_histogram(train, bins, smoothing), test, bins)


def _level_diagnostics(flow: Flow, bins: int | None, variables, pixels, key, labels) -> dict[str, jax.Array]:
    x = pixels if bins is None else dequantize(key, pixels, bins)
    dims = math.prod(flow.event_shape)
    out: dict[str, jax.Array] = defaultdict(float)
    for path, term in log_det_breakdown(flow, variables, x, labels).items():
        if bins is None:
            out[f"nats_term/{path.split('/')[0]}"] -= term.mean()
        else:
            out[f"bpd_term/{path.split('/')[0]}"] += discrete_bits_per_dim(term.mean(), dims)
    for path, error in reconstruction_errors(flow, variables, x, labels).items():
        name = f"reconstruction_error/{path.split('/')[0]}"
        out[name] = error.max() if name not in out else jax.numpy.maximum(out[name], error.max())
    z, _ = flow.apply(variables, x, labels, method="forward")
    back, _ = flow.apply(variables, z, labels, method="inverse")
    out["reconstruction_error/model"] = jax.numpy.max(jax.numpy.abs(back - x))
    return dict(out)


@functools.lru_cache(COMPILED_FUNCTIONS)
def _compiled_diagnostics(flow: Flow, bins: int):
    return jax.jit(functools.partial(_level_diagnostics, flow, bins))


def level_diagnostics(
    flow: Flow,
    variables,
    pixels: np.ndarray,
    bins: int | None,
    seed: int = 0,
    labels: np.ndarray | None = None,
) -> dict[str, float]:
    """Per level of a multi-scale flow (per top-level layer of any flow), on a batch of integer
    pixels: `bpd_term/<level>` is minus the level's log-det in bits/dim (`bpd_term/base` is the base
    log-density's share; all terms plus log2(bins) give the batch's bits/dim; for continuous data,
    `bins` None, `nats_term/<level>` in nats, summing to the batch's NLL) and
    `reconstruction_error/<level>` the worst
    |inverse(forward(h)) − h| of any of its layers (`jaxflows.analysis`);
    `reconstruction_error/model` is the whole flow's worst |inverse(forward(x)) − x| on the
    dequantised images. All run compiled on the default backend in the precision the model runs in
    (`jaxflows.ops.precision`); `labels` for a class-conditional flow."""
    fn = _compiled_diagnostics(flow, bins)
    values = fn(variables, np.asarray(pixels), jax.random.PRNGKey(seed), labels)
    return {name: float(value) for name, value in sorted(values.items())}


DIAGNOSTIC_EXAMPLES = 64


def diagnostics(exp: Experiment, state: TrainState) -> dict[str, float]:
    """`level_diagnostics` of the state's (averaged) parameters on the first held-out examples."""
    idx = np.arange(min(DIAGNOSTIC_EXAMPLES, len(exp.dataset.held_out)))
    pixels, labels = exp.dataset.held_out[idx], exp.dataset.held_out.labels(idx) if exp.conditional else None
    variables = state.variables(averaged=True)
    return level_diagnostics(exp.flow, variables, pixels, exp.dataset.num_bins, exp.config.seed, labels)


def _example_reconstruction(flow: Flow, bins: int | None, variables, pixels, indices, key, labels):
    """Per example: the whole flow's max |inverse(forward(x)) − x| on x dequantised with the
    example's own key (`example_keys`: its index in the split, draw 0, as evaluation scores it)."""
    x = pixels if bins is None else dequantize(example_keys(key, indices), pixels, bins)
    z, _ = flow.apply(variables, x, labels, method="forward")
    back, _ = flow.apply(variables, z, labels, method="inverse")
    return jax.numpy.max(jax.numpy.abs(back - x).reshape(x.shape[0], -1), axis=-1)


@functools.lru_cache(COMPILED_FUNCTIONS)
def _compiled_example_reconstruction(flow: Flow, bins: int | None):
    return jax.jit(functools.partial(_example_reconstruction, flow, bins))


def _worst_example_levels(flow: Flow, bins: int | None, variables, pixels, index: int, key, labels):
    """`reconstruction_errors` of one example (per top-level layer: its worst layer's error)."""
    x = pixels if bins is None else dequantize(example_keys(key, np.array([index])), pixels, bins)
    out: dict[str, float] = {}
    for path, error in reconstruction_errors(flow, variables, x, labels).items():
        level = path.split("/")[0]
        out[level] = max(out.get(level, 0.0), float(error.max()))
    return out


SPLIT_QUANTILES = (0.5, 0.99)


def split_reconstruction(
    flow: Flow, variables, source: Source, bins: int | None, seed: int = 0, batch_size: int = 256
) -> dict[str, float]:
    """The whole flow's reconstruction error over every example of a split (not its first ones):
    each example's max |inverse(forward(x)) − x| on the dequantised image evaluation scores
    (noise keyed by the example's index: `fold_in(fold_in(PRNGKey(seed), 0), i)`).

    `reconstruction_error/model` is the worst example's error, `reconstruction_quantile/p50` and
    `/p99` the median and 99th percentile over the split, `reconstruction_worst/example` the worst
    example's index in the split and `reconstruction_worst/<level>` that example's error per level
    (its worst layer in each, `jaxflows.analysis.reconstruction_errors`): which part of the chain
    amplifies it. A non-finite error counts as the worst; `reconstruction_nonfinite/examples` counts
    them (the quantiles then include them as NaN or ±inf). Runs compiled on the default device,
    in batches of `batch_size` (the last one padded: one compilation)."""
    fn = _compiled_example_reconstruction(flow, bins)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    conditional = flow.conditional
    n = len(source)
    errors = np.empty(n, np.float64)
    size = min(batch_size, n)
    for idx in _chunks(n, size):
        padded = np.concatenate([idx, np.full(size - len(idx), idx[-1])])
        examples = validate_batch(source[padded], bins, name="held-out batch")
        labels = source.labels(padded) if conditional else None
        errors[idx] = np.asarray(fn(variables, examples, padded, key, labels))[: len(idx)]
    finite = np.isfinite(errors)
    worst = int(np.argmax(~finite)) if not finite.all() else int(np.argmax(errors))
    one = np.array([worst])
    levels = _worst_example_levels(
        flow, bins, variables, source[one], worst, key, source.labels(one) if conditional else None
    )
    return {
        "reconstruction_error/model": float(errors[worst]),
        **{
            f"reconstruction_quantile/p{round(q * 100)}": float(np.quantile(errors, q))
            for q in SPLIT_QUANTILES
        },
        "reconstruction_worst/example": worst,
        "reconstruction_nonfinite/examples": int((~finite).sum()),
        **{f"reconstruction_worst/{level}": error for level, error in sorted(levels.items())},
    }


def split_diagnostics(exp: Experiment, state: TrainState) -> dict[str, float]:
    """`split_reconstruction` of the state's (averaged) parameters over the held-out split."""
    c = exp.config
    return split_reconstruction(
        exp.flow, state.variables(averaged=True), exp.dataset.held_out, exp.bins, c.seed, c.eval_batch_size
    )


def reconstruction_warnings(scores: dict[str, float], bins: int | None) -> list[str]:
    """A message for every `reconstruction_error/*` of `scores` above half an intensity level
    (0.5 / bins on the [0, 1) scale of the dequantised images): there, `inverse` and sampling no
    longer invert `forward` to the pixel."""
    if bins is None:  # continuous data: no intensity level to measure against
        return []
    limit = 0.5 / bins
    return [
        f"warning: {name.split('/', 1)[1]} reconstruction error {error:.2e} exceeds half an intensity "
        f"level ({limit:.2e} for {bins} levels): inverse and sampling do not invert forward in the "
        "precision this model runs in (see docs/precision.md)"
        for name, error in scores.items()
        if name.startswith("reconstruction_error/") and not error <= limit
    ]
