"""Multi-process training, with real processes on localhost: launching (`initialize_distributed`,
the command line's coordinator flags), one gradient all-reduce per step, results that do not depend
on how the global batch is split over processes and devices, checkpoints written once and resumed
by one process, a lost peer ending the run, and each process reading only its share of the data."""

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxflows.data import batch_indices

ROOT = Path(__file__).resolve().parent.parent
DIGITS = "experiments/configs/digits.py"
# A small digits Glow, log and checkpoint often; with evaluation at the end (the CLI's report).
TINY = ["model.depth=1", "model.hidden=8", "batch_size=16", "init_batch_size=64", "log_every=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int = 1) -> dict:
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _launch(workdir: Path, overrides: list[str], processes: int, port: int | None = None):
    """`experiments.train` in `processes` processes of one device each (one plain process if 1)."""
    base = [sys.executable, "-m", "experiments.train", "--config", DIGITS, "--smoke", "--no_progress"]
    base += ["--workdir", str(workdir), "--set", *TINY, *overrides]
    if processes == 1:
        return [
            subprocess.Popen(base, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ]
    port = port or _free_port()
    flags = ["--coordinator_address", f"localhost:{port}", "--num_processes", str(processes)]
    return [
        subprocess.Popen(
            [*base, *flags, "--process_id", str(i)],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]


def _finish(procs, timeout: float = 900) -> list[tuple[int, str]]:
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        results.append((p.returncode, out if isinstance(out, str) else out.decode()))
    return results


def _losses(workdir: Path) -> dict[int, float]:
    with open(workdir / "metrics.csv") as f:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(f)}


LOSSES_SCRIPT = """
import json, sys
from jaxflows.train import apply_overrides, apply_process_settings, load_config, train
config = apply_overrides(load_config("experiments/configs/digits.py", smoke=True), sys.argv[1:])
apply_process_settings(config)
result = train(config, None, progress=False)
print(json.dumps([row["loss"] for row in result.history]))
"""


def _single_process_losses(devices: int, overrides: list[str]) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", LOSSES_SCRIPT, *TINY, *overrides],
        cwd=ROOT,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.xdist_group("multiprocess")
def test_two_processes_train_like_two_devices_and_write_each_file_once(tmp_path):
    """The cheapest numerical multi-process check, in the default run: two processes of one CPU
    device each train the same 4 steps as one process of two devices (losses equal), and write each
    file once (the slow tests below do 20 steps, three layouts, a resume and a lost peer)."""
    workdir = tmp_path / "run"
    overrides = ["num_steps=4", "checkpoint_every=2"]
    (rc0, out0), (rc1, out1) = _finish(_launch(workdir, overrides, 2))
    assert rc0 == 0 and rc1 == 0, out0[-3000:] + out1[-3000:]
    # the same arithmetic up to the order of the cross-device sums: float32 rounding, ~1e-7 relative
    losses = _losses(workdir)
    np.testing.assert_allclose(
        [losses[s] for s in sorted(losses)], _single_process_losses(2, overrides), rtol=1e-5
    )
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [
        1,
        2,
        4,
    ]  # the first step and the schedule
    assert sorted(_losses(workdir)) == [1, 2, 3, 4]  # one metrics row per step, not one per process
    assert "held-out bits/dim" in out0 and "samples (T=" in out0  # evaluation and samples: process 0
    assert "held-out bits/dim" not in out1 and "samples" not in out1
    assert len(list(workdir.glob("samples_*.png"))) == 1
    assert len(list((workdir / "tensorboard").rglob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_same_losses_for_any_layout_and_one_process_resumes_exactly(tmp_path):
    """2 processes × 1 device, 1 × 2 and 1 × 1 give the same 20 losses (float summation order
    aside); a 1-process run resumed from the 2-process checkpoint of step 10 redoes steps 11-20
    with the same losses."""
    steps = ["num_steps=20", "checkpoint_every=10", "keep_checkpoints=3"]
    workdir = tmp_path / "two"
    (rc0, out0), (rc1, out1) = _finish(_launch(workdir, steps, 2))
    assert rc0 == 0 and rc1 == 0, out0[-3000:] + out1[-3000:]
    two_processes = _losses(workdir)
    reference = np.array([two_processes[s] for s in range(1, 21)])
    np.testing.assert_allclose(_single_process_losses(2, steps), reference, rtol=1e-4)
    np.testing.assert_allclose(_single_process_losses(1, steps), reference, rtol=1e-4)

    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "20")
    ((rc, out),) = _finish(_launch(resumed, steps, 1))
    assert rc == 0, out[-3000:]
    redone = _losses(resumed)
    np.testing.assert_allclose([redone[s] for s in range(11, 21)], reference[10:], rtol=1e-4)


@pytest.mark.slow
def test_a_killed_process_ends_the_other_and_both_resume(tmp_path):
    workdir = tmp_path / "run"
    port = _free_port()
    procs = _launch(workdir, ["num_steps=100000", "checkpoint_every=5"], 2, port)
    deadline = time.monotonic() + 600
    while not (workdir / "checkpoints" / "5").exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no checkpoint"
        time.sleep(0.2)
    time.sleep(1.0)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        out, _ = procs[0].communicate(timeout=90)
    finally:
        procs[0].kill()
    assert time.monotonic() - killed_at < 60
    assert procs[0].returncode != 0
    # JAX names the lost process: "Task 1 heartbeat timeout", or, when the error reaches this
    # process by polling, "The following tasks are unhealthy (stopped sending heartbeats): 1".
    lost = r"task 1\b|unhealthy \(stopped sending heartbeats\):\s*1\b"
    assert re.search(lost, out, re.IGNORECASE), out[-3000:]
    last_good = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())

    (rc0, out0), (rc1, out1) = _finish(
        _launch(workdir, [f"num_steps={last_good + 2}", "checkpoint_every=5"], 2)
    )
    assert rc0 == 0 and rc1 == 0, out0[-3000:] + out1[-3000:]
    assert sorted(_losses(workdir))[-3:] == [last_good, last_good + 1, last_good + 2]


@pytest.mark.parametrize("processes", [2, 4])
def test_each_process_reads_its_share_of_every_global_batch(processes):
    """Over an epoch the shares of a global batch never overlap, every example is read once, and the
    processes' shares laid end to end are the one-process batch (the same global batch)."""
    n, batch = 96, 16
    seen = []
    for step in range(n // batch):
        shares = [batch_indices(n, batch, step, 3, p, processes) for p in range(processes)]
        joined = np.concatenate(shares)
        assert len(set(joined.tolist())) == batch
        np.testing.assert_array_equal(joined, batch_indices(n, batch, step, 3))
        seen.extend(joined.tolist())
    assert sorted(seen) == list(range(n))


ALL_REDUCE_SCRIPT = """
import re, sys
import jax
import numpy as np
from jaxflows.train import apply_overrides, global_batch, init_fn, load_config, replicated, setup
from jaxflows.train.steps import compiled_train_step

def executed_all_reduces(hlo):
    bodies, name = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\\w.\\-]+) .*\\{$", line)
        if header:
            name = header.group(1)
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)

    def count(computation):
        total = 0
        for line in bodies.get(computation, []):
            total += len(re.findall(r"(?<![%\\w.\\-])all-reduce(?:-start)?\\(", line))
            loop = re.search(r"\\bwhile\\(.*body=%?([\\w.\\-]+)", line)
            if loop:
                trips = re.search(r"known_trip_count[^0-9]*(\\d+)", line)
                total += (int(trips.group(1)) if trips else 10**6) * count(loop.group(1))
            for callee in re.findall(r"(?:to_apply|calls|branch_computations)=\\{?%?([\\w.\\-]+)", line):
                total += count(callee)
        return total

    entry = re.search(r"^ENTRY %?([\\w.\\-]+)", hlo, re.M).group(1)
    return count(entry)

counts = []
for depth in (1, 4):
    base = load_config("experiments/configs/digits.py", smoke=True)
    exp = setup(apply_overrides(base, [f"model.depth={depth}", "model.hidden=8", "batch_size=8"]))
    state = jax.device_put(init_fn(exp)(exp.init_batch, 0), replicated(exp.mesh))
    batch = global_batch(np.zeros((8, *exp.dataset.image_shape), np.uint8), exp.mesh)
    hlo = compiled_train_step(exp).lower(state, batch).compile().as_text()
    counts.append(executed_all_reduces(hlo))
print(*counts)
"""


def test_one_gradient_all_reduce_per_step_for_any_depth():
    """On 2 devices the compiled train step executes the same small number of all-reduces for a
    flow of depth 1 and of depth 4 (an all-reduce in a scanned loop's body counts once per trip)."""
    out = subprocess.run(
        [sys.executable, "-c", ALL_REDUCE_SCRIPT],
        cwd=ROOT,
        env=_env(2),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    shallow, deep = map(int, out.stdout.split()[-2:])
    assert shallow == deep and 1 <= deep <= 2


TOO_LATE_SCRIPT = """
import jax.numpy as jnp
from jaxflows.train import DistributedInitError, initialize_distributed
jnp.ones(2).sum().block_until_ready()
try:
    initialize_distributed("localhost:{port}", 2, 0)
except DistributedInitError as error:
    print("refused:", error)
"""


def test_initialize_distributed_after_a_computation_is_refused():
    script = TOO_LATE_SCRIPT.format(port=_free_port())
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "refused:" in out.stdout and "before any JAX computation" in out.stdout


def test_the_command_line_names_bad_process_settings(tmp_path):
    port = _free_port()
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--workdir", str(tmp_path), "--coordinator_address",
         f"localhost:{port}", "--num_processes", "2", "--process_id", "2"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert "process_id 2 is not below num_processes 2" in out.stderr
