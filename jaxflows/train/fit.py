"""`fit`: one call that fits any flow to arrays, with the training pipeline's own step.

    variables, history = fit(flow, train, held_out, steps=2000, batch_size=256, key=jax.random.key(0))

flowjax's `fit_to_data` is what users know; this is it for jaxflows: continuous float arrays
(−log p(x) in nats) or integer pixels with `levels` (dequantised, bits/dim), unconditional or
with a context per example, early stopping on held-out evaluations. The update is
`make_train_step`'s (the same jitted, data-parallel step as `train()`), batches are
`batch_indices`' (deterministic in the key and the step), held-out scores are `evaluate_held_out`'s.
For checkpoints, resumption, metrics files and sample grids use `train()` with a `TrainConfig`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxflows.core import Flow
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.data import ArraySource, batch_indices, validate_batch
from jaxflows.train.evaluate import evaluate_held_out
from jaxflows.train.experiment import global_batch, make_mesh, replicated
from jaxflows.train.state import init_state, skip_nonfinite
from jaxflows.train.steps import make_train_step


def _examples(x: Any, levels: int | None, flow: Flow, name: str) -> np.ndarray:
    x = np.asarray(x)
    if levels is None and np.issubdtype(x.dtype, np.integer):
        raise InvalidArgumentError(
            f"fit: {name} holds integers ({x.dtype}): discrete data needs levels= (its number of levels, "
            "e.g. 256 for 8-bit pixels); pass floats for continuous data"
        )
    x = validate_batch(x, levels, tuple(flow.event_shape), name)
    if levels is None:
        return x.astype(np.float64 if x.dtype == np.float64 else np.float32, copy=False)
    return x.astype(np.uint8, copy=False)


def _context(flow: Flow, context: Any, n: int, name: str) -> np.ndarray | None:
    if context is None:
        if flow.conditional:
            raise InvalidArgumentError(
                f"fit: this flow is conditional: pass {name} (one row or label per example)"
            )
        return None
    if not flow.conditional:
        raise InvalidArgumentError(f"fit: this flow is unconditional but was given {name}")
    context = np.asarray(context)
    if len(context) != n:
        raise ShapeError(f"fit: {name} has {len(context)} rows for {n} examples")
    return context


def fit(
    flow: Flow,
    train: Any,
    held_out: Any = None,
    *,
    steps: int,
    batch_size: int,
    key: jax.Array,
    levels: int | None = None,
    context: Any = None,
    held_out_context: Any = None,
    learning_rate: float = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    variables: dict[str, Any] | None = None,
    eval_batch_size: int = 1024,
    progress: bool = True,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Fit `flow` to the examples `train` (n, *event_shape) by maximum likelihood.

    Args:
      flow: any `Flow` (a registered builder's, or your own).
      train, held_out: arrays of examples; float arrays are continuous data (the loss is −log p(x)
        in nats per example), integer arrays with `levels` discrete data (dequantised; bits/dim).
        Without `held_out` nothing is evaluated and the final variables are returned.
      steps: updates to make (fewer when `patience` stops early).
      batch_size: examples per update (divisible by the device count: the step is data-parallel
        over every device, as `train()`'s).
      key: a JAX key: initialisation, batch order and dequantisation noise.
      levels: the number of levels of discrete data; None for continuous data.
      context, held_out_context: a conditional flow's context per example: integer labels (n,)
        for `num_classes`, or float rows (n, e) for `context_features`.
      learning_rate: Adam's step size (when `optimizer` is None).
      optimizer: any optax optimiser (non-finite updates are skipped: it is wrapped in
        `skip_nonfinite`).
      eval_every: held-out evaluation (and a history row) every this many steps, and at the end.
      patience: stop after this many evaluations without a better held-out score; the best
        held-out variables are returned. None: run all `steps` (still returning the best).
      variables: start from these variables (e.g. a previous fit) instead of initialising.
      eval_batch_size: examples per evaluation batch.
      progress: show a progress bar.

    Returns:
      (variables, history): the flow's variables (the best held-out ones when `held_out` is
      given), and one dict per evaluation with step, train_loss (mean over the steps since the
      previous row), held_out_loss (when `held_out` is given) and seconds since the start.
    """
    if batch_size < 1 or steps < 1 or eval_every < 1:
        raise InvalidArgumentError(
            f"fit: steps, batch_size and eval_every must be ≥ 1, got {steps}, {batch_size}, {eval_every}"
        )
    if patience is not None and patience < 1:
        raise InvalidArgumentError(
            f"fit: patience counts evaluations and must be ≥ 1 (or None), got {patience}"
        )
    x = _examples(train, levels, flow, "train")
    c = _context(flow, context, len(x), "context")
    held = None
    if held_out is not None:
        h = _examples(held_out, levels, flow, "held_out")
        held = ArraySource(h, _context(flow, held_out_context, len(h), "held_out_context"))
    mesh = make_mesh()
    if batch_size % mesh.devices.size:
        raise InvalidArgumentError(
            f"fit: batch_size {batch_size} is not divisible by {mesh.devices.size} devices"
        )
    if batch_size > len(x):
        raise InvalidArgumentError(f"fit: batch_size {batch_size} exceeds the {len(x)} training examples")
    optimizer = skip_nonfinite(optimizer if optimizer is not None else optax.adam(learning_rate))
    key_data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    init_key, data_key = jax.random.split(key_data)
    order_seed = int(jax.random.randint(data_key, (), 0, np.iinfo(np.int32).max))
    host, hosts = jax.process_index(), jax.process_count()

    def batch(step: int):
        idx = batch_indices(len(x), batch_size, step, order_seed, host, hosts)
        return x[idx] if c is None else (x[idx], c[idx])

    state = init_state(flow, optimizer, batch(0), levels, 0, key=init_key, variables=variables)
    state = jax.device_put(state, replicated(mesh))
    train_step = make_train_step(flow, optimizer, levels, mesh)

    def held_out_score(state) -> float:
        return evaluate_held_out(flow, state.variables(), held, levels, mesh, eval_batch_size, 1, order_seed)

    history: list[dict[str, float]] = []
    best, best_variables, stale = math.inf, None, 0
    losses: list[jax.Array] = []
    start = time.perf_counter()
    bar = tqdm(total=steps, disable=not progress, unit="step")
    try:
        for step in range(steps):
            state, metrics = train_step(state, global_batch(batch(step), mesh))
            losses.append(metrics["loss"])
            done = step + 1
            if done % eval_every and done != steps:
                continue
            row = {"step": done, "train_loss": float(np.mean(jax.device_get(losses)))}
            losses = []
            if held is not None:
                row["held_out_loss"] = score = held_out_score(state)
                if score < best:
                    best, best_variables, stale = score, jax.device_get(state.variables()), 0
                else:
                    stale += 1
            row["seconds"] = time.perf_counter() - start
            history.append(row)
            bar.update(done - bar.n)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.endswith("loss")})
            if patience is not None and stale >= patience:
                break
    finally:
        bar.close()
    return (best_variables if best_variables is not None else jax.device_get(state.variables())), history
