"""Train, evaluate or sample a flow from a config file.

    python -m experiments.train                          # the main job: experiments/configs/default.py
    python -m experiments.train --config experiments/configs/digits.py --set num_steps=500
    python -m experiments.train --config experiments/configs/digits.py --smoke   # its smoke mode
    python -m experiments.train --workdir runs/default --mode eval         # held-out bits/dim + baseline
    python -m experiments.train --workdir runs/default --mode sample       # sample grid PNG
    python -m experiments.train --workdir runs/default --mode interpolate  # latent interpolation PNG
    python -m experiments.train --workdir runs/cond --set model.num_classes=10  # class-conditional Glow
    python -m experiments.train --pretrained fashion_mnist_glow_long --mode eval  # a shipped model
    python -m experiments.train --config experiments/configs/two_moons.py  # a vector flow on 2-D points

`--set FIELD=VALUE ...` overrides any TrainConfig field (`model.hidden=64` one key of a dict field).
A class-conditional model (`model.num_classes`) is evaluated given each image's label, as a mixture
over classes, and by Bayes' rule; its sample grid has one row per class at T = 0.7.
Training in a workdir with checkpoints resumes from the latest one. Without --config, the eval,
sample and interpolate modes use the config saved in the workdir. Multi-process (docs/multihost.md):
run the same command in every process with --coordinator_address HOST:PORT --num_processes N
--process_id I (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); on a detected
cluster (SLURM, Open MPI, Cloud TPU) --multihost or JAXFLOWS_MULTIHOST=1 is enough.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import threading
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.py"


def parse_args(argv=None) -> argparse.Namespace:
    from jaxflows.train import add_override_argument

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=None, help="a config file defining get_config()")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="default: runs/default (runs/pretrained/NAME)"
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="eval or sample a shipped model (jaxflows.pretrained.available()) instead of a workdir",
    )
    parser.add_argument("--mode", choices=["train", "eval", "sample", "interpolate"], default="train")
    add_override_argument(parser)
    parser.add_argument(
        "--smoke", action="store_true", help="the config's smoke mode: get_config(smoke=True), a short run"
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--multihost", action="store_true", help="join a multi-process run found by JAX's cluster detection"
    )
    parser.add_argument(
        "--coordinator_address", default=None, help="HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS)"
    )
    parser.add_argument(
        "--num_processes", type=int, default=None, help="processes in the run (or JAX_NUM_PROCESSES)"
    )
    parser.add_argument(
        "--process_id", type=int, default=None, help="this process, 0..N-1 (or JAX_PROCESS_ID)"
    )
    parser.add_argument(
        "--init_timeout_s",
        type=int,
        default=None,
        help="seconds the processes wait for each other at start-up (default 120)",
    )
    parser.add_argument(
        "--heartbeat_timeout_s",
        type=int,
        default=None,
        help="seconds without a heartbeat after which a process is declared lost (default 30)",
    )
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace):
    from jaxflows.train import apply_overrides, load_config, load_workdir_config

    if args.config is not None:
        config = load_config(args.config, smoke=args.smoke)
    elif args.mode != "train" and (args.workdir / "config.json").exists():
        config = load_workdir_config(args.workdir)
    else:
        config = load_config(DEFAULT_CONFIG, smoke=args.smoke)
    return apply_overrides(config, args.overrides)


def pretrained_config(name: str, overrides=()):
    """The config a shipped model was trained with (its card's) with the --set overrides (the network
    policy, evaluation settings), for the process settings."""
    from jaxflows.pretrained import card
    from jaxflows.train import ConfigError, apply_overrides, config_from_dict

    model = card(name)
    if "config" not in model.training:
        raise ConfigError(f"{name}: the card records no training config; use jaxflows.pretrained.load")
    return apply_overrides(config_from_dict(model.training["config"], f"the card of {name}"), overrides)


def pretrained_summary(name: str) -> str:
    from jaxflows.pretrained import card

    model = card(name)
    evaluation, training = model.evaluation, model.training
    if "held_out_bits_per_dim" in evaluation:
        score = f"held-out bits/dim {evaluation['held_out_bits_per_dim']:.4f}"
    elif "held_out_nats" in evaluation:
        score = f"held-out NLL {evaluation['held_out_nats']:.4f} nats"
    else:
        score = "held-out score: none recorded"
    protocol = evaluation.get("protocol", "protocol not recorded").split(";")[0]
    return (
        f"{model.parameter_count} parameters, trained by `{training.get('command', '?')}` at "
        f"{str(training.get('commit', '?'))[:10]}; its card's {score} ({protocol})"
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    if supervised(args):
        sys.exit(supervise(None if argv is None else list(argv), args))
    try:
        run(args)
    except KeyboardInterrupt:  # a second Ctrl-C (the first one saves and stops cleanly)
        interrupted(args.workdir if args.mode == "train" else None)


# A multi-process run's process is a small parent that runs the real one as its child: JAX ends a
# process whose peer died with a C++ abort (SIGABRT and ~40 lines of stack) that nothing inside the
# process can catch. The parent passes the child's output through, keeps JAX's fatal log lines and
# tracebacks in a file of the workdir, and ends with one line naming the lost process and how to
# resume. It forwards SIGTERM and SIGINT to the child once; the child dies with it (PDEATHSIG).
SUPERVISED_ENV = "JAXFLOWS_SUPERVISED"
_CRASH_START = re.compile(r"^(F\d{4} |\*\*\* Check failure|Traceback \(most recent call last\))")
_ABSL_ERROR = re.compile(r"^[EF]\d{4} \d\d:\d\d:\d\d")
_LOST = (
    re.compile(r"(task (\d+) heartbeat timeout)", re.IGNORECASE),
    re.compile(r"(unhealthy \(stopped sending heartbeats\):\s*(\d+))", re.IGNORECASE),
    re.compile(r"(/task:(\d+)\b.{0,80}(?:heartbeat|disconnect|unavailable|died|unhealthy))", re.IGNORECASE),
)


def supervised(args: argparse.Namespace) -> bool:
    """Whether this process should run the real one as a supervised child: a multi-process run
    (the launch flags or environment variables) on Linux, not already the child."""
    multi = args.multihost or args.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    multi = multi or os.environ.get("JAXFLOWS_MULTIHOST") == "1"
    return bool(multi) and os.environ.get(SUPERVISED_ENV) != "1" and sys.platform.startswith("linux")


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed with the parent


def supervise(argv: list[str] | None, args: argparse.Namespace) -> int:
    """Run this command again as a child (`python -m experiments.train argv` when `main` was given
    `argv`) and relay it (see above); returns the exit code."""
    import signal
    import subprocess

    env = {**os.environ, SUPERVISED_ENV: "1"}
    command = list(sys.orig_argv) if argv is None else [sys.executable, "-m", "experiments.train", *argv]
    child = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, process_group=0, preexec_fn=_die_with_parent
    )
    for sig in (signal.SIGTERM, signal.SIGINT):  # the child is in its own group: sent once, by us
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    kept, pending, crashing = [], b"", False
    out = sys.stderr.buffer
    while True:
        try:
            chunk = os.read(child.stderr.fileno(), 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        pending += chunk
        *lines, pending = re.split(rb"(?<=[\r\n])", pending)
        for line in lines:
            text = line.decode(errors="replace")
            crashing = crashing or bool(_CRASH_START.match(text))
            if crashing or _ABSL_ERROR.match(text):
                kept.append(text)
            else:
                out.write(line)
                out.flush()
    if pending:
        out.write(pending)
    code = child.wait()
    if not (crashing or code < 0) or code in (0, 130):  # the child's own (one-line) ending
        out.write("".join(kept).encode())
        return code if code >= 0 else 128 - code
    print(crash_summary("".join(kept), code, args), file=sys.stderr, flush=True)
    return 1


def crash_summary(kept: str, code: int, args: argparse.Namespace) -> str:
    """One line for a child that died: the process lost (from JAX's messages), the last complete
    checkpoint and the command that resumes; the full messages go to the workdir's crash log."""
    me = args.process_id if args.process_id is not None else os.environ.get("JAX_PROCESS_ID", "?")
    workdir = args.workdir or (
        Path("runs/pretrained") / Path(args.pretrained).stem if args.pretrained else Path("runs/default")
    )
    log = workdir / f"crash_process{me}.log"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        log.write_text(kept)
    except OSError:
        log = Path(f"/tmp/jaxflows_crash_process{me}_{os.getpid()}.log")
        log.write_text(kept)
    lost = next((m for pattern in _LOST for m in [pattern.search(kept)] if m), None)
    how = f"exit code {code}" if code >= 0 else f"signal {-code}"
    if lost is not None:
        what = f"the run lost process {lost.group(2)} (JAX: {' '.join(lost.group(1).split())})"
    elif re.search(r"gloo|connection (reset|closed)|broken pipe", kept, re.IGNORECASE):
        what = "a peer process stopped (its connection closed during a collective)"
    else:
        last = [line for line in kept.splitlines() if line.strip()][-1:] or [""]
        what = f"this process failed ({how}): {last[0].strip()[:200]}"
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").glob("[0-9]*") if p.name.isdigit())
    resume = (
        f"the last complete checkpoint is step {steps[-1]} in {workdir}"
        if steps
        else "no checkpoint was saved"
    )
    return (
        f"error: process {me}: {what}; {resume}. Restart every process with the same command to "
        f"resume (details: {log})"
    )


def interrupted(workdir: Path | None) -> None:
    """One line for a run stopped at once by Ctrl-C, naming the checkpoint a rerun resumes from;
    exit 130. The training loop's clean-up has already sealed a save that had completed."""
    from jaxflows.train import checkpoint_dirs

    steps = [int(p.name) for p in checkpoint_dirs(workdir / "checkpoints")] if workdir else []
    where = (
        f"the last complete checkpoint is step {steps[-1]} in {workdir}: rerun the same command to "
        f"resume from it"
        if steps
        else "no checkpoint was saved"
    )
    print(f"interrupted by Ctrl-C: stopped at once; {where}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)  # not waiting for the prefetch and checkpoint threads a second Ctrl-C cut short


def run(args: argparse.Namespace) -> None:
    if args.pretrained is not None and args.mode not in ("eval", "sample"):
        sys.exit("error: --pretrained works with --mode eval or --mode sample")
    if args.workdir is None:
        args.workdir = (
            Path("runs/pretrained") / Path(args.pretrained).stem if args.pretrained else Path("runs/default")
        )
    from jaxflows.train import (
        HEARTBEAT_TIMEOUT_S,
        INIT_TIMEOUT_S,
        DistributedInitError,
        maybe_initialize_distributed,
    )

    try:
        maybe_initialize_distributed(
            args.multihost,
            args.coordinator_address,
            args.num_processes,
            args.process_id,
            heartbeat_timeout_s=args.heartbeat_timeout_s or HEARTBEAT_TIMEOUT_S,
            init_timeout_s=args.init_timeout_s or INIT_TIMEOUT_S,
        )
    except DistributedInitError as error:
        # JAX may have half-started its coordination service: end without its teardown
        print(f"error: {error}", file=sys.stderr, flush=True)
        os._exit(1)

    import jax

    from jaxflows import JaxflowsError
    from jaxflows import train as jft
    from jaxflows.data import DatasetNotPreparedError
    from jaxflows.train import ConfigError, TrainingError

    start = time.perf_counter()
    try:
        config = (
            pretrained_config(args.pretrained, args.overrides) if args.pretrained else resolve_config(args)
        )
    except (ConfigError, FileNotFoundError, TrainingError, JaxflowsError) as error:
        sys.exit(f"error: {error}")
    jft.apply_process_settings(config)  # PRNG and CPU devices, before JAX's backends start
    lead = jax.process_index() == 0
    say = print if lead else (lambda *a, **k: None)
    try:
        if args.mode == "train":
            result = jft.train(config, args.workdir, progress=not args.no_progress)
            exp, state = result.experiment, result.state
            if result.preempted:
                step = int(state.step)
                who = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
                print(f"{who}stopped by {result.signal} at step {step}; checkpoint saved in {args.workdir}")
                if result.signal == "SIGINT":
                    sys.exit(130)
                return
        elif args.pretrained:
            config, exp, state = jft.restore_pretrained(args.pretrained, args.overrides)
            args.workdir.mkdir(parents=True, exist_ok=True)
            say(f"pretrained model {args.pretrained}: {pretrained_summary(args.pretrained)}")
        else:
            exp, state = jft.restore_for_inference(config, args.workdir)
        report(args, config, exp, state, say, lead)
    except (DatasetNotPreparedError, FileNotFoundError, TrainingError, ConfigError, JaxflowsError) as error:
        fail(f"error: {error}")
    say(f"wall time: {time.perf_counter() - start:.1f} s")


def fail(message: str) -> None:
    """Exit 1 with `message` on stderr. A failed checkpoint write can leave orbax's non-daemon
    threads waiting for signals that never come, and the interpreter would wait for them at exit
    forever: with such threads alive, the process ends at once (nothing is left to write)."""
    waiting = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if any(t.is_alive() for t in waiting):
        print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    sys.exit(message)


def report(args, config, exp, state, say, lead: bool) -> None:
    """Evaluate, and write the curve, samples or interpolation the mode asks for."""
    import jax

    from jaxflows import train as jft

    data = exp.dataset
    kind = f"{data.num_bins} levels" if data.discrete else "continuous"
    say(f"dataset: {data.name} ({len(data.train)} train / {len(data.held_out)} held-out, "
        f"{data.event_shape}, {kind}); model: {jft.model_name(config.model)}; step {int(state.step)}; "
        f"{jax.device_count()} {jax.default_backend()} device(s)")  # fmt: skip
    if args.mode in ("train", "eval"):
        scores = jft.evaluate(exp, state)
        if data.discrete:
            report_bits_per_dim(exp, config, scores, say)
        else:
            report_nats(exp, scores, say)
        if args.mode == "train" and lead:
            say(f"training curve: {jft.write_curve(args.workdir, scores.get('baseline_bits_per_dim'))}")
    if args.mode in ("train", "sample") and lead:
        temperatures = (
            "1.0, beside the held-out data"
            if not exp.dataset.discrete
            else "0.7, one row per class"
            if exp.conditional
            else ", ".join(map(str, config.sample_temperatures))
        )
        say(f"samples (T={temperatures}): {jft.write_samples(exp, state, args.workdir)}")
    if args.mode == "interpolate" and lead:
        say(f"interpolation: {jft.write_interpolation(exp, state, args.workdir)}")


def report_bits_per_dim(exp, config, scores, say) -> None:
    """The held-out report of discrete data: bits/dim of the flow and the baseline, per level."""
    from jaxflows import train as jft

    given = " given the label" if exp.conditional else ""
    say(f"held-out bits/dim (flow{given}):{' ' * (29 - len(given))}{scores['flow_bits_per_dim']:.4f}")
    if "marginal_bits_per_dim" in scores:
        say(f"held-out bits/dim (flow, marginal over classes): {scores['marginal_bits_per_dim']:.4f}")
        say(f"Bayes-rule accuracy (argmax_c log p(x|c) + log p(c)): {scores['bayes_accuracy']:.4f}")
    if "flow_bits_per_dim_without_ema" in scores:
        raw = scores["flow_bits_per_dim_without_ema"]
        say(f"held-out bits/dim (flow, without EMA):        {raw:.4f}")
    for name in [k for k in scores if k.startswith("flow_bits_per_dim_iw")]:
        samples = name.removeprefix("flow_bits_per_dim_iw")
        say(f"held-out bits/dim (flow, {samples} importance samples): {scores[name]:.4f}")
    say(f"held-out bits/dim (per-pixel histogram base): {scores['baseline_bits_per_dim']:.4f}")
    levels = sorted({k.split("/")[1] for k in scores if k.startswith("bpd_term/")})
    say("per level (first held-out examples): " + "; ".join(
        f"{lv} {scores['bpd_term/' + lv]:+.3f} bpd"
        + (f", max reconstruction error {scores['reconstruction_error/' + lv]:.1e}"
           if "reconstruction_error/" + lv in scores else "")
        for lv in levels))  # fmt: skip

    def error(value: float) -> str:
        return f"{value:.1e}" if math.isfinite(value) else f"non-finite ({value})"

    say(f"max reconstruction error of the whole flow: {error(scores['reconstruction_error/model'])} "
        f"(networks {config.network_dtype} at {config.network_precision} precision; "
        f"the maps float32 at highest)")  # fmt: skip
    if "reconstruction_worst/example" in scores:
        worst = int(scores["reconstruction_worst/example"])
        per_level = ", ".join(
            f"{k.split('/', 1)[1]} {error(v)}" for k, v in scores.items()
            if k.startswith("reconstruction_worst/") and k != "reconstruction_worst/example"
        )  # fmt: skip
        median = scores["reconstruction_quantile/p50"]
        nonfinite = int(scores.get("reconstruction_nonfinite/examples", 0))
        say(f"reconstruction error over the held-out split: median {error(median)}, "
            f"99th percentile {error(scores['reconstruction_quantile/p99'])}, worst held-out example {worst}"
            + (f" ({per_level})" if per_level else "")
            + (f"; {nonfinite} examples reconstruct to non-finite values" if nonfinite else ""))  # fmt: skip
    for warning in jft.reconstruction_warnings(scores, exp.dataset.num_bins):
        say(warning)


def report_nats(exp, scores, say) -> None:
    """The held-out report of continuous data: −log p(x) in nats (per example and per dimension),
    and the true density's where the data set has one (the ring of Gaussians)."""
    say(f"held-out NLL (flow): {scores['flow_nats']:.4f} nats ({scores['flow_nats_per_dim']:.4f} per dim)")
    if "flow_nats_without_ema" in scores:
        say(f"held-out NLL (flow, without EMA): {scores['flow_nats_without_ema']:.4f} nats")
    if exp.dataset.name == "ring_of_gaussians":
        import numpy as np

        from jaxflows.data import ring_of_gaussians_log_prob

        held_out = exp.dataset.held_out[np.arange(len(exp.dataset.held_out))]
        say(f"held-out NLL (true density):  {-float(np.mean(ring_of_gaussians_log_prob(held_out))):.4f} nats")
    say(f"max reconstruction error of the whole flow: {scores['reconstruction_error/model']:.1e}")


if __name__ == "__main__":
    main()
