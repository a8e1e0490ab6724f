"""Temporary memory of the compiled train step against depth, standard and invertible backprop.

    python -m benchmarks.memory [--depths 8 32] [--image 64x64x3] [--batch 64]

Builds Glow (L=3, hidden 128, LU 1x1 conv, affine coupling) with K flow steps per level for each
depth and gradient mode, lowers and compiles the real train step (`jaxflows.train.make_train_step`)
on abstract inputs, and reads `compiled.memory_analysis().temp_size_in_bytes`: nothing runs. The
last line is one JSON object: {"standard_temp_bytes": {"8": ..., "32": ...},
"invertible_temp_bytes": {...}, ...}.

With invertible backprop only what scales with the parameters (their gradients, the optimiser's
temporaries) grows with depth; standard backprop also stores every step's activations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("standard", "invertible")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[8, 32], help="flow steps per level (K)")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image", default="64x64x3", help="HxWxC")
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=("standard", "remat", "invertible")
    )
    return parser.parse_args(argv)


def temp_bytes(
    shape, levels: int, steps: int, hidden: int, batch: int, gradient: str
) -> tuple[int, int, float]:
    """(temp bytes, parameter count, compile seconds) of the compiled train step."""
    import jax
    import numpy as np

    from jaxflows.models import glow
    from jaxflows.train import TrainConfig, abstract_inputs, make_mesh, make_optimizer, make_train_step

    mesh = make_mesh()
    flow = glow(shape, levels=levels, depth=steps, hidden=hidden, gradient=gradient)
    optimizer = make_optimizer(TrainConfig(optimizer="adamax"))
    state, pixels = abstract_inputs(flow, optimizer, 256, batch, mesh)
    start = time.perf_counter()
    compiled = make_train_step(flow, optimizer, 256, mesh).lower(state, pixels).compile()
    seconds = time.perf_counter() - start
    params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
    return int(compiled.memory_analysis().temp_size_in_bytes), params, seconds


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    shape = tuple(int(s) for s in args.image.lower().split("x"))
    result: dict = {f"{mode}_temp_bytes": {} for mode in args.modes}
    result["params"] = {}
    for depth in args.depths:
        for mode in args.modes:
            temp, params, seconds = temp_bytes(shape, args.levels, depth, args.hidden, args.batch, mode)
            result[f"{mode}_temp_bytes"][str(depth)] = temp
            result["params"][str(depth)] = params
            mib = temp / 2**20
            print(f"K={depth:3d} {mode:10s} temp {mib:9.1f} MiB  params {params:,}  compile {seconds:.1f} s")
    for mode in args.modes:
        temps = result[f"{mode}_temp_bytes"]
        if len(temps) > 1:
            first, last = (temps[str(d)] for d in (min(args.depths), max(args.depths)))
            result[f"{mode}_ratio_{max(args.depths)}_to_{min(args.depths)}"] = round(last / first, 3)
    result.update(
        levels=args.levels,
        hidden=args.hidden,
        batch=args.batch,
        image=list(shape),
        backend=jax.default_backend(),
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
