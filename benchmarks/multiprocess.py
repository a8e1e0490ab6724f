"""Images/s of one data-parallel Glow train step laid out two ways on this machine: 1 process × 2
CPU devices and 2 processes × 1 CPU device (gloo collectives over localhost), same model and
global batch, run alternately `--rounds` times; prints one JSON line with the medians and the ratio
(2 processes / 1 process).

    python -m benchmarks.multiprocess                      # Glow L=3 K=8 hidden 128, batch 64, 32x32x3
    python -m benchmarks.multiprocess --levels 2 --depth 2 --hidden 16 --batch 16 --image 16x16x3 --iters 5

Each run is a fresh set of processes (`--worker`, this file), so compilation is outside the timed
steps and both layouts start cold. The step is the library's (`jaxflows.train.make_train_step`);
the images are synthetic (uniform random pixels), the PRNG "rbg" as the configs set it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"1x2": (1, 2), "2x1": (2, 1)}  # processes × devices per process


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--depth", type=int, default=8, help="flow steps per level (K)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--image", default="32x32x3", help="HxWxC")
    parser.add_argument("--iters", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each layout")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "PROCESSES,DEVICES,ID,PORT"
    return parser.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One process of a layout: time `--iters` train steps; process 0 prints images/s."""
    processes, devices, process_id, port = map(int, args.worker.split(","))
    from jaxflows.train import initialize_distributed, split_cpu_into_devices

    if processes > 1:
        initialize_distributed(f"localhost:{port}", processes, process_id)
    split_cpu_into_devices(devices)
    import jax
    import numpy as np

    from jaxflows.models import glow
    from jaxflows.train import (
        TrainConfig,
        global_batch,
        init_state,
        make_mesh,
        make_optimizer,
        make_train_step,
        replicated,
    )

    jax.config.update("jax_default_prng_impl", "rbg")
    shape = tuple(int(s) for s in args.image.lower().split("x"))
    bins = 256
    mesh = make_mesh()
    flow = glow(shape, levels=args.levels, depth=args.depth, hidden=args.hidden)
    optimizer = make_optimizer(TrainConfig(optimizer="adamax", warmup_steps=10))
    pixels = np.random.default_rng(0).integers(0, bins, (args.batch, *shape)).astype(np.uint8)
    state = jax.jit(lambda p: init_state(flow, optimizer, p, bins, 0), out_shardings=replicated(mesh))(pixels)
    local = args.batch // processes
    batch = global_batch(pixels[process_id * local : (process_id + 1) * local], mesh)
    step = make_train_step(flow, optimizer, bins, mesh)
    for _ in range(1 + args.warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.iters):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    if process_id == 0:
        print(json.dumps({"images_per_sec": args.iters * args.batch / (time.perf_counter() - start)}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_layout(args: argparse.Namespace, processes: int, devices: int) -> float:
    """Images/s of one fresh run of the layout (its process 0's report)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["JAX_PLATFORMS"] = "cpu"
    port = _free_port()
    model = ["--levels", str(args.levels), "--depth", str(args.depth), "--hidden", str(args.hidden)]
    model += ["--batch", str(args.batch), "--image", args.image, "--iters", str(args.iters)]
    model += ["--warmup", str(args.warmup)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.multiprocess",
                *model,
                "--worker",
                f"{processes},{devices},{i},{port}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outputs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            sys.exit(f"{processes} process(es) × {devices} device(s) failed:\n{err[-3000:]}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])["images_per_sec"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return {}
    if args.batch % 2:
        sys.exit(f"--batch {args.batch} must be even (two shards)")
    measured: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for _ in range(args.rounds):
        for name, (processes, devices) in LAYOUTS.items():
            measured[name].append(run_layout(args, processes, devices))
    medians = {name: statistics.median(values) for name, values in measured.items()}
    result = {
        "model": f"glow L={args.levels} K={args.depth} hidden={args.hidden}",
        "batch": args.batch,
        "image": args.image,
        "rounds": args.rounds,
        "iters": args.iters,
        "images_per_sec_1_process_2_devices": round(medians["1x2"], 2),
        "images_per_sec_2_processes_1_device": round(medians["2x1"], 2),
        "ratio_2_processes_to_1": round(medians["2x1"] / medians["1x2"], 3),
        "runs": {name: [round(v, 2) for v in values] for name, values in measured.items()},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
