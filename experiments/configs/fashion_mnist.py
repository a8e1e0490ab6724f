"""The long configuration: Fashion-MNIST (28x28x1, 256 levels) in about two hours on the 2-core CPU.
Measured 2026-11-29: 3.1434 held-out bits/dim after 110 minutes of training
(experiments/results/long_fashion_mnist.md); the main job reaches 3.78 in 3 minutes, and a
69 M-parameter Glow trained for 80 epochs (Kirichenko et al.) 3.141.

    ./run.sh train --config experiments/configs/fashion_mnist.py --workdir runs/fashion_mnist_long

Sizing (synthetic-image timing, `python benchmarks/train_step.py --model emerging --levels 2 --depth 8
--hidden 96 --batch 64 --image 28x28x1`): 281 k parameters, ≈ 12 GFLOP per step, about 250 ms per step
of batch 64 on idle cores in the benchmark; in training (data pipeline and evaluations included)
18 000 steps (19 epochs) took 110 minutes. The main job's
lessons carry over: a high learning rate with cosine decay to 0, and the 3x3 emerging convolution,
which beat the LU 1x1 conv by 0.14 bits/dim at the main job's size for 12% more time per step
(`experiments/results/compare_convs.md`). Polyak averaging (0.999) is on; the evaluation reports
held-out bits/dim with and without it. One CPU device: split into one device per core
(`cpu_devices="cores"`) this model trained at 186–200 images/s against 214–225 with one device
(steps 1300–2300 of the committed run), though the synthetic benchmark had it 1.1× faster.
Interrupted runs resume from the last checkpoint. Built on the main job (default.py): the same
schedule and PRNG with a larger model, batch and run, and evaluation during training.
"""

from pathlib import Path

from jaxflows.train import TrainConfig, load_config


def get_config() -> TrainConfig:
    main_job = load_config(Path(__file__).with_name("default.py"))
    return main_job.replace(
        dataset="fashion_mnist",
        model={
            "levels": 2,
            "depth": 8,
            "hidden": 96,
            "conv": "emerging",
            "conv_kwargs": {"kernel_size": 3},
            "coupling": "affine",
        },
        batch_size=64,
        learning_rate=4e-3,
        warmup_steps=500,
        ema_decay=0.999,
        num_steps=18_000,
        init_batch_size=512,
        eval_every=3000,
        checkpoint_every=1000,
        log_every=100,
        train_time_limit_s=None,
    )
