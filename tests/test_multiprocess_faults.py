"""Multi-process runs that fail: start-up (the rendezvous of `jaxflows.train.host`: a taken port,
two processes with one id, a missing peer, each a DistributedInitError that says what to run),
processes whose configs or data differ (ConfigMismatchError before compiling), and the command
line's one-line errors. The rendezvous runs in threads of this process; the few tests that start
real processes are short and share one xdist group, the longer ones are slow-marked."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jaxflows import JaxflowsError
from jaxflows.train.errors import DistributedInitError
from jaxflows.train.host import rendezvous

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_all(calls: list[tuple[int, int]], port: int, timeout_s: float, stagger_s: float = 0.0):
    """rendezvous(localhost:port, n, id) for each (n, id) in its own thread; each one's error or None."""
    results: list = [None] * len(calls)

    def one(i, n, pid):
        try:
            rendezvous(f"localhost:{port}", n, pid, timeout_s=timeout_s)
            results[i] = "joined"
        except DistributedInitError as error:
            results[i] = error

    threads = []
    for i, (n, pid) in enumerate(calls):
        threads.append(threading.Thread(target=one, args=(i, n, pid)))
        threads[-1].start()
        time.sleep(stagger_s)
    for t in threads:
        t.join(timeout_s + 30)
    return results


def test_all_processes_join_in_any_order():
    port = _free_port()
    assert _run_all([(3, 2), (3, 1), (3, 0)], port, 20, stagger_s=0.3) == ["joined"] * 3


def test_the_coordinators_port_in_use_is_named_at_once():
    with socket.socket() as other:
        other.bind(("", 0))
        other.listen()
        port = other.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(DistributedInitError, match=rf"port {port} .* already in use") as info:
            rendezvous(f"localhost:{port}", 2, 0, timeout_s=60)
    assert time.monotonic() - start < 5
    assert "--coordinator_address" in str(info.value) and "--process_id" in str(info.value)
    assert isinstance(info.value, JaxflowsError) and isinstance(info.value, RuntimeError)


def test_two_processes_with_one_id_fail_fast_naming_it():
    port = _free_port()
    start = time.monotonic()
    results = _run_all([(3, 0), (3, 1), (3, 1)], port, 60, stagger_s=0.3)
    assert time.monotonic() - start < 20
    assert all(isinstance(r, DistributedInitError) for r in results), results
    for r in results:
        assert "two processes were given --process_id 1" in str(r) and "own" in str(r)


def test_two_processes_with_id_0_one_finds_the_port_taken_the_other_a_missing_peer():
    port = _free_port()
    first, second = _run_all([(2, 0), (2, 0)], port, 3, stagger_s=0.5)
    assert "already in use" in str(second) and "--process_id 0" in str(second)
    assert re.search(r"process\(es\) \[1\] of 2 did not join within --init_timeout_s=3 s", str(first))


def test_a_peer_that_never_starts_is_named_within_the_timeout():
    port = _free_port()
    start = time.monotonic()
    (coordinator,) = _run_all([(3, 0)], port, 2)
    assert time.monotonic() - start < 6
    assert "process(es) [1, 2] of 3 did not join" in str(coordinator)
    assert f"--coordinator_address localhost:{port} --num_processes 3" in str(coordinator)


def test_a_missing_process_0_and_a_wrong_count_are_named():
    (peer,) = _run_all([(2, 1)], _free_port(), 1.5)
    assert "could not reach process 0 at localhost:" in str(peer) and "--process_id (0..1)" in str(peer)
    coordinator, peer = _run_all([(2, 0), (3, 2)], _free_port(), 20, stagger_s=0.3)
    for r in (coordinator, peer):
        assert "was started with --num_processes 3, process 0 with 2" in str(r)


def test_a_peer_waiting_for_missing_ones_gets_process_0s_message():
    coordinator, peer = _run_all([(3, 0), (3, 1)], _free_port(), 2, stagger_s=0.2)
    assert "process(es) [2] of 3 did not join" in str(coordinator)
    assert str(peer) == str(coordinator)


def _env() -> dict:
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=1".strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _cli(workdir: Path, port: int, process_id: int, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "experiments.train", "--workdir", str(workdir), "--no_progress",
               "--coordinator_address", f"localhost:{port}", "--num_processes", "2",
               "--process_id", str(process_id), *extra]  # fmt: skip
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen(command, cwd=ROOT, env=_env(), text=True, **pipes)


@pytest.mark.xdist_group("multiprocess")
def test_the_command_line_ends_a_bad_start_with_one_line(tmp_path):
    """Process 0 finds its port taken: one `error:` line, exit 1, at once; its peer, told by nobody,
    names the coordinator it could not reach when --init_timeout_s runs out."""
    with socket.socket() as other:
        other.bind(("", 0))
        other.listen()
        port = other.getsockname()[1]
        start = time.monotonic()
        procs = [_cli(tmp_path, port, 0), _cli(tmp_path, _free_port(), 1, "--init_timeout_s", "3")]
        (_, err0), (_, err1) = (p.communicate(timeout=120) for p in procs)
    assert time.monotonic() - start < 60
    assert [p.returncode for p in procs] == [1, 1]
    assert err0.strip().splitlines() == [err0.strip()] and err0.startswith("error: the coordinator's port")
    assert err1.strip().splitlines() == [err1.strip()]
    assert "process 1 could not reach process 0" in err1 and "--init_timeout_s=3 s" in err1


@pytest.mark.xdist_group("multiprocess")
@pytest.mark.slow  # default-run budget; test_each_process_names_the_fields_that_differ checks the comparison
def test_processes_with_different_configs_stop_before_compiling_naming_the_fields(tmp_path):
    port, config = _free_port(), ["--config", "experiments/configs/digits.py", "--smoke"]
    tiny = ["--set", "model.depth=1", "model.hidden=8", "num_steps=2"]
    procs = [
        _cli(tmp_path, port, 0, *config, *tiny, "batch_size=16"),
        _cli(tmp_path, port, 1, *config, *tiny, "batch_size=32", "model.hidden=16"),
    ]
    start = time.monotonic()
    results = [p.communicate(timeout=300) for p in procs]
    assert time.monotonic() - start < 240
    for i, (p, (out, err)) in enumerate(zip(procs, results, strict=True)):
        assert p.returncode == 1, out[-2000:] + err[-2000:]
        assert "were given different config and data" in err, err[-3000:]
        assert f"process {i} (this one)" in err
        assert "batch_size: process 0" in err and "16" in err and "32" in err
        assert "model: process 0" in err and "'hidden': 16" in err
        assert "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists()


class _Store:
    """The coordination service's key-value store, shared by simulated processes."""

    def __init__(self):
        self.values: dict[str, str] = {}

    def key_value_set(self, key, value):
        assert key not in self.values
        self.values[key] = value

    def blocking_key_value_get(self, key, timeout_in_ms):
        if key not in self.values:
            raise RuntimeError("DEADLINE_EXCEEDED")
        return self.values[key]


def _agree_as(monkeypatch, store, me: int, fields: dict, count: int = 2):
    """agree_across_processes(fields) as process `me` of `count` over `store`; the error or None."""
    import jax
    from jax._src import distributed

    from jaxflows.train import host

    monkeypatch.setattr(jax, "process_count", lambda: count)
    monkeypatch.setattr(jax, "process_index", lambda: me)
    monkeypatch.setattr(distributed.global_state, "client", store)
    monkeypatch.setattr(host, "_AGREEMENTS", iter([0]))
    try:
        host.agree_across_processes(fields, timeout_s=1)
    except JaxflowsError as error:
        return error
    return None


def test_each_process_names_the_fields_that_differ(monkeypatch):
    """Continuous data: the data fingerprints (describe_dataset) and the model name differ."""
    import numpy as np

    from jaxflows.data import array_dataset
    from jaxflows.train import TrainConfig, setup
    from jaxflows.train.errors import ConfigMismatchError
    from jaxflows.train.loop import process_fingerprint

    rng = np.random.default_rng(0)
    train, held_out = rng.normal(size=(64, 2)).astype(np.float32), rng.normal(size=(16, 2)).astype(np.float32)
    base = TrainConfig(
        model={"name": "coupling_flow"}, batch_size=8, init_batch_size=8, compilation_cache_dir=None
    )
    a = base.replace(dataset=array_dataset(train, held_out))
    b = base.replace(
        dataset=array_dataset(train + 1e-3, held_out), model={"name": "planar_flow"}, data_dir="/x"
    )
    prints = [process_fingerprint(setup(c)) for c in (a, b)]
    assert process_fingerprint(setup(a)) == prints[0]  # deterministic
    store = _Store()
    assert _agree_as(monkeypatch, _Store(), 0, prints[0], count=1) is None
    store.values["jaxflows/agree/0/1"] = json.dumps(prints[1])
    error = _agree_as(monkeypatch, store, 0, prints[0])
    assert isinstance(error, ConfigMismatchError), error
    message = str(error)
    assert "dataset: process 0 (this one)" in message and "model: process 0 (this one)" in message
    assert "'planar_flow'" in message and "'coupling_flow'" in message and "sha256" in message
    assert "data_dir" not in message and "batch_size" not in message
    same = _Store()
    same.values["jaxflows/agree/0/0"] = json.dumps(prints[0])
    assert _agree_as(monkeypatch, same, 1, prints[0]) is None


def test_a_peer_that_failed_or_never_arrived_is_named(monkeypatch):
    store = _Store()
    store.values["jaxflows/agree/0/1"] = '{"error": "ConfigError: dataset \'nope\' is not registered"}'
    error = _agree_as(monkeypatch, store, 0, {"batch_size": 8})
    assert isinstance(error, DistributedInitError)
    assert "process 1 could not start training: ConfigError: dataset 'nope'" in str(error)
    error = _agree_as(monkeypatch, _Store(), 0, {"batch_size": 8})
    assert isinstance(error, DistributedInitError) and "process 1 did not share" in str(error)


def _digits(workdir: Path, port: int, process_id: int, *overrides: str) -> subprocess.Popen:
    tiny = ["model.depth=1", "model.hidden=8", "batch_size=16", "init_batch_size=64", "log_every=1"]
    config = ["--config", "experiments/configs/digits.py", "--smoke", "--set", *tiny, *overrides]
    return _cli(workdir, port, process_id, *config)


def _rows(workdir: Path) -> list[int]:
    from jaxflows.train.metrics import read_metrics

    return [int(r["step"]) for r in read_metrics(workdir)]


@pytest.mark.slow  # two processes compile and train, twice: ~2-4 min on 2 busy cores
def test_sigterm_to_one_process_stops_both_after_the_same_step_and_the_rerun_resumes(tmp_path):
    from jaxflows.train.checkpoint import CHECKSUMS

    endless = ["num_steps=100000", "checkpoint_every=1000"]
    port = _free_port()
    procs = [_digits(tmp_path, port, i, *endless) for i in range(2)]
    try:
        deadline = time.monotonic() + 400
        while len(_rows(tmp_path)) < 3:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no progress"
            time.sleep(0.2)
        procs[0].send_signal(signal.SIGTERM)  # process 0 alone
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    steps = []
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
        steps.append(int(re.search(r"stopped by SIGTERM at step (\d+)", out + err).group(1)))
    assert steps[0] == steps[1] >= 3, steps
    stopped = steps[0]
    checkpoints = tmp_path / "checkpoints"
    assert stopped in [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()]
    assert (checkpoints / str(stopped) / CHECKSUMS).is_file()
    assert not list(checkpoints.glob("*tmp*"))

    port = _free_port()
    procs = [
        _digits(tmp_path, port, i, f"num_steps={stopped + 2}", "checkpoint_every=1000") for i in range(2)
    ]
    results = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert _rows(tmp_path)[-3:] == [stopped, stopped + 1, stopped + 2]


@pytest.mark.slow  # two processes compile and train: ~1-2 min on 2 busy cores
def test_a_killed_peer_ends_the_survivor_with_one_line_and_intact_checkpoints(tmp_path):
    from jaxflows.train.checkpoint import CHECKSUMS

    port = _free_port()
    procs = [
        _digits(tmp_path, port, i, "num_steps=100000", "checkpoint_every=3", "--heartbeat_timeout_s", "10")
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 400
        while len(_rows(tmp_path)) < 5:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no progress"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)  # kill -9 of process 1 (its supervisor and the trainer)
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=120)
        ended = time.monotonic() - killed
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 1, err[-3000:]
    assert ended < 60
    last = err.strip().splitlines()[-1]
    assert re.match(r"error: process 0: (the run lost process 1|a peer process stopped)", last), err[-3000:]
    assert "Restart every process with the same command" in last and "crash_process0.log" in last
    assert "@ 0x" not in err and "Traceback" not in err
    assert (tmp_path / "crash_process0.log").is_file()
    # every checkpoint but possibly the newest is sealed; the newest, if its sealing was cut short,
    # is complete (orbax lists only committed saves) and the next run restores and seals it
    steps = sorted(
        (p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    assert steps and all((p / CHECKSUMS).is_file() for p in steps[:-1])


JAX_ABORT = """\
E1207 08:39:19.733294   15186 coordination_service.cc:1549] Use error polling to propagate the \
following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
F1207 08:39:19.734121   15204 client.h:80] Terminating process because the JAX distributed service detected \
fatal errors. absl::Status: UNAVAILABLE: Task 1 heartbeat timeout.
*** Check failure stack trace: ***
    @     0x7ffbbf040634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
"""


def test_the_supervisors_line_names_the_lost_process_and_the_checkpoint(tmp_path):
    """The one line a survivor's supervisor prints from JAX's abort (the full text goes to a log)."""
    from experiments.train import crash_summary, parse_args, supervised

    (tmp_path / "checkpoints" / "20").mkdir(parents=True)
    (tmp_path / "checkpoints" / "40.orbax-checkpoint-tmp").mkdir()  # a save the abort cut short
    args = parse_args(["--workdir", str(tmp_path), "--coordinator_address", "h:1", "--num_processes", "2",
                       "--process_id", "0"])  # fmt: skip
    line = crash_summary(JAX_ABORT, -6, args)
    assert line == (
        "error: process 0: the run lost process 1 (JAX: Task 1 heartbeat timeout); the last complete "
        f"checkpoint is step 20 in {tmp_path}. Restart every process with the same command to resume "
        f"(details: {tmp_path / 'crash_process0.log'})"
    )
    assert (tmp_path / "crash_process0.log").read_text() == JAX_ABORT
    gloo = crash_summary(
        "Traceback (most recent call last):\n"
        "JaxRuntimeError: Gloo all-reduce failed: Connection reset by peer\n",
        1,
        args,
    )
    assert "a peer process stopped (its connection closed during a collective)" in gloo
    assert supervised(args) and not supervised(parse_args(["--workdir", str(tmp_path)]))
