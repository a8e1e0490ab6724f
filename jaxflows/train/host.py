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

import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxflows.train.errors import (
    ConfigError,
    ConfigMismatchError,
    DistributedInitError,
    ProcessSettingsError,
)

if TYPE_CHECKING:
    from jaxflows.train.config import TrainConfig

MULTIHOST_ENV = "JAXFLOWS_MULTIHOST"
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
HEARTBEAT_TIMEOUT_S = 30
INIT_TIMEOUT_S = 120


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
    init_timeout_s: int = INIT_TIMEOUT_S,
) -> None:
    """Join a multi-process JAX run (`jax.distributed.initialize`); call it before any JAX computation.

    Arguments left None come from JAX_COORDINATOR_ADDRESS (HOST:PORT of process 0),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID, and otherwise from JAX's cluster detection (SLURM, Open
    MPI, Cloud TPU, Kubernetes). CPU processes exchange collectives through gloo. A process that
    stops sending heartbeats for `heartbeat_timeout_s` seconds is declared lost and the others
    stop. With all three settings known, the processes first meet at the coordinator's port
    (`rendezvous`): the port already in use, two processes with one id, a different process
    count or a process that has not started within `init_timeout_s` seconds is a
    DistributedInitError in every process that saw it (instead of JAX's abort after 300 s).
    Raises DistributedInitError when JAX already computed something in this process or the
    processes cannot join. A second call in a process that has joined does nothing.
    """
    import jax
    from jax._src import xla_bridge

    if jax.distributed.is_initialized():
        return
    for name, value in (("init_timeout_s", init_timeout_s), ("heartbeat_timeout_s", heartbeat_timeout_s)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DistributedInitError(f"{name}: expected a whole number of seconds ≥ 1, got {value!r}")
    coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ENV) or None
    num_processes = _int_setting(num_processes, NUM_PROCESSES_ENV, "num_processes", 1)
    process_id = _int_setting(process_id, PROCESS_ID_ENV, "process_id", 0)
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise DistributedInitError(f"process_id {process_id} is not below num_processes {num_processes}")
    if xla_bridge.backends_are_initialized():  # after the settings' own errors, which come first
        raise DistributedInitError(
            "initialize_distributed() must be called before any JAX computation; this process "
            "has already started JAX's backends (call it first thing, before building a model)"
        )
    start = time.monotonic()
    if coordinator_address is not None and num_processes is not None and process_id is not None:
        rendezvous(coordinator_address, num_processes, process_id, timeout_s=init_timeout_s)
    remaining = max(10, int(init_timeout_s - (time.monotonic() - start)))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            initialization_timeout=remaining,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
        )
    except RuntimeError as error:
        if "must be called before any JAX" in str(error):
            raise DistributedInitError(
                "initialize_distributed() must be called before any JAX computation; this process "
                "has already started JAX's backends (call it first thing, before building a model)"
            ) from None
        if "Failed to start RPC server" in str(error):
            raise DistributedInitError(_port_in_use(coordinator_address, num_processes)) from None
        raise DistributedInitError(f"could not join the distributed run: {error}") from error
    except ValueError as error:  # nothing given and no cluster detected
        raise DistributedInitError(
            f"{error}: pass coordinator_address, num_processes and process_id (or set "
            f"{COORDINATOR_ENV}, {NUM_PROCESSES_ENV}, {PROCESS_ID_ENV}) outside a detected cluster"
        ) from None


# The rendezvous before JAX's own start-up. JAX's coordination service aborts the process (SIGABRT,
# a C++ stack) when a peer is missing at its deadline, segfaults or hangs when the port is taken,
# and cannot tell a duplicate process id from a restart. So the processes first meet on the
# coordinator's port over plain TCP: process 0 listens there, every other process connects and says
# "jaxflows-hello <num_processes> <process_id> <host> <pid>"; when all have arrived process 0
# answers "go" to each and closes the port, which JAX's coordinator then takes. Any problem is
# answered "error <message>" to the processes concerned and raised in process 0.
_HELLO = "jaxflows-hello"
_RUN = "the same --coordinator_address {address} --num_processes {n} and its own --process_id (0..{last})"


def _how_to_start(address: str, n: int) -> str:
    return _RUN.format(address=address, n=n, last=n - 1)


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedInitError(
            f"coordinator address {address!r}: expected HOST:PORT, e.g. localhost:12355"
        )
    return host.strip("[]"), int(port)


def _port_in_use(address: str, n: int | None) -> str:
    _, port = _split_address(address)
    return (
        f"the coordinator's port {port} ({address}) is already in use on this host: another program "
        f"holds it, or another process of this run was also given --process_id 0. Stop it, or start "
        f"every process with another free port in --coordinator_address (each with its own "
        f"--process_id 0..{(n or 2) - 1})"
    )


def _listen(address: str, n: int) -> socket.socket:
    """Process 0's socket on the coordinator's port, on every interface (as JAX's coordinator)."""
    _, port = _split_address(address)
    try:
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        bind_to: tuple = ("::", port)
    except OSError:  # no IPv6
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        bind_to = ("0.0.0.0", port)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT: a listener refuses
    try:
        server.bind(bind_to)
        server.listen(max(n, 8))
    except OSError as error:
        server.close()
        if error.errno == errno.EADDRINUSE:
            raise DistributedInitError(_port_in_use(address, n)) from None
        reason = error.strerror or error
        raise DistributedInitError(f"process 0 cannot listen on {address}: {reason}") from None
    return server


def _send(conn: socket.socket, line: str) -> None:
    with contextlib.suppress(OSError):
        conn.sendall((line.replace("\n", " ") + "\n").encode())


def _read_line(conn: socket.socket, deadline: float) -> str | None:
    """One line from `conn` before `deadline` (None if it closed or the time ran out)."""
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        conn.settimeout(left)
        try:
            chunk = conn.recv(4096)
        except (TimeoutError, OSError):
            return None
        if not chunk:
            return None
        data += chunk
        if len(data) > 65536:
            return None
    return data.decode(errors="replace").strip()


def _coordinate(address: str, n: int, deadline: float, timeout_s: int) -> None:
    """Process 0's side of `rendezvous`."""
    server = _listen(address, n)
    joined: dict[int, tuple[socket.socket, str]] = {}
    try:
        while len(joined) < n - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [i for i in range(1, n) if i not in joined]
                message = (
                    f"process(es) {missing} of {n} did not join within --init_timeout_s={timeout_s} s "
                    f"(joined: process 0{''.join(f', {i}' for i in sorted(joined))}). Start every "
                    f"process with {_how_to_start(address, n)}; raise --init_timeout_s if they start "
                    f"far apart"
                )
                for conn, _ in joined.values():
                    _send(conn, f"error {message}")
                raise DistributedInitError(message)
            server.settimeout(min(left, 1.0))
            try:
                conn, peer = server.accept()
            except (TimeoutError, OSError):
                continue
            hello = _read_line(conn, min(deadline, time.monotonic() + 10))
            parts = (hello or "").split()
            if len(parts) < 3 or parts[0] != _HELLO or not (parts[1].isdigit() and parts[2].isdigit()):
                conn.close()  # not one of ours (a port scan, an old client): ignore it
                continue
            their_n, their_id = int(parts[1]), int(parts[2])
            where = " ".join(parts[3:5]) if len(parts) >= 5 else str(peer[0])
            problem = None
            if their_n != n:
                problem = (
                    f"process {their_id} ({where}) was started with --num_processes {their_n}, process 0 "
                    f"with {n}; start every process with {_how_to_start(address, n)}"
                )
            elif their_id in joined or their_id == 0:
                here = f"host={socket.gethostname()} pid={os.getpid()}"
                first = joined[their_id][1] if their_id in joined else here
                problem = (
                    f"two processes were given --process_id {their_id} ({first}, and {where}); give each "
                    f"process its own: {_how_to_start(address, n)}"
                )
            if problem is not None:
                _send(conn, f"error {problem}")
                conn.close()
                for other, _ in joined.values():
                    _send(other, f"error {problem}")
                raise DistributedInitError(problem)
            joined[their_id] = (conn, where)
        for conn, _ in joined.values():
            _send(conn, "go")
    finally:
        for conn, _ in joined.values():
            conn.close()
        server.close()


def _join(address: str, n: int, process_id: int, deadline: float, timeout_s: int) -> None:
    """The side of `rendezvous` of a process other than 0."""
    host, port = _split_address(address)
    last_error = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DistributedInitError(
                f"process {process_id} could not reach process 0 at {address} within "
                f"--init_timeout_s={timeout_s} s ({last_error}). Start process 0 on that host with "
                f"{_how_to_start(address, n)}; check that the address names its host and that the "
                f"port is open between the hosts"
            )
        try:
            conn = socket.create_connection((host, port), timeout=min(left, 5.0))
        except OSError as error:
            last_error = error.strerror or str(error)
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
            continue
        break
    with conn:
        _send(conn, f"{_HELLO} {n} {process_id} host={socket.gethostname()} pid={os.getpid()}")
        # process 0 answers by its own deadline; a few seconds more let its message arrive here
        answer = _read_line(conn, deadline + 5)
    if answer == "go":
        return
    if answer is not None and answer.startswith("error "):
        raise DistributedInitError(answer.removeprefix("error "))
    if answer is None and time.monotonic() < deadline:
        raise DistributedInitError(
            f"process 0 at {address} closed the connection before every process joined (it stopped: "
            f"see its output), or something other than a jaxflows process 0 listens there"
        )
    raise DistributedInitError(
        f"process 0 at {address} did not confirm that all {n} processes joined within "
        f"--init_timeout_s={timeout_s} s; start every process with {_how_to_start(address, n)}"
    )


def rendezvous(
    address: str, num_processes: int, process_id: int, *, timeout_s: float = INIT_TIMEOUT_S
) -> None:
    """Meet every other process of a run at `address` (HOST:PORT of process 0) before JAX starts.

    Returns once all `num_processes` processes have arrived; raises DistributedInitError, saying
    what is wrong and what to run, when the port is taken on process 0's host, two processes claim
    one id, the processes disagree on their number, or one has not arrived within `timeout_s`
    seconds. A single process has nobody to meet."""
    if num_processes <= 1:
        return
    deadline = time.monotonic() + timeout_s
    if process_id == 0:
        _coordinate(address, num_processes, deadline, int(timeout_s))
    else:
        _join(address, num_processes, process_id, deadline, int(timeout_s))


_AGREEMENTS = itertools.count()


def agree_across_processes(
    fields: dict[str, Any], *, what: str = "config and data", timeout_s: float = INIT_TIMEOUT_S
) -> None:
    """Check that every process of the run holds the same `fields` (JSON values), before anything
    collective runs; nothing to check in a single process.

    Each process publishes its fields in the coordination service's key-value store and reads every
    other process's, so every process finds a difference itself: a ConfigMismatchError naming
    each differing field with each process's value (instead of a collective that fails later with
    "Received data size doesn't match"). A process that has not published within `timeout_s`
    seconds (it stopped before this point) is a DistributedInitError. Every process must call this
    the same number of times."""
    import jax

    count, me = jax.process_count(), jax.process_index()
    if count == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    prefix = f"jaxflows/agree/{next(_AGREEMENTS)}"
    mine = json.loads(json.dumps(fields, sort_keys=True, default=str))
    client.key_value_set(f"{prefix}/{me}", json.dumps(mine, sort_keys=True))
    differences: dict[str, dict[int, Any]] = {}
    for other in (p for p in range(count) if p != me):
        try:
            theirs = json.loads(client.blocking_key_value_get(f"{prefix}/{other}", int(timeout_s * 1000)))
        except Exception as error:  # DEADLINE_EXCEEDED from the coordination service
            raise DistributedInitError(
                f"process {other} did not share its {what} within {timeout_s:.0f} s (it stopped before "
                f"training: see its output); rerun every process ({type(error).__name__})"
            ) from None
        if "error" in theirs and "error" not in mine:
            raise DistributedInitError(f"process {other} could not start training: {theirs['error']}")
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) != theirs.get(name):
                differences.setdefault(name, {me: mine.get(name)})[other] = theirs.get(name)
    if differences:
        lines = "\n".join(
            f"  {name}: "
            + "; ".join(f"process {p}{' (this one)' * (p == me)}: {v!r}" for p, v in sorted(by.items()))
            for name, by in differences.items()
        )
        raise ConfigMismatchError(
            f"the {count} processes of this run were given different {what}; these fields differ:\n{lines}\n"
            f"run every process with the same --config, --set overrides and data (nothing was compiled)"
        )


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
    *,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
    init_timeout_s: int = INIT_TIMEOUT_S,
) -> None:
    """`initialize_distributed(...)` when a launch asks for it (`distributed_requested`); on Cloud
    TPU, SLURM and similar clusters `--multihost` alone lets JAX find the coordinator itself. Every
    process then runs the same command; each reads its own share of every batch."""
    if distributed_requested(multihost, coordinator_address):
        initialize_distributed(
            coordinator_address,
            num_processes,
            process_id,
            heartbeat_timeout_s=heartbeat_timeout_s,
            init_timeout_s=init_timeout_s,
        )


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
