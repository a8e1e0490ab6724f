"""A GPU recipe for TarFlow on Fashion-MNIST (issue "TarFlow", item 6): a target of ≤ 3.10 held-out
bits/dim with ≤ 3 M parameters, below Kirichenko et al.'s 69 M-parameter Glow (3.141) and the
shipped long Glow (3.139). NOT YET RUN: no GPU was lent while it was written; the time below is an
estimate from XLA's FLOP count, not a measurement.

    ./run.sh train --config experiments/configs/tarflow_fashion_mnist_gpu.py --workdir runs/tarflow_gpu

The model: 2×2 patches (196 tokens of 4 values: the finest grid, which attention over 196 tokens
makes cheap on a GPU), 8 blocks of 2 causal-transformer layers at width 128 with an MLP ratio of 3,
2,862,144 parameters; uniform dequantisation (bits/dim that bound the data's). Batch 256 for 100
epochs (23,400 steps), Adam at 1e-3 after a 1,000-step warm-up with cosine decay, gradients clipped
at 1, Polyak averaging 0.9995.

Cost: 1,058 GFLOP per training step of batch 256 (`python benchmarks/train_step.py --model tarflow
--image 28x28x1 --batch 256 --model-kwargs '{"patch_size": 2, "width": 128, "blocks": 8,
"layers_per_block": 2, "heads": 4, "mlp_ratio": 3}'`, XLA's cost analysis), 24.8 PFLOP for the
run: about 4 minutes at 100 TFLOP/s (bfloat16 networks, `--set network_dtype=bfloat16`, at ~10%
of an H100's dense peak) and 20 minutes at 20 TFLOP/s (float32 networks). The Glow steps measured
on an H200 reached 1–9% of its TF32 peak (docs/benchmarks.md); a GPU session should first run the
benchmark above and replace this estimate with its images/s and fraction of peak.
"""

from pathlib import Path

from jaxflows.train import TrainConfig, load_config

MODEL = {
    "name": "tarflow",
    "patch_size": 2,
    "width": 128,
    "blocks": 8,
    "layers_per_block": 2,
    "heads": 4,
    "mlp_ratio": 3,
}


def get_config() -> TrainConfig:
    base = load_config(Path(__file__).with_name("tarflow_fashion_mnist.py"))
    return base.replace(
        model=dict(MODEL),
        batch_size=256,
        learning_rate=1e-3,
        warmup_steps=1000,
        ema_decay=0.9995,
        num_steps=23_400,
        eval_every=2340,
        checkpoint_every=1000,
        log_every=100,
        train_time_limit_s=None,
    )
