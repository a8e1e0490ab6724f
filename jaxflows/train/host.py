"""Process-level settings for training on a CPU host.

XLA:CPU allocates each execution's temporary buffer afresh (about 300 MB for the Glow train step of
benchmarks/train_step.py) and frees it when the step ends. glibc serves requests that large with
`mmap` and returns them with `munmap`, so every step faults in every page of its working memory
again: 73,800 minor page faults per step there (`resource.getrusage`), about 10% of the step's time.
`reuse_freed_memory` keeps freed memory in the process heap (one malloc arena, no `mmap` for large
blocks, no trimming), so the next step reuses the same pages: 0 faults per step after the first.

It is a process-wide choice, so the library never makes it, and no entry point makes it by default:
with one malloc arena XLA's compiler threads contend for the heap, so compilation takes 4-8 s
longer, while the step time gain is within this machine's noise (2026-11-28, 2-core CPU, Glow
L=3 K=8 H=128 B=64: 72 and 79 images/s with it, 76 and 68 without; compile 16.6/19.8 s against
12.0/14.3 s). Worth trying for long CPU runs (`benchmarks/train_step.py --reuse-freed-memory`).
Linux with glibc only; a no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def reuse_freed_memory() -> bool:
    """Tell glibc's malloc to keep and reuse freed memory; True when the settings were applied.

    Call it before the first JAX computation: threads created later all share the main arena.
    The cost is memory the process keeps after its peak (it is not returned to the system).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(option, value) == 1 for option, value in settings)
