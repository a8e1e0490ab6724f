"""Process-level settings of a training process: multi-process start, the compilation cache, the
PRNG, CPU devices, malloc.

**Multi-process runs** (`initialize_distributed`). Every process runs the same program on its own
devices; process 0's address is the coordinator. docs/multihost.md has the launch recipes.

**Compilation cache** (`enable_compilation_cache`). JAX can keep compiled programs on disk and load
them in later processes; its cache key covers the program, the compiler flags, the backend and the
versions, so a program compiled for other flags or another device is never served. It is global
JAX state, so importing jaxflows never turns it on: the entry points (`experiments/train.py`, the
comparisons) do, through `apply_process_settings`, in `TrainConfig.compilation_cache_dir`
(`~/.cache/jaxflows/jax` by default; None turns it off). The benchmarks never do: their
`compile_s` is a cold compile.

**CPU devices** (`split_cpu_into_devices`). JAX sees a CPU as one device and XLA:CPU runs a step's
operations one after another, so the cores are busy only part of a step. Exposing each core as a
device makes the data-parallel train step run one batch shard per core side by side. Whether that
pays depends on the model (per-operation overhead is paid once per device), so it is a config
field, `TrainConfig.cpu_devices`, off by default.

**Malloc** (`reuse_freed_memory`). XLA:CPU allocates each execution's temporary buffer afresh and
frees it when the step ends; glibc serves buffers that large with `mmap` and returns them with
`munmap`, so every step faults in its working memory again. `reuse_freed_memory` keeps freed
memory in the process heap (one malloc arena, no `mmap` for large blocks, no trimming), so the next
step reuses the same pages. It is a process-wide choice, so the library never makes it; a config
asks for it with `TrainConfig.reuse_freed_memory`, off by default (compilation gets slower, steps
faster). Both are measured in docs/benchmarks.md, "CPU devices and malloc".
Linux with glibc only; a no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from jaxflows.train.errors import ConfigError, DistributedInitError, ProcessSettingsError

if TYPE_CHECKING:
    from jaxflows.train.config import TrainConfig

MULTIHOST_ENV = "JAXFLOWS_MULTIHOST"
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
HEARTBEAT_TIMEOUT_S = 30


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
) -> None:
    """Join a multi-process JAX run (`jax.distributed.initialize`); call it before any JAX computation.

    Arguments left None come from JAX_COORDINATOR_ADDRESS (HOST:PORT of process 0),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID, and otherwise from JAX's cluster detection (SLURM, Open
    MPI, Cloud TPU, Kubernetes). CPU processes exchange collectives through gloo. A process that
    stops sending heartbeats for `heartbeat_timeout_s` seconds is declared lost and the others
    stop. Raises DistributedInitError when JAX already computed something in this process or the
    processes cannot join. A second call in a process that has joined does nothing.
    """
    import jax

    if jax.distributed.is_initialized():
        return
    coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ENV) or None
    num_processes = _int_setting(num_processes, NUM_PROCESSES_ENV, "num_processes", 1)
    process_id = _int_setting(process_id, PROCESS_ID_ENV, "process_id", 0)
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise DistributedInitError(f"process_id {process_id} is not below num_processes {num_processes}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout_s
        )
    except RuntimeError as error:
        if "must be called before any JAX" in str(error):
            raise DistributedInitError(
                "initialize_distributed() must be called before any JAX computation; this process "
                "has already started JAX's backends (call it first thing, before building a model)"
            ) from None
        raise DistributedInitError(f"could not join the distributed run: {error}") from error
    except ValueError as error:  # nothing given and no cluster detected
        raise DistributedInitError(
            f"{error}: pass coordinator_address, num_processes and process_id (or set "
            f"{COORDINATOR_ENV}, {NUM_PROCESSES_ENV}, {PROCESS_ID_ENV}) outside a detected cluster"
        ) from None


def _int_setting(value: int | None, env: str, name: str, minimum: int) -> int | None:
    raw = os.environ.get(env) if value is None else value
    if raw is None or raw == "":
        return None
    try:
        number = int(raw)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(raw, bool) or number < minimum:
        raise DistributedInitError(f"{name} (or {env}): expected an integer ≥ {minimum}, got {raw!r}")
    return number


def distributed_requested(multihost: bool = False, coordinator_address: str | None = None) -> bool:
    """Whether a launch asks for a multi-process run: `--multihost`, JAXFLOWS_MULTIHOST=1, a
    coordinator address or JAX_COORDINATOR_ADDRESS."""
    return bool(
        multihost
        or os.environ.get(MULTIHOST_ENV) == "1"
        or coordinator_address
        or os.environ.get(COORDINATOR_ENV)
    )


def maybe_initialize_distributed(
    multihost: bool = False,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """`initialize_distributed(...)` when a launch asks for it (`distributed_requested`); on Cloud
    TPU, SLURM and similar clusters `--multihost` alone lets JAX find the coordinator itself. Every
    process then runs the same command; each reads its own share of every batch."""
    if distributed_requested(multihost, coordinator_address):
        initialize_distributed(coordinator_address, num_processes, process_id)


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


_FORCED_DEVICES = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def split_cpu_into_devices(count: int) -> int:
    """Expose the host CPU as `count` JAX devices; returns the number of CPU devices in effect.

    Call it before the first JAX computation (it sets `jax_num_cpu_devices`). An
    `XLA_FLAGS=--xla_force_host_platform_device_count=N` already in the environment wins (tests
    simulate several devices that way) and is returned unchanged. Raises ProcessSettingsError when JAX's
    backends are already running with a different CPU device count.
    """
    import jax

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"split_cpu_into_devices: expected a device count ≥ 1, got {count!r}")
    forced = _FORCED_DEVICES.search(os.environ.get("XLA_FLAGS", ""))
    if forced is not None:
        return int(forced.group(1))
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # backends already initialised: fine if they already have `count`
        have = len(jax.devices("cpu"))
        if have != count:
            raise ProcessSettingsError(
                f"JAX's CPU backend is already running with {have} device(s); call "
                f"split_cpu_into_devices({count}) before the first JAX computation"
            ) from None
    return count


def cpu_devices_for(config: TrainConfig) -> int | None:
    """The CPU device count `config.cpu_devices` asks for: None (leave JAX's one device), an
    int, or "cores": one per available core, reduced to the largest count that divides the batch."""
    wanted = config.cpu_devices
    if wanted != "cores":
        return wanted
    return max(d for d in range(1, available_cores() + 1) if config.batch_size % d == 0)


def enable_compilation_cache(directory: str | os.PathLike | None) -> Path | None:
    """Keep compiled programs in `directory` (`~` expanded; created) for later processes; None: off.

    Programs that took at least 0.2 s to compile are kept (JAX's default, 1 s, would miss most of
    a small model's programs on a CPU). Returns the directory used."""
    import jax

    if directory is None:
        return None
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return path


def apply_process_settings(config: TrainConfig, default_prng_impl: str | None = None) -> None:
    """The process-wide settings a config asks for, before any JAX work: malloc's reuse of freed
    memory (`config.reuse_freed_memory`), the persistent compilation cache
    (`config.compilation_cache_dir`), the PRNG implementation (`config.prng_impl`, else
    `default_prng_impl`, else JAX's default) and the CPU devices."""
    if config.reuse_freed_memory:
        reuse_freed_memory()
    import jax

    enable_compilation_cache(config.compilation_cache_dir)

    prng = config.prng_impl or default_prng_impl
    if prng is not None:
        jax.config.update("jax_default_prng_impl", prng)
    count = cpu_devices_for(config)
    if count is not None:
        split_cpu_into_devices(count)
