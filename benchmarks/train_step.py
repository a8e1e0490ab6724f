"""Time steady-state train steps of a flow on synthetic images; prints one JSON line.

    python benchmarks/train_step.py --model glow --levels 3 --depth 8 --hidden 128 --batch 64 --image 32x32x3

--model glow | mef (conv="matrix_exp", coupling="matrix_exp") | emerging (conv="emerging") builds
glow() from --levels, --depth and --hidden; any other name is a model registered in
`jaxflows.models.MODELS`, built with the keyword arguments of --model-kwargs (JSON), e.g.

    python benchmarks/train_step.py --model jet --image 28x28x1 --batch 64 \
        --model-kwargs '{"patch_size": 4, "couplings": 8, "depth": 1, "width": 64, "heads": 4}'

(--gradient reaches a registered builder that takes `gradient`; --levels/--depth/--hidden do not).
The step is the real one (jaxflows.train.make_train_step): jit, data-parallel over every device;
`--cpu-devices N` splits the CPU into N devices (one batch shard per core, `jaxflows.train.host`).

The PRNG is "rbg" by default, as every config in experiments/configs sets it (`--prng`).
`--network-dtype` / `--network-precision` set the coupling networks' and priors' policy
(`jaxflows.ops.precision`; the bijection's own products are float32 at HIGHEST whatever they say);
`max_reconstruction_error` is max |inverse(forward(x)) − x| of the benchmark batch after the timed
steps, compiled like the step, in that policy. `--src DIR` imports jaxflows from DIR instead (an
older checkout: `git archive COMMIT jaxflows | tar -x -C DIR`), so two versions of the library can
be timed alternately on one machine; the network flags are then passed only when set.
Fields: compile_s (first call: trace + compile + one step; always cold: this script never turns on
the persistent compilation cache and turns it off), step_ms and images_per_sec (median over
--iters steps), gflops_per_step (XLA's cost analysis of the same step lowered with every `Repeat`
unrolled: XLA counts a loop body once), peak_gflops (a jitted float32 matmul timed in the same run)
and fraction_of_peak = achieved GFLOP/s / peak_gflops.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MODEL_LAYERS = {
    "glow": {"conv": "lu", "coupling": "affine"},
    "mef": {"conv": "matrix_exp", "coupling": "matrix_exp"},
    "emerging": {"conv": "emerging", "coupling": "affine"},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="glow",
        help=f"a Glow preset {sorted(MODEL_LAYERS)} or any model registered in jaxflows.models.MODELS",
    )
    parser.add_argument(
        "--model-kwargs",
        type=json.loads,
        default=None,
        help="JSON keyword arguments of a registered model's builder (not with the Glow presets)",
    )
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--depth", type=int, default=8, help="flow steps per level (K)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--image", default="32x32x3", help="HxWxC")
    parser.add_argument("--gradient", choices=("standard", "remat", "invertible"), default="standard")
    parser.add_argument("--iters", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument(
        "--prng",
        choices=("rbg", "threefry2x32"),
        default="rbg",
        help="jax_default_prng_impl, as the configs set it (threefry compiles ~10 s slower on XLA:CPU)",
    )
    parser.add_argument(
        "--peak-size", type=int, default=None, help="matmul size for the peak (default by backend)"
    )
    parser.add_argument("--network-dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--network-precision", choices=("highest", "high", "default"), default="highest")
    parser.add_argument(
        "--no-flops", action="store_true", help="skip XLA's cost analysis (slow to lower for large K)"
    )
    parser.add_argument("--src", type=Path, default=None, help="import jaxflows from this directory")
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="expose the CPU as N devices (jaxflows.train.split_cpu_into_devices): one batch shard per core",
    )
    parser.add_argument(
        "--reuse-freed-memory",
        action="store_true",
        help="call jaxflows.train.host.reuse_freed_memory() first (no page faults; slower compile)",
    )
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


def build_flow(args: argparse.Namespace, shape: tuple[int, ...], policy: dict):
    """A Glow preset from --levels/--depth/--hidden, or the registered model --model with
    --model-kwargs (and --gradient where its builder takes it)."""
    if args.model in MODEL_LAYERS:
        if args.model_kwargs:
            sys.exit(f"--model-kwargs is for registered models; the preset {args.model!r} takes --levels")
        from jaxflows.models import glow

        layers = MODEL_LAYERS[args.model]
        check_registered(layers, args.model)
        sizes = {"levels": args.levels, "depth": args.depth, "hidden": args.hidden}
        return glow(shape, **sizes, gradient=args.gradient, **policy, **layers)
    from jaxflows.models import MODELS, build_model

    if args.model not in MODELS:
        sys.exit(f"--model {args.model!r}: not a preset {sorted(MODEL_LAYERS)} or model {sorted(MODELS)}")
    kwargs = dict(args.model_kwargs or {})
    if "gradient" in inspect.signature(MODELS[args.model]).parameters:
        kwargs.setdefault("gradient", args.gradient)
    elif args.gradient != "standard":
        sys.exit(f"--model {args.model} takes no gradient argument, got --gradient {args.gradient}")
    return build_model(args.model, shape, kwargs, **policy)


def matmul_peak_gflops(size: int, repeats: int = 10) -> float:
    """GFLOP/s of a jitted float32 size×size matmul (median of `repeats`): the machine's practical peak."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, b))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        times.append(time.perf_counter() - start)
    return 2 * size**3 / float(np.median(times)) / 1e9


def xla_flops(flow, optimizer, bins: int, batch_size: int) -> float:
    """FLOPs of one train step by XLA's cost analysis, lowered (not compiled) for one CPU device.

    Every `Repeat` is unrolled for this (XLA's cost analysis counts a loop body once), and the count
    is the same whatever the backend the step then runs on (GPU lowering has no cost analysis).
    """
    import jax

    from jaxflows.core import scan_unroll
    from jaxflows.train import abstract_inputs, make_mesh, make_train_step

    mesh = make_mesh(jax.devices("cpu")[:1])
    state, pixels = abstract_inputs(flow, optimizer, bins, batch_size, mesh)
    with scan_unroll(True):
        cost = make_train_step(flow, optimizer, bins, mesh).lower(state, pixels).cost_analysis()
    return float(cost["flops"]) if cost and "flops" in cost else float("nan")


def reconstruction_error(flow, variables, pixels, bins: int) -> float:
    """max |inverse(forward(x)) − x| over the dequantised batch, compiled on the default backend."""
    import jax
    import jax.numpy as jnp

    from jaxflows.core import dequantize

    @jax.jit
    def round_trip(v, p):
        x = dequantize(jax.random.key(1), p, bins)
        z, _ = flow.apply(v, x, method="forward")
        return jnp.max(jnp.abs(flow.apply(v, z, method="inverse")[0] - x))

    return float(round_trip(variables, pixels))


def main(argv=None) -> dict:
    args = parse_args(argv)
    sys.path.insert(0, str((args.src or REPO).resolve()))
    if args.reuse_freed_memory:
        from jaxflows.train.host import reuse_freed_memory

        reuse_freed_memory()
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_default_prng_impl", args.prng)
    jax.config.update("jax_enable_compilation_cache", False)  # compile_s is a cold compile, whatever the env
    if args.cpu_devices is not None:
        from jaxflows.train import split_cpu_into_devices

        split_cpu_into_devices(args.cpu_devices)

    from jaxflows.train import (
        TrainConfig,
        global_batch,
        init_state,
        make_mesh,
        make_optimizer,
        make_train_step,
        replicated,
    )

    shape = tuple(int(s) for s in args.image.lower().split("x"))
    if len(shape) != 3:
        sys.exit(f"--image must be HxWxC, got {args.image!r}")
    mesh = make_mesh()
    if args.batch % mesh.devices.size:
        sys.exit(f"--batch {args.batch} must be divisible by the {mesh.devices.size} devices")
    bins = 2**args.bits
    policy = {}
    if args.src is None or (args.network_dtype, args.network_precision) != ("float32", "highest"):
        policy = {"network_dtype": jnp.dtype(args.network_dtype), "network_precision": args.network_precision}
    flow = build_flow(args, shape, policy)
    config = TrainConfig(optimizer="adamax", warmup_steps=10)
    optimizer = make_optimizer(config)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, bins, (args.batch, *shape), dtype=np.int64).astype(np.uint8)
    state = jax.jit(lambda p: init_state(flow, optimizer, p, bins, 0), out_shardings=replicated(mesh))(pixels)
    batch = global_batch(pixels, mesh)

    flops = float("nan") if args.no_flops else xla_flops(flow, optimizer, bins, args.batch)

    step = make_train_step(flow, optimizer, bins, mesh)
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    error = reconstruction_error(flow, state.variables(), pixels, bins)
    backend = jax.default_backend()
    peak = matmul_peak_gflops(args.peak_size or (2048 if backend == "cpu" else 8192))
    achieved = flops / step_s / 1e9
    result = {
        "src": str(args.src or "."),
        "model": args.model,
        **(
            {"levels": args.levels, "depth": args.depth, "hidden": args.hidden}
            if args.model in MODEL_LAYERS
            else {"model_kwargs": args.model_kwargs or {}}
        ),
        "batch": args.batch,
        "image": list(shape),
        "gradient": args.gradient,
        # as passed to the builder; "library default" where --src's library was given none (older code)
        "network_dtype": args.network_dtype if policy else "library default",
        "network_precision": args.network_precision if policy else "library default",
        "prng": args.prng,
        "images_per_sec": round(args.batch / step_s, 2),
        "step_ms": round(1000 * step_s, 3),
        "compile_s": round(compile_s, 2),
        "gflops_per_step": round(flops / 1e9, 3),
        "achieved_gflops": round(achieved, 1),
        "peak_gflops": round(peak, 1),
        "fraction_of_peak": round(achieved / peak, 3),
        "params": int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params))),
        "loss": round(float(metrics["loss"]), 4),
        "max_reconstruction_error": float(f"{error:.3g}"),
        "devices": jax.device_count(),
        "backend": backend,
        "device_kind": jax.devices()[0].device_kind,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
