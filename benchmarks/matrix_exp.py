"""Benchmark for Matrix Exponential Flows (Xiao & Liu 2020): accuracy and speed.

1. `expm_adaptive` (float32), the layers' exponential, against a float64 scipy reference across
   ‖W‖₁ = 0.1 … 10.
2. Forward + backward of `MatrixExpCoupling` (low-rank φ series) against the same layer computing a
   dense c×c exponential per pixel with a vmapped `jax.scipy.linalg.expm`.
3. One jitted train step (loss + grad + Adam) of a small MEF model against a Glow of the same size.

Run: .venv/bin/python -m benchmarks.matrix_exp [--help for sizes]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from jaxflows.bijectors import MatrixExpAffine, MatrixExpCoupling, PixelExponential
from jaxflows.linalg import expm_adaptive
from jaxflows.models import glow


@dataclasses.dataclass(frozen=True)
class DenseExponential(PixelExponential):
    """exp(S) v with a dense c×c `jax.scipy.linalg.expm` of S per pixel (the direct port)."""

    def times(self, v):
        s = self.matrix()
        exp_s = jax.vmap(jax.scipy.linalg.expm)(s.reshape(-1, *s.shape[-2:])).reshape(s.shape)
        return jnp.einsum("...ij,...j->...i", exp_s, v), None


class DenseMatrixExpCoupling(MatrixExpCoupling):
    """The same layer with a dense c×c `jax.scipy.linalg.expm` per pixel."""

    def inner_bijector(self, h, active_channels):
        inner = super().inner_bijector(h, active_channels)
        e = inner.exponential
        return MatrixExpAffine(inner.shift, DenseExponential(e.factors, e.tolerance, e.max_squarings))


def best_time(fn, *args, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up (compile) call, in seconds."""
    from benchmarks.timing import call_times

    return min(call_times(fn, *args, repeats=repeats))


def expm_accuracy(size: int, samples: int) -> None:
    rng = np.random.default_rng(0)
    ours, theirs = jax.jit(lambda w: expm_adaptive(w)[0]), jax.jit(jax.scipy.linalg.expm)
    print(f"\n## expm_adaptive accuracy, float32 vs float64 scipy ({size}x{size}, worst of {samples} W)")
    print(f"{'‖W‖₁':>6} | {'expm_adaptive':>14} | {'jax.scipy expm':>14}")
    for norm in (0.1, 0.5, 1.0, 2.0, 5.0, 10.0):
        worst = [0.0, 0.0]
        for _ in range(samples):
            w = rng.standard_normal((size, size))
            w *= norm / np.linalg.norm(w, 1)
            ref = scipy.linalg.expm(w)
            for i, fn in enumerate((ours, theirs)):
                got = np.asarray(fn(jnp.float32(w)), np.float64)
                worst[i] = max(worst[i], np.linalg.norm(got - ref) / np.linalg.norm(ref))
        print(f"{norm:>6} | {worst[0]:>14.2e} | {worst[1]:>14.2e}")


def coupling_speed(batch: int, size: int, channels: int, rank: int, hidden: int, repeats: int) -> None:
    x = jax.random.normal(jax.random.key(0), (batch, size, size, channels))
    print(
        f"\n## coupling forward+backward, batch {batch}x{size}x{size}x{channels}, rank {rank}, "
        f"hidden {hidden} (best of {repeats})"
    )
    results = {}
    for name, cls in (
        ("low-rank φ series", MatrixExpCoupling),
        ("vmapped jax.scipy expm", DenseMatrixExpCoupling),
    ):
        module = cls(hidden=hidden, rank=rank, form="low_rank")
        params = module.init(jax.random.key(1), x)["params"]
        params = jax.tree_util.tree_map(lambda p: p + 0.05 * jnp.ones_like(p), params)

        def loss(p, x, module=module):
            y, log_det = module.apply({"params": p}, x)
            return jnp.mean(jnp.sum(y**2, axis=(1, 2, 3)) - log_det)

        step = jax.jit(jax.value_and_grad(loss))
        active = channels - channels // 2
        h = 0.5 * jax.random.normal(jax.random.key(2), (batch, size, size, module.num_params(active)))

        def transform_loss(h, x, params, module=module):
            inner = module.apply({"params": params}, h, x.shape[-1], method="inner_bijector")
            out, terms = inner.forward_and_log_det(x)
            return jnp.sum(out**2) - jnp.sum(terms)

        transform_step = jax.jit(jax.value_and_grad(transform_loss, argnums=(0, 1)))
        results[name] = (
            best_time(step, params, x, repeats=repeats),
            best_time(transform_step, h, x[..., channels // 2 :], params, repeats=repeats),
        )
    (fast, fast_t), (dense, dense_t) = results.values()
    print(f"{'method':>24} | {'layer ms':>9} | {'exp part ms':>11}")
    for name, (seconds, transform_seconds) in results.items():
        print(f"{name:>24} | {seconds * 1e3:>9.2f} | {transform_seconds * 1e3:>11.2f}")
    print(
        f"speed-up: layer {dense / fast:.1f}x, exp part (transform alone) {dense_t / fast_t:.1f}x "
        "(target ≥ 20x)"
    )


def train_step_speed(image: int, batch: int, levels: int, steps: int, hidden: int, repeats: int) -> None:
    shape = (image, image, 3)
    pixels = jax.random.uniform(jax.random.key(0), (batch, *shape))
    dims = math.prod(shape)
    print(
        f"\n## train step (loss+grad+adam, jitted), {batch}x{image}x{image}x3, levels {levels}, "
        f"steps {steps}, hidden {hidden} (best of {repeats})"
    )
    results = {}
    models = {
        "Glow (lu, affine)": dict(conv="lu", coupling="affine"),
        "MEF (matrix_exp x2)": dict(conv="matrix_exp", coupling="matrix_exp"),
    }
    for name, layers in models.items():
        flow = glow(shape, levels=levels, depth=steps, hidden=hidden, **layers)
        variables = flow.init(jax.random.key(1), pixels)
        optimizer = optax.adam(1e-3)
        opt_state = optimizer.init(variables["params"])
        rest = {k: v for k, v in variables.items() if k != "params"}

        def loss(params, x, flow=flow, rest=rest):
            return -jnp.mean(flow.apply({"params": params, **rest}, x)) / dims

        @jax.jit
        def train_step(params, opt_state, x, loss=loss, optimizer=optimizer):
            value, grads = jax.value_and_grad(loss)(params, x)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        results[name] = best_time(train_step, variables["params"], opt_state, pixels, repeats=repeats)
    glow_time, mef_time = results.values()
    print(f"{'model':>24} | {'ms/step':>9}")
    for name, seconds in results.items():
        print(f"{name:>24} | {seconds * 1e3:>9.2f}")
    print(f"MEF / Glow: {mef_time / glow_time:.2f}x (target ≤ 1.3x)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--expm-size", type=int, default=12)
    parser.add_argument("--expm-samples", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--channels", type=int, default=12)
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--coupling-hidden", type=int, default=32)
    parser.add_argument("--model-image", type=int, default=16)
    parser.add_argument("--model-batch", type=int, default=16)
    parser.add_argument("--model-levels", type=int, default=2)
    parser.add_argument("--model-steps", type=int, default=4)
    parser.add_argument("--model-hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0].device_kind}")
    expm_accuracy(args.expm_size, args.expm_samples)
    coupling_speed(args.batch, args.size, args.channels, args.rank, args.coupling_hidden, args.repeats)
    train_step_speed(
        args.model_image,
        args.model_batch,
        args.model_levels,
        args.model_steps,
        args.model_hidden,
        args.repeats,
    )


if __name__ == "__main__":
    main()
