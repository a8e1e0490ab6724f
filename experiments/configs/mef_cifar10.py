"""Matrix Exponential Flows on CIFAR-10 (Xiao & Liu 2020, Sec. 6.1, Table 2: 3.32 bits/dim).

From the paper: the Glow-style multi-scale architecture with L = 3 levels, matrix exponential
1x1 convolutions and matrix exponential coupling layers (Fig. 1), 8-bit CIFAR-10, Adam.
From the official code (changyi7231/MEF, Section 6.1 settings): the coupling's S is a full c×c
matrix per pixel while c ≤ 24 (every level of CIFAR-10) with bounded entries and series of adaptive
length (the `MatrixExpCoupling` defaults), Polyak averaging 0.999, batch 64. It also uses K = 8, 4, 2
steps per level, 128 hidden channels in 8 residual blocks and Adamax at 1e-2 for 50 epochs; our
coupling network is Glow's, so K = 32, 512 hidden channels and Adam at 1e-3 (Glow's CIFAR-10
setting, which MEF compares against) are guesses, as are warm-up, clipping and the number of steps.
"""

from jaxflows.train import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        dataset="cifar10",  # paper
        n_bits=8,  # paper: 8-bit CIFAR-10
        model={
            "levels": 3,  # paper: L = 3
            "depth": 32,  # guess (Glow's K for CIFAR-10)
            "hidden": 512,  # guess (Glow's width)
            "conv": "matrix_exp",  # paper
            "coupling": "matrix_exp",  # paper
            "mask": "channel",  # paper: channel-wise split (S mixes channels of a pixel)
            "conv_kwargs": {"init_scale": 0.1},  # paper: skew-symmetric init; the scale is a guess
            "coupling_kwargs": {},  # official: full S for c ≤ 24, rank 3 above; tolerance 1e-8
        },
        batch_size=64,  # official code
        ema_decay=0.999,  # official code: Polyak averaging
        optimizer="adam",  # paper: Adam
        learning_rate=1e-3,  # guess (Glow's)
        warmup_steps=2000,  # guess
        grad_clip_norm=50.0,  # guess
        num_steps=500_000,  # guess
        init_batch_size=512,
        eval_every=5000,
        checkpoint_every=5000,
    )
