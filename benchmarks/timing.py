"""Wall times of a jitted call, shared by the benchmark scripts."""

from __future__ import annotations

import time


def call_times(fn, *args, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn(*args)`, after one warm-up (compile) call."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times
