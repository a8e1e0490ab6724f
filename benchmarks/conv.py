"""XLA's convolution against `jaxflows.ops.matmul_conv` inside a `lax.scan`, as a `Repeat` runs them.

    python -m benchmarks.conv [--batch 64] [--depth 4]

For each 3x3 convolution of the benchmark Glow's coupling networks (L=3, hidden 128, 32×32×3
images: 16×16, 8×8 and 4×4 after squeezing), times the forward pass and forward + backward
(gradients of input and kernel) of `depth` convolutions scanned over stacked kernels, and prints
milliseconds per convolution and GFLOP/s (forward + backward counted as 3× the forward FLOPs).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (height, width, c_in, c_out): conv_in (C/2 → hidden) and conv_out (hidden → C) per level
SHAPES = [
    (16, 16, 6, 128),
    (16, 16, 128, 12),
    (8, 8, 12, 128),
    (8, 8, 128, 24),
    (4, 4, 24, 128),
    (4, 4, 128, 48),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4, help="convolutions per scan")
    parser.add_argument("--repeats", type=int, default=7)
    return parser.parse_args(argv)


def median_ms(fn, *args, repeats: int) -> float:
    import numpy as np

    from benchmarks.timing import call_times

    return 1000 * float(np.median(call_times(fn, *args, repeats=repeats)))


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    from jax import lax

    from jaxflows.ops import matmul_conv, same_padding, xla_conv

    padding = same_padding((3, 3))
    impls = {"xla": xla_conv, "matmul": matmul_conv}
    rows = []
    for height, width, c_in, c_out in SHAPES:
        keys = jax.random.split(jax.random.key(0), 3)
        xs = jax.random.normal(keys[0], (args.depth, args.batch, height, width, c_in))
        kernels = 0.05 * jax.random.normal(keys[1], (args.depth, 3, 3, c_in, c_out))
        cotangents = jax.random.normal(keys[2], (args.depth, args.batch, height, width, c_out))
        gflop = 2 * args.batch * height * width * c_in * c_out * 9 / 1e9
        row = {"shape": [height, width, c_in, c_out], "forward_gflop": round(gflop, 4)}
        for name, conv in impls.items():

            def loss(kernels, xs, conv=conv, cotangents=cotangents):
                def body(total, inputs):
                    x, kernel, g = inputs
                    return total + jnp.sum(conv(x, kernel, padding) * g), None

                return lax.scan(body, 0.0, (xs, kernels, cotangents))[0]

            forward = median_ms(jax.jit(loss), kernels, xs, repeats=args.repeats) / args.depth
            both = median_ms(jax.jit(jax.grad(loss, argnums=(0, 1))), kernels, xs, repeats=args.repeats)
            both /= args.depth
            row[name] = {
                "forward_ms": round(forward, 2),
                "forward_backward_ms": round(both, 2),
                "forward_backward_gflops": round(3 * gflop / both * 1e3, 1),
            }
            print(
                f"{height:2d}x{width:<2d} {c_in:3d}->{c_out:<3d} {name:6s} forward {forward:7.2f} ms  "
                f"forward+backward {both:8.2f} ms ({3 * gflop / both * 1e3:5.1f} GFLOP/s)"
            )
        rows.append(row)
    result = {"batch": args.batch, "depth": args.depth, "backend": jax.default_backend(), "convs": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
