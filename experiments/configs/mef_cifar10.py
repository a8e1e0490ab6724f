"""Matrix Exponential Flows on CIFAR-10 (Xiao & Liu 2020, Sec. 6.1, Table 2: 3.32 bits/dim).

From the paper: the Glow-style multi-scale architecture with L = 3 levels, matrix exponential
1x1 convolutions and matrix exponential coupling layers (Fig. 1), 8-bit CIFAR-10, Adam.
Guesses (not stated in the notes available to us): K = 32 steps per level and 512 hidden channels
(Glow's CIFAR-10 setting, which MEF compares against), rank t = 2 for S = A₁A₂, the bound on S,
learning rate 1e-3 with warm-up, batch size 64, gradient clipping and the number of steps.
"""

from jaxflows.train.config import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        dataset="cifar10",  # paper
        n_bits=8,  # paper: 8-bit CIFAR-10
        model={
            "levels": 3,  # paper: L = 3
            "steps": 32,  # guess (Glow's K for CIFAR-10)
            "hidden": 512,  # guess (Glow's width)
            "conv": "matrix_exp",  # paper
            "coupling": "matrix_exp",  # paper
            "mask": "channel",  # paper: channel-wise split (S mixes channels of a pixel)
            "conv_kwargs": {"init_scale": 0.1},  # paper: skew-symmetric init; the scale is a guess
            "coupling_kwargs": {"rank": 2, "bound": 2.0},  # guesses
        },
        batch_size=64,  # guess
        optimizer="adam",  # paper: Adam
        learning_rate=1e-3,  # guess (Glow's)
        warmup_steps=2000,  # guess
        grad_clip_norm=50.0,  # guess
        num_steps=500_000,  # guess
        init_batch_size=512,
        eval_every=5000,
        checkpoint_every=5000,
    )
