"""Forward and inverse (sampling) time of the Emerging-convolutions layers (Hoogeboom et al. 2019).

Jitted forward and inverse per batch at 32×32 for EmergingConv (both inverse solvers),
PeriodicConv and Conv1x1QR against Glow's Conv1x1LU:

    .venv/bin/python -m benchmarks.emerging [--batch 16] [--size 32] [--channels 12 48] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np

from jaxflows.bijectors import Conv1x1LU, Conv1x1QR, EmergingConv, PeriodicConv

LAYERS: dict[str, Callable[[], nn.Module]] = {
    "EmergingConv k=3 (pixels)": lambda: EmergingConv(kernel_size=3, inverse_method="pixels"),
    "EmergingConv k=3 (rows)": lambda: EmergingConv(kernel_size=3, inverse_method="rows"),
    "PeriodicConv k=3": lambda: PeriodicConv(kernel_size=3),
    "Conv1x1QR": Conv1x1QR,
    "Conv1x1LU": Conv1x1LU,
}


def time_call(fn: Callable, arg, repeats: int) -> tuple[float, float]:
    """(compile + first call seconds, median seconds of `repeats` further calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(arg))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def benchmark(batch: int, size: int, channels: int, repeats: int) -> list[tuple]:
    x = jax.random.normal(jax.random.key(0), (batch, size, size, channels))
    rows = []
    for name, make in LAYERS.items():
        module = make()
        variables = module.init(jax.random.key(1), x)
        forward = jax.jit(lambda a, m=module, v=variables: m.apply(v, a, method="forward"))
        inverse = jax.jit(lambda a, m=module, v=variables: m.apply(v, a, method="inverse"))
        compile_fwd, t_fwd = time_call(forward, x, repeats)
        y = forward(x)[0]
        compile_inv, t_inv = time_call(inverse, y, repeats)
        error = float(np.max(np.abs(np.asarray(inverse(y)[0]) - np.asarray(x))))
        rows.append((name, channels, t_fwd * 1e3, t_inv * 1e3, compile_fwd + compile_inv, error))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="height = width")
    parser.add_argument("--channels", type=int, nargs="+", default=[12, 48])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the first (median)")
    args = parser.parse_args(argv)

    print(f"device: {jax.devices()[0].device_kind}, batch {args.batch}, {args.size}x{args.size}, float32")
    header = (
        f"{'layer':<28}{'c':>4}{'forward ms':>12}{'inverse ms':>12}{'inv/fwd':>9}{'compile s':>11}"
        f"{'max |x-f⁻¹(f(x))|':>20}"
    )
    print(header)
    print("-" * len(header))
    for channels in args.channels:
        for name, c, fwd, inv, compile_s, error in benchmark(args.batch, args.size, channels, args.repeats):
            print(
                f"{name:<28}{c:>4}{fwd:>12.2f}{inv:>12.2f}{inv / fwd:>9.1f}{compile_s:>11.2f}{error:>20.1e}"
            )


if __name__ == "__main__":
    main()
