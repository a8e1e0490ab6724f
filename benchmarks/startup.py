"""Time from process start to the end of the first training step, without and with the persistent
compilation cache; prints one JSON line.

    python benchmarks/startup.py [--config experiments/configs/default.py] [--set FIELD=VALUE ...]

Each measurement is a fresh process that does what `python -m experiments.train` does up to its
first step: apply the config's process settings (the compilation cache among them), load the data,
build the flow, initialise, compile and run one step (`jaxflows.train.train` with num_steps=1, in a
temporary workdir). The cache directory starts empty: the first process compiles everything and
fills it ("cold_s"), the second loads from it ("warm_s"). Fields: cold_s, warm_s, speedup =
cold_s / warm_s, and each process's first-step time (compilation included) as TrainResult reports it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "experiments" / "configs" / "default.py"


def child(config_path: str, overrides: list[str], cache: str, workdir: str) -> None:
    """One process: settings, data, flow, init, compile, one step; prints its JSON timings."""
    from jaxflows import train as jft
    from jaxflows.train import apply_overrides

    config = apply_overrides(jft.load_config(config_path), [*overrides, f"compilation_cache_dir={cache}"])
    config = config.replace(num_steps=1, checkpoint_every=1, train_time_limit_s=None)
    jft.apply_process_settings(config)
    result = jft.train(config, workdir, progress=False)
    print(json.dumps({"to_first_step_s": round(_process_age(), 2), "first_step_s": result.first_step_s}))


def _process_age() -> float:
    """Seconds since this process started (Linux: /proc/self/stat's start time)."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--child", nargs=2, metavar=("CACHE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.config, args.overrides, *args.child)
        return {}
    runs = []
    with tempfile.TemporaryDirectory(prefix="jaxflows-startup-") as tmp:
        for i in range(2):
            command = [
                sys.executable,
                __file__,
                "--config",
                args.config,
                "--child",
                f"{tmp}/cache",
                f"{tmp}/w{i}",
            ]
            if args.overrides:
                command += ["--set", *args.overrides]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                sys.exit(f"startup run {i} failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(lines[-1]))
    cold, warm = runs[0]["to_first_step_s"], runs[1]["to_first_step_s"]
    result = {
        "config": str(
            Path(args.config).relative_to(REPO) if Path(args.config).is_absolute() else args.config
        ),
        "overrides": args.overrides,
        "cold_s": cold,
        "warm_s": warm,
        "speedup": round(cold / warm, 2),
        "cold_first_step_s": round(runs[0]["first_step_s"], 2),
        "warm_first_step_s": round(runs[1]["first_step_s"], 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
