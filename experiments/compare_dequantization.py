"""Uniform against variational dequantisation (Flow++), each with and without Polyak averaging.

    python -m experiments.compare_dequantization [--config PATH] [--set FIELD=VALUE] [--ema 0.999]

Trains the main job's model (`experiments/configs/default.py` unless --config) twice, with uniform
and with variational dequantisation, both keeping a moving average of the parameters, and reports
held-out bits/dim: the one-draw bound (what training optimises) with the raw and the averaged
parameters, and the importance-weighted estimate over `--iw` draws (closer to the true discrete
likelihood, Burda et al. 2016). Writes compare_dequantization.md with command, date and machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from jaxflows.train import add_override_argument, apply_overrides

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.py"
VARIANTS = {"uniform": None, "variational": {"hidden": 8, "depth": 2}}  # 32 hidden: 10x slower steps


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    add_override_argument(parser)
    parser.add_argument("--ema", type=float, default=0.999, help="ema_decay of both runs")
    parser.add_argument("--iw", type=int, default=8, help="importance samples of the estimate")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    from experiments.report import markdown_table, run_facts, save_page
    from jaxflows import train as jft

    base = apply_overrides(jft.load_config(args.config), args.overrides)
    base = base.replace(ema_decay=args.ema, eval_importance_samples=args.iw, train_time_limit_s=None)
    jft.apply_process_settings(base)
    start, rows, dataset = time.perf_counter(), [], None
    for name, dequantizer in VARIANTS.items():
        config = base.replace(dequantizer=dequantizer)
        with tempfile.TemporaryDirectory() as workdir:
            tick = time.perf_counter()
            result = jft.train(config, workdir, progress=False)
            seconds = time.perf_counter() - tick
            scores = jft.evaluate(result.experiment, result.state)
        dataset = result.experiment.dataset
        steps = int(result.state.step)
        rows.append(
            [
                name,
                steps,
                f"{1e3 * seconds / steps:.1f}",
                f"{scores['flow_bits_per_dim_without_ema']:.4f}",
                f"{scores['flow_bits_per_dim']:.4f}",
                f"{scores[f'flow_bits_per_dim_iw{args.iw}']:.4f}",
                f"{scores['baseline_bits_per_dim']:.4f}",
            ]
        )
        print(" | ".join(map(str, rows[-1])), flush=True)
    header = [
        "dequantisation",
        "steps",
        "ms/step",
        "held-out bpd, bound",
        "bound, EMA weights",
        f"EMA weights, {args.iw}-sample IW estimate",
        "per-pixel histogram",
    ]
    data = (
        f"data: {dataset.name} {dataset.image_shape}, {len(dataset.held_out)} held-out images; model "
        f"{base.model}; {base.num_steps} steps of batch {base.batch_size}, lr {base.learning_rate} "
        f"({base.lr_decay}); EMA decay {args.ema}; variational q: `VariationalDequantizer"
        f"({VARIANTS['variational']})`"
    )
    return save_page(
        args.out,
        "compare_dequantization.md",
        "Uniform vs variational dequantisation, with and without Polyak averaging",
        [*run_facts("experiments.compare_dequantization", argv, time.perf_counter() - start), data],
        markdown_table(header, rows),
        "The bound is E_q[log p((x+u)/K) − D log K − log q(u|x)] with one draw per image; the "
        "importance-weighted estimate log (1/S) Σ_s exp(...) over S draws is a tighter lower bound "
        "on log P(x). MEF's Table 2 reports results with variational dequantisation in brackets "
        "(lower bits/dim than uniform), and Flow++ attributes a large part of its gain to it.",
    )


if __name__ == "__main__":
    main()
