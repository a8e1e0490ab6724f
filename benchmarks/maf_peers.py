"""The MAF training step of jaxflows against flowjax's and zuko's on this CPU, one run, alternating.

    .venv/bin/python -m benchmarks.maf_peers --flowjax-python /work/peers/flowjax-venv/bin/python \
        --zuko-python /work/peers/zuko-venv/bin/python [--dim 16 --depth 5 --hidden 128 --batch 512]

The peers are never dependencies of jaxflows: each lives in its own virtualenv
(`python3.11 -m venv /work/peers/flowjax-venv && /work/peers/flowjax-venv/bin/pip install flowjax
jax==0.10.2 jaxlib==0.10.2 optax`, the same jax and so the same XLA as jaxflows' lock;
`python3.11 -m venv /work/peers/zuko-venv && /work/peers/zuko-venv/bin/pip install torch zuko`),
and each runs this file as a worker in its own process (`--worker jaxflows|flowjax|zuko`).

All three build the same MAF: `--depth` layers, each a MADE with two hidden layers of `--hidden`
units and an affine transformer on `--dim` coordinates, a permutation between layers, a standard
normal base, no normalisation layers (jaxflows: `maf(actnorm=False)`; the `jaxflows+actnorm` row
adds its ActNorm). The step is the density direction (one MADE pass per layer), the negative mean
log-likelihood of a batch of `--batch` Gaussian vectors, its gradient and one Adam update: jitted
(JAX; compile time reported apart) or eager PyTorch with 2 threads (`torch.set_num_threads(2)`).
Each worker times `--steps` steps after 3 warm-up steps and prints one JSON line (median ms per
step, its library's versions, the parameter count); the workers alternate for `--rounds` rounds so
that all see the same machine load, and the last line is one JSON object with each one's median
over rounds of its median and of its fastest step, and the ratios (peer ms / jaxflows ms: above 1,
jaxflows is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKERS = ("jaxflows", "jaxflows+actnorm", "flowjax", "zuko")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", choices=WORKERS, help="run one library's step and print its JSON line")
    parser.add_argument("--flowjax-python", default=os.environ.get("FLOWJAX_PYTHON"))
    parser.add_argument("--zuko-python", default=os.environ.get("ZUKO_PYTHON"))
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per worker run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (JAX uses the machine's cores)")
    return parser.parse_args(argv)


def data(dim: int, batch: int):
    """A fixed batch of correlated Gaussian vectors (NumPy, float32)."""
    import numpy as np

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return (rng.normal(size=(batch, dim)) @ mixing.T).astype(np.float32)


def timed(step, state, steps: int) -> tuple[list[float], float, object]:
    """(seconds of each of `steps` steps, seconds of the first call, the final state) of
    state = step(state); `step` returns a state whose leaves can be waited on."""
    import jax

    start = time.perf_counter()
    state = jax.block_until_ready(step(state))
    first = time.perf_counter() - start
    for _ in range(2):
        state = jax.block_until_ready(step(state))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state = jax.block_until_ready(step(state))
        times.append(time.perf_counter() - start)
    return times, first, state


def adam_steps(loss, params, steps: int, *, jit, value_and_grad, apply_updates, trainable=None):
    """`timed` over the Adam step (lr 1e-3) of `loss` from `params`, built with one library's jit,
    value-and-grad and update functions; `trainable` picks what the optimiser state covers."""
    import jax.numpy as jnp
    import optax

    optimizer = optax.adam(1e-3)

    @jit
    def step(state):
        params, opt_state, _ = state
        value, grads = value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return apply_updates(params, updates), opt_state, value

    opt_state = optimizer.init(params if trainable is None else trainable(params))
    return timed(step, (params, opt_state, jnp.zeros(())), steps)


def jaxflows_worker(args, actnorm: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import jaxflows
    from jaxflows.models import maf

    x = jnp.asarray(data(args.dim, args.batch))
    flow = maf(args.dim, depth=args.depth, hidden=(args.hidden, args.hidden), actnorm=actnorm)
    variables = flow.init(jax.random.key(0), x)

    def loss(params):
        return -jnp.mean(flow.apply({**variables, "params": params}, x, method="log_prob"))

    params = variables["params"]
    times, first, state = adam_steps(
        loss,
        params,
        args.steps,
        jit=jax.jit,
        value_and_grad=jax.value_and_grad,
        apply_updates=optax.apply_updates,
    )
    count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    versions = {
        "jaxflows": _version("jaxflows", jaxflows),
        "jax": jax.__version__,
        "optax": optax.__version__,
    }
    return result(args, times, first, float(state[2]), count, versions)


def flowjax_worker(args) -> dict:
    import equinox as eqx
    import flowjax
    import jax
    import jax.numpy as jnp
    import optax
    import paramax
    from flowjax.distributions import Normal
    from flowjax.flows import masked_autoregressive_flow

    x = jnp.asarray(data(args.dim, args.batch))
    flow = masked_autoregressive_flow(
        jax.random.key(0),
        base_dist=Normal(jnp.zeros(args.dim)),
        flow_layers=args.depth,
        nn_width=args.hidden,
        nn_depth=2,
    )
    # flowjax.train's partition: trainable float arrays apart from the rest (masks, permutations)
    params, static = eqx.partition(
        flow, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable)
    )

    def loss(params):
        model = paramax.unwrap(eqx.combine(params, static))
        return -jnp.mean(model.log_prob(x))

    times, first, state = adam_steps(
        loss,
        params,
        args.steps,
        jit=eqx.filter_jit,
        value_and_grad=eqx.filter_value_and_grad,
        apply_updates=eqx.apply_updates,
        trainable=lambda tree: eqx.filter(tree, eqx.is_inexact_array),
    )
    count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(eqx.filter(params, eqx.is_inexact_array)))
    versions = {"flowjax": _version("flowjax", flowjax), "jax": jax.__version__, "optax": optax.__version__}
    return result(args, times, first, float(state[2]), count, versions)


def zuko_worker(args) -> dict:
    import torch
    import zuko

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.from_numpy(data(args.dim, args.batch))
    flow = zuko.flows.MAF(
        features=args.dim, transforms=args.depth, hidden_features=(args.hidden, args.hidden)
    )
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)

    def step() -> float:
        optimizer.zero_grad()
        loss = -flow().log_prob(x).mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(2):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        value = step()
        times.append(time.perf_counter() - start)
    count = sum(p.numel() for p in flow.parameters())
    versions = {
        "zuko": _version("zuko", zuko),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return result(args, times, first, float(value), count, versions)


def _version(name: str, module) -> str:
    from importlib.metadata import version

    return getattr(module, "__version__", None) or version(name)


def result(args, times: list[float], first: float, loss: float, count: int, versions: dict) -> dict:
    return {
        "library": args.worker,
        "step_ms": round(1000 * statistics.median(times), 3),
        "step_ms_min": round(1000 * min(times), 3),
        "first_call_s": round(first, 3),
        "loss": round(loss, 4),
        "parameters": int(count),
        "dim": args.dim,
        "depth": args.depth,
        "hidden": [args.hidden, args.hidden],
        "batch": args.batch,
        "steps": args.steps,
        "versions": versions,
    }


def run_worker(python: str, worker: str, args) -> dict:
    """One worker's JSON line, run by `python` in its own process."""
    command = [python, str(Path(__file__).resolve()), "--worker", worker]
    for name in ("dim", "depth", "hidden", "batch", "steps", "threads"):
        command += [f"--{name}", str(getattr(args, name))]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{worker} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per library the median over rounds of each run's median and fastest step, and each one's
    ratio to jaxflows' (the fastest step is the steadier number on a loaded machine)."""
    summary: dict = {}
    for field in ("step_ms", "step_ms_min"):
        medians = {name: statistics.median(r[field] for r in lines) for name, lines in runs.items()}
        summary[field] = medians
        summary[f"{field}_over_jaxflows"] = {
            name: round(ms / medians["jaxflows"], 3) for name, ms in medians.items() if name != "jaxflows"
        }
    return summary


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        work = {
            "jaxflows": lambda: jaxflows_worker(args, actnorm=False),
            "jaxflows+actnorm": lambda: jaxflows_worker(args, actnorm=True),
            "flowjax": lambda: flowjax_worker(args),
            "zuko": lambda: zuko_worker(args),
        }[args.worker]
        print(json.dumps(work()), flush=True)
        return None
    pythons = {"jaxflows": sys.executable, "jaxflows+actnorm": sys.executable}
    if args.flowjax_python:
        pythons["flowjax"] = args.flowjax_python
    if args.zuko_python:
        pythons["zuko"] = args.zuko_python
    runs: dict[str, list[dict]] = {name: [] for name in pythons}
    for _ in range(args.rounds):
        for name, python in pythons.items():
            line = run_worker(python, name, args)
            runs[name].append(line)
            print(json.dumps(line), flush=True)
    summary = summarise(runs)
    summary.update(
        versions={name: lines[0]["versions"] for name, lines in runs.items()},
        parameters={name: lines[0]["parameters"] for name, lines in runs.items()},
        rounds=args.rounds,
        cpu_count=os.cpu_count(),
    )
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
