"""Train-step time of the main job's Glow with each coupling, measured side by side.

    .venv/bin/python -m benchmarks.couplings [--rounds 5] [--steps 20]

Affine (48 hidden channels), spline (8 bins, 9 hidden: the affine model's parameter count) and
matrix-exp (48 hidden) couplings on 28x28x1 images, batch 32: each variant compiled once, then
`--rounds` rounds that time `--steps` steps of every variant in turn, so all of them see the same
machine load. Prints one JSON line: median ms/step per variant and each one's ratio to affine.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
import optax

from jaxflows.models import glow
from jaxflows.train import init_state, make_mesh, make_train_step, skip_nonfinite

VARIANTS = {
    "affine": {"coupling": "affine", "hidden": 48},
    "spline": {"coupling": "spline", "hidden": 9, "coupling_kwargs": {"bins": 8, "bound": 3.0}},
    "matrix_exp": {"coupling": "matrix_exp", "hidden": 48},
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    pixels = np.random.default_rng(0).integers(0, 256, (args.batch, 28, 28, 1)).astype(np.int32)
    mesh = make_mesh()
    steps, states = {}, {}
    for name, layers in VARIANTS.items():
        flow = glow((28, 28, 1), levels=2, depth=3, **layers)
        optimizer = skip_nonfinite(optax.adam(1e-3))
        states[name] = init_state(flow, optimizer, pixels, 256, seed=0)
        steps[name] = make_train_step(flow, optimizer, 256, mesh)
        states[name], _ = steps[name](states[name], pixels)  # compile
        jax.block_until_ready(states[name])
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            start = time.perf_counter()
            for _ in range(args.steps):
                states[name], _ = steps[name](states[name], pixels)
            jax.block_until_ready(states[name])
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    median = {name: float(np.median(t)) for name, t in times.items()}
    record = {
        "benchmark": "couplings",
        "batch": args.batch,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "ms_per_step": {name: round(ms, 2) for name, ms in median.items()},
        "ratio_to_affine": {name: round(ms / median["affine"], 2) for name, ms in median.items()},
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
