"""Time steady-state train steps of a flow on synthetic images; prints one JSON line.

    python benchmarks/train_step.py --model glow --levels 3 --steps 8 --hidden 128 --batch 32 --image 32x32x3

--model glow | mef (conv="matrix_exp", coupling="matrix_exp") | emerging (conv="emerging").
The step is the real one (jaxflows.train.make_train_step): jit, data-parallel over every device.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL_LAYERS = {
    "glow": {"conv": "lu", "coupling": "affine"},
    "mef": {"conv": "matrix_exp", "coupling": "matrix_exp"},
    "emerging": {"conv": "emerging", "coupling": "affine"},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODEL_LAYERS), default="glow")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="flow steps per level (K)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--image", default="32x32x3", help="HxWxC")
    parser.add_argument("--iters", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--bits", type=int, default=8)
    return parser.parse_args(argv)


def check_registered(layers: dict[str, str], model: str) -> None:
    from jaxflows.models import CONVS, COUPLINGS

    missing = []
    if layers["conv"] not in CONVS:
        missing.append(f"conv {layers['conv']!r}")
    if layers["coupling"] not in COUPLINGS:
        missing.append(f"coupling {layers['coupling']!r}")
    if missing:
        sys.exit(
            f"--model {model} needs {' and '.join(missing)}, which jaxflows.models does not register "
            f"(registered convs: {sorted(CONVS)}; couplings: {sorted(COUPLINGS)})"
        )


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import numpy as np

    from jaxflows.models import glow
    from jaxflows.train import TrainConfig, init_state, make_mesh, make_optimizer, make_train_step
    from jaxflows.train.steps import global_batch, replicated

    layers = MODEL_LAYERS[args.model]
    check_registered(layers, args.model)
    shape = tuple(int(s) for s in args.image.lower().split("x"))
    if len(shape) != 3:
        sys.exit(f"--image must be HxWxC, got {args.image!r}")
    mesh = make_mesh()
    if args.batch % mesh.devices.size:
        sys.exit(f"--batch {args.batch} must be divisible by the {mesh.devices.size} devices")
    bins = 2**args.bits
    flow = glow(shape, levels=args.levels, steps=args.steps, hidden=args.hidden, **layers)
    config = TrainConfig(optimizer="adamax", warmup_steps=10)
    optimizer = make_optimizer(config)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, bins, (args.batch, *shape), dtype=np.int64).astype(np.uint8)
    state = jax.jit(lambda p: init_state(flow, optimizer, p, bins, 0), out_shardings=replicated(mesh))(pixels)
    step = make_train_step(flow, optimizer, bins, mesh)
    batch = global_batch(pixels, mesh)
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.iters):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / args.iters
    result = {
        "model": args.model,
        "levels": args.levels,
        "steps": args.steps,
        "hidden": args.hidden,
        "batch": args.batch,
        "image": list(shape),
        "images_per_sec": round(args.batch / step_s, 2),
        "step_ms": round(1000 * step_s, 3),
        "compile_s": round(compile_s, 2),
        "params": int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params))),
        "loss": round(float(metrics["loss"]), 4),
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
