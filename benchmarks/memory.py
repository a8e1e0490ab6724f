"""Temporary memory of the compiled train step against depth, standard and invertible backprop.

    python -m benchmarks.memory [--depths 8 32] [--image 64x64x3] [--batch 64]

Builds Glow (L=3, hidden 128, LU 1x1 conv, affine coupling) with K flow steps per level for each
depth and gradient mode, lowers and compiles the real train step (`jaxflows.train.make_train_step`)
on abstract inputs, and reads `compiled.memory_analysis().temp_size_in_bytes`: nothing runs. The
last line is one JSON object: {"standard_temp_bytes": {"8": ..., "32": ...},
"invertible_temp_bytes": {...}, ...}.

With invertible backprop only what scales with the parameters (their gradients, the optimiser's
temporaries) grows with depth; standard backprop also stores every step's activations.

    python -m benchmarks.memory --residual [--terms 4 16] [--depths 4] [--image 16x16x3]

instead compiles the train step of `residual_flow` (Hutchinson traces) for each way of
differentiating the log-det and each number of terms: "series" (i-ResNet: autodiff through
`log_det_terms` terms), and the roulette estimator of Residual Flows (Chen et al. 2019) with
`max_terms` = terms: "scan" (autodiff through a masked scan of all of them), "neumann" (the Neumann
series in a custom_jvp, recomputed in the backward pass) and "backward_in_forward" (computed in the
forward pass; only the gradients are kept). The last line's keys are then "<mode>_temp_bytes",
indexed by the number of terms.
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
RESIDUAL_MODES = ("series", "scan", "neumann", "backward_in_forward")


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
    parser.add_argument(
        "--residual",
        action="store_true",
        help="residual flows: the log-det gradient modes " + ", ".join(RESIDUAL_MODES) + " against --terms",
    )
    parser.add_argument("--terms", type=int, nargs="+", default=[4, 16], help="log-det terms (--residual)")
    return parser.parse_args(argv)


def residual_model_kwargs(mode: str, terms: int) -> dict:
    """`residual_flow` arguments of a log-det gradient mode with `terms` terms (roulette: at most)."""
    if mode == "series":
        return {"log_det_terms": terms}
    roulette = {"estimator": "roulette", "log_det_gradient": mode, "max_terms": terms}
    return {"log_det_terms": terms, "block_kwargs": roulette}


def residual_temp_bytes(shape, steps: int, hidden: int, batch: int, mode: str, terms: int):
    """(temp bytes, parameter count, compile seconds) of a residual flow's compiled train step."""
    import jax
    import numpy as np

    from jaxflows.models import residual_flow
    from jaxflows.train import TrainConfig, abstract_inputs, make_mesh, make_optimizer, make_train_step

    mesh = make_mesh()
    flow = residual_flow(
        shape, depth=steps, hidden=hidden, trace="hutchinson", **residual_model_kwargs(mode, terms)
    )
    optimizer = make_optimizer(TrainConfig(optimizer="adamax"))
    state, pixels = abstract_inputs(flow, optimizer, 256, batch, mesh)
    start = time.perf_counter()
    compiled = make_train_step(flow, optimizer, 256, mesh).lower(state, pixels).compile()
    seconds = time.perf_counter() - start
    params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
    return int(compiled.memory_analysis().temp_size_in_bytes), params, seconds


def residual_main(args: argparse.Namespace, shape: tuple[int, ...]) -> dict:
    """The --residual table: temp bytes per log-det gradient mode and number of terms."""
    import jax

    result: dict = {f"{mode}_temp_bytes": {} for mode in RESIDUAL_MODES}
    depth = args.depths[0]
    for terms in args.terms:
        for mode in RESIDUAL_MODES:
            temp, params, seconds = residual_temp_bytes(shape, depth, args.hidden, args.batch, mode, terms)
            result[f"{mode}_temp_bytes"][str(terms)] = temp
            result["params"] = params
            print(f"terms={terms:3d} {mode:20s} temp {temp / 2**20:9.1f} MiB  compile {seconds:.1f} s")
    result.update(
        depth=depth, hidden=args.hidden, batch=args.batch, image=list(shape), backend=jax.default_backend()
    )
    print(json.dumps(result))
    return result


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
    if args.residual:
        return residual_main(args, shape)
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
