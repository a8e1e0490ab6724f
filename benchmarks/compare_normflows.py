"""jaxflows' Glow train step against normflows' (PyTorch) on the same architecture, in one run.

    python -m benchmarks.compare_normflows --torch-python /tmp/normflows-venv/bin/python

normflows is never a dependency of jaxflows: install it in a separate virtualenv
(`python3 -m venv /tmp/normflows-venv && /tmp/normflows-venv/bin/pip install torch normflows`)
and pass its interpreter. The reference step is `../shared/bench/normflows_glow.py L K H B STEPS`
(2 PyTorch threads, LU 1x1 conv, affine coupling, 32×32×3; K, the flow steps per level, is `--depth`,
passed to `benchmarks/train_step.py --depth`; `--steps` is its old name). The two are run
alternately `--rounds` times so that both see the same machine load, jaxflows once per
`--cpu-devices` count each round (`--cpu-devices 1,2`: the CPU as one device, and split into two,
one batch shard per core), each without and/or with `--reuse-freed-memory` (`no`, `yes` or `both`:
malloc keeps freed memory, see `jaxflows.train.host`); the last line is one JSON object with the
medians and the ratio of images per second (jaxflows / normflows) for each setting, named by its
CPU device count and "+reuse" ("2+reuse").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMED_FIELDS = ("images_per_sec", "step_ms", "compile_s", "fraction_of_peak")  # train_step.py's medians


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--torch-python", default=os.environ.get("NORMFLOWS_PYTHON"), help="python with normflows"
    )
    parser.add_argument(
        "--normflows-script", default=str(ROOT.parent / "shared" / "bench" / "normflows_glow.py")
    )
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument(
        "--depth",
        "--steps",
        dest="depth",
        type=int,
        default=8,
        help="flow steps per level (K; --steps: old name)",
    )
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10, help="timed train steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each")
    parser.add_argument(
        "--cpu-devices",
        default="1",
        help="comma-separated CPU device counts jaxflows runs with, each every round (e.g. 1,2)",
    )
    parser.add_argument(
        "--reuse-freed-memory",
        choices=("no", "yes", "both"),
        default="no",
        help="run jaxflows without, with, or both without and with train_step.py --reuse-freed-memory",
    )
    args = parser.parse_args(argv)
    try:
        args.cpu_devices = [int(n) for n in args.cpu_devices.split(",")]
    except ValueError:
        parser.error(f"--cpu-devices expects integers separated by commas, got {args.cpu_devices!r}")
    return args


def settings(args) -> list[tuple[int, bool]]:
    """(cpu devices, reuse freed memory) of every jaxflows run of a round."""
    reuse = {"no": (False,), "yes": (True,), "both": (False, True)}[args.reuse_freed_memory]
    return [(n, r) for n in args.cpu_devices for r in reuse]


def setting_name(cpu_devices: int, reuse: bool) -> str:
    return f"{cpu_devices}+reuse" if reuse else str(cpu_devices)


def run_jaxflows(args, cpu_devices: int, reuse: bool) -> dict:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "train_step.py"),
        "--model",
        "glow",
        "--levels",
        str(args.levels),
        "--depth",
        str(args.depth),
        "--hidden",
        str(args.hidden),
        "--batch",
        str(args.batch),
        "--image",
        "32x32x3",
        "--iters",
        str(args.iters),
        "--cpu-devices",
        str(cpu_devices),
        *(["--reuse-freed-memory"] if reuse else []),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_normflows(args) -> dict:
    command = [
        args.torch_python,
        args.normflows_script,
        *(str(v) for v in (args.levels, args.depth, args.hidden, args.batch, args.iters)),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    match = re.search(r"params=(\d+) step=([\d.]+)ms imgs/s=([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"unexpected normflows output: {out!r}")
    return {"params": int(match[1]), "step_ms": float(match[2]), "images_per_sec": float(match[3])}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.torch_python:
        sys.exit("--torch-python (or NORMFLOWS_PYTHON) must name a python with torch and normflows installed")
    if not Path(args.normflows_script).is_file():
        sys.exit(f"normflows reference script not found: {args.normflows_script}")
    ours: dict[tuple[int, bool], list[dict]] = {setting: [] for setting in settings(args)}
    theirs = []
    for round_ in range(args.rounds):
        for n, reuse in ours:
            ours[n, reuse].append(run_jaxflows(args, n, reuse))
        theirs.append(run_normflows(args))
        print(
            f"round {round_ + 1}: "
            + ", ".join(
                f"jaxflows [{setting_name(n, reuse)}] {runs[-1]['images_per_sec']:.1f} img/s "
                f"(compile {runs[-1]['compile_s']:.1f} s)"
                for (n, reuse), runs in ours.items()
            )
            + f"; normflows {theirs[-1]['images_per_sec']:.1f} img/s"
        )
    median = lambda runs, key: statistics.median(r[key] for r in runs)
    torch_ips = median(theirs, "images_per_sec")
    jaxflows = []
    for (n, reuse), runs in ours.items():
        timed = {key: median(runs, key) for key in TIMED_FIELDS}
        entry = {"cpu_devices": n, "reuse_freed_memory": reuse, **timed}
        jaxflows.append(entry | {"ratio": round(entry["images_per_sec"] / torch_ips, 3)})
    result = {
        "architecture": {k: getattr(args, k) for k in ("levels", "depth", "hidden", "batch")},
        "jaxflows": jaxflows,
        "jaxflows_params": next(iter(ours.values()))[0]["params"],
        "normflows_images_per_sec": torch_ips,
        "normflows_step_ms": median(theirs, "step_ms"),
        "normflows_params": theirs[0]["params"],
        "ratio": {setting_name(e["cpu_devices"], e["reuse_freed_memory"]): e["ratio"] for e in jaxflows},
        "rounds": args.rounds,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
