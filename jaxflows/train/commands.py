"""Workdir commands after training: restore the latest checkpoint, evaluate, write sample grids,
interpolations and the training curve."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows import pretrained
from jaxflows.train.checkpoint import CheckpointStore
from jaxflows.train.config import TrainConfig, config_from_dict
from jaxflows.train.errors import ConfigError
from jaxflows.train.evaluate import (
    class_conditional_scores,
    class_log_prior,
    diagnostics,
    evaluate_held_out,
    pixel_baseline_bits_per_dim,
    split_diagnostics,
)
from jaxflows.train.experiment import Experiment, replicated, setup
from jaxflows.train.loop import initial_state
from jaxflows.train.metrics import plot_training_curve
from jaxflows.train.sampling import (
    class_sample_grid,
    density_and_samples_plot,
    interpolate,
    sample_grid,
    sample_grid_path,
    sample_key,
)
from jaxflows.train.state import TrainState
from jaxflows.train.workdir import check_format, writing


def restore_for_inference(config: TrainConfig, workdir: str | Path) -> tuple[Experiment, TrainState]:
    """Experiment and the latest checkpointed state of `workdir` (raises if there is none, and
    CheckpointFormatError if the workdir is in an older format)."""
    check_format(workdir)
    exp = setup(config)
    if not (Path(workdir) / "checkpoints").is_dir():
        raise FileNotFoundError(f"no checkpoint in {Path(workdir) / 'checkpoints'}: train first")
    store = CheckpointStore(Path(workdir), config.checkpoint_every, config.keep_checkpoints, writer=False)
    try:
        if not store.steps():
            raise FileNotFoundError(f"no checkpoint in {store.directory}: train first")
        return exp, initial_state(exp, store)
    finally:
        store.close()


def restore_pretrained(
    name: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[TrainConfig, Experiment, TrainState]:
    """A shipped model (`jaxflows.pretrained`, or a card's path) as the config it was trained with
    plus `overrides` (`--set`'s FIELD=VALUE strings: the network policy, evaluation settings), its
    experiment (data set, flow, mesh) and a state holding its variables, for the same evaluation
    and sampling commands as a workdir. The flow is the card's under the config's network policy
    (`--set network_precision=default` applies); `model` and `dequantizer` are the card's."""
    from jaxflows.train.config import apply_overrides
    from jaxflows.train.errors import ConfigError

    card = pretrained.card(name)
    if "config" not in card.training:
        raise ConfigError(
            f"{card.name}: the card records no training config (no data set to evaluate on); "
            "use (flow, variables) = jaxflows.pretrained.load(...) instead"
        )
    recorded = config_from_dict(card.training["config"], f"the card of {card.name}")
    config = apply_overrides(recorded, list(overrides))
    fixed = [f for f in ("model", "dequantizer") if getattr(config, f) != getattr(recorded, f)]
    if fixed:
        raise ConfigError(f"{card.name}: {fixed} come from the card (its weights fit no other model)")
    policy = {"network_dtype": config.network_dtype, "network_precision": config.network_precision}
    flow, variables = pretrained.load(name, **policy)
    exp = setup(config)._replace(flow=flow)
    variables = jax.device_put(variables, replicated(exp.mesh))
    state = TrainState(
        step=jnp.asarray(card.training.get("steps", 0), jnp.int32),
        params=variables["params"],
        constants={k: v for k, v in variables.items() if k != "params"},
        opt_state=None,
        rng=jax.random.key_data(jax.random.key(config.seed)),
    )
    return config, exp, state


def evaluate(exp: Experiment, state: TrainState) -> dict[str, float]:
    """Held-out bits/dim of the flow (its parameters' moving average when trained with one; then also
    `flow_bits_per_dim_without_ema`) and of the per-pixel histogram baseline on the same split, and
    the per-level log-det terms and reconstruction errors (`level_diagnostics`, first held-out
    examples), and the whole flow's reconstruction error over the split (`split_reconstruction`:
    the worst example, its index and per-level breakdown, quantiles). A class-conditional
    flow's `flow_bits_per_dim` is of log P(x | y); it adds `class_conditional_scores` (the marginal
    bits/dim of Σ_c p(c) P(x | c) and the Bayes-rule accuracy, p(c) the training frequencies).
    On continuous data: `flow_nats` (held-out −log p(x)) and `flow_nats_per_dim` instead, with the
    per-layer `nats_term/*` (`continuous_scores`)."""
    c, d = exp.config, exp.dataset

    def held_out(averaged: bool, draws: int = c.eval_dequant_draws, samples: int = 1) -> float:
        variables = state.variables(averaged)
        return evaluate_held_out(
            exp.flow, variables, d.held_out, d.num_bins, exp.mesh, c.eval_batch_size, draws, c.seed,
            importance_samples=samples,
        )  # fmt: skip

    if not d.discrete:
        return {
            **continuous_scores(exp, state, held_out),
            **diagnostics(exp, state),
            **split_diagnostics(exp, state),
        }

    scores = {"flow_bits_per_dim": held_out(averaged=True)}
    if state.ema_params is not None:
        scores["flow_bits_per_dim_without_ema"] = held_out(averaged=False)
    if c.eval_importance_samples > 1:
        iw = held_out(averaged=True, draws=1, samples=c.eval_importance_samples)
        scores[f"flow_bits_per_dim_iw{c.eval_importance_samples}"] = iw
    if exp.conditional:
        prior = class_log_prior(d.train, d.num_classes)
        scores.update(
            class_conditional_scores(
                exp.flow,
                state.variables(True),
                d.held_out,
                d.num_bins,
                exp.mesh,
                prior,
                c.eval_batch_size,
                c.seed,
            )
        )
    baseline = pixel_baseline_bits_per_dim(d.train, d.held_out, d.num_bins, c.baseline_smoothing)
    return {
        **scores,
        "baseline_bits_per_dim": baseline,
        "held_out_examples": len(d.held_out),
        **diagnostics(exp, state),
        **split_diagnostics(exp, state),  # the whole split's reconstruction error
    }


def continuous_scores(exp: Experiment, state: TrainState, held_out) -> dict[str, float]:
    """Held-out negative log-likelihood of continuous data in nats (and per dimension), with and
    without the parameters' moving average."""
    dims = math.prod(exp.flow.event_shape)
    scores = {"flow_nats": held_out(averaged=True)}
    if state.ema_params is not None:
        scores["flow_nats_without_ema"] = held_out(averaged=False)
    scores.update({f"{name}_per_dim": value / dims for name, value in scores.items()})
    return {**scores, "held_out_examples": len(exp.dataset.held_out)}


CLASS_SAMPLE_TEMPERATURE = 0.7
PLOT_EXAMPLES = 2000  # held-out points drawn beside the samples of continuous data


def write_samples(exp: Experiment, state: TrainState, workdir: str | Path) -> Path:
    """The sample grid (one row per temperature); a class-conditional flow's grid has one row per
    class at T = 0.7 instead (`samples_by_class_T0.7.png`)."""
    c = exp.config
    key = sample_key(c.seed)
    if not exp.dataset.discrete:
        if exp.conditional:
            raise ConfigError(
                "samples of a conditional flow on continuous data need a context: use flow.sample"
            )
        held_out = exp.dataset.held_out[np.arange(min(PLOT_EXAMPLES, len(exp.dataset.held_out)))]
        path = Path(workdir) / "samples.png"
        with writing(path):
            return density_and_samples_plot(exp.flow, state.variables(averaged=True), key, held_out, path)
    if exp.conditional:
        image, _ = class_sample_grid(
            exp.flow, state.variables(averaged=True), key, exp.dataset.num_bins,
            CLASS_SAMPLE_TEMPERATURE, c.samples_per_temperature, exp.dataset.class_names,
        )  # fmt: skip
        path = Path(workdir) / f"samples_by_class_T{CLASS_SAMPLE_TEMPERATURE}.png"
        with writing(path):
            image.save(path)
        return path
    image, _ = sample_grid(
        exp.flow,
        state.variables(averaged=True),
        key,
        exp.dataset.num_bins,
        c.sample_temperatures,
        c.samples_per_temperature,
    )
    path = sample_grid_path(workdir, c.sample_temperatures)
    with writing(path):
        image.save(path)
    return path


def write_interpolation(exp: Experiment, state: TrainState, workdir: str | Path, pair=(0, 1)) -> Path:
    if not exp.dataset.discrete:
        raise ConfigError("interpolation draws images: it needs discrete image data")
    test = exp.dataset.held_out
    a, b = test[np.array([pair[0]])][0], test[np.array([pair[1]])][0]
    label = int(test.labels(np.array([pair[0]]))[0]) if exp.conditional else None
    image = interpolate(
        exp.flow, state.variables(averaged=True), a, b, exp.dataset.num_bins,
        exp.config.interpolation_steps, label,
    )  # fmt: skip
    path = Path(workdir) / f"interpolation_{pair[0]}_{pair[1]}.png"
    with writing(path):
        image.save(path)
    return path


def write_curve(workdir: str | Path, baseline: float | None = None) -> Path:
    return plot_training_curve(Path(workdir), baseline)
