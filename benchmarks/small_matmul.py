"""Batched products of small matrices, `jnp.matmul` against `jaxflows.ops.batched_matmul`.

    python -m benchmarks.small_matmul [--batch 1568] [--repeats 30]

For each size n (n×n times n×n, `batch` products: the per-pixel matrices of MEF's coupling at
batch 32 and 7×7 pixels), times the forward product and the gradient of a 15-product chain (the
length of a matrix-exponential series with its squarings) under both formulations, in
milliseconds. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = (2, 3, 4, 6, 8, 16, 24)
CHAIN = 15


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=1568)
    parser.add_argument("--repeats", type=int, default=30)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.timing import call_times
    from jaxflows.ops import batched_matmul

    args = parse_args(argv)
    result = {"backend": jax.default_backend(), "batch": args.batch, "sizes": {}}
    for n in SIZES:
        w = 0.3 * jax.random.normal(jax.random.key(n), (args.batch, n, n))
        row = {}
        for name, product in (("matmul", jnp.matmul), ("batched_matmul", batched_matmul)):

            def chain(w, product=product):
                t = w
                for _ in range(CHAIN):
                    t = 0.5 * product(w, t)
                return jnp.sum(t**2)

            forward = jax.jit(product)
            gradient = jax.jit(jax.grad(chain))
            row[f"{name}_ms"] = 1e3 * float(np.median(call_times(forward, w, w, repeats=args.repeats)))
            row[f"{name}_chain_grad_ms"] = 1e3 * float(
                np.median(call_times(gradient, w, repeats=args.repeats))
            )
        result["sizes"][str(n)] = row
        print(f"n={n:3d}  " + "  ".join(f"{k} {v:7.3f}" for k, v in row.items()), flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
