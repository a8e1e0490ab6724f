"""Glow with 3x3 emerging convolutions on CIFAR-10 (Hoogeboom, van den Berg & Welling 2019, Sec 5).

Needs the prepared tfds dataset: `tfds build cifar10 --data_dir=DIR`, then --data_dir=DIR. The paper
reports about 3.34 bits/dim for Emerging against 3.35 for its 1x1-conv Glow baseline. Paper values
are marked (paper); values marked (guess) are this project's choices, taken from glow_cifar10.py.
"""

from jaxflows.train.config import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        dataset="cifar10",
        model={
            "levels": 3,  # L = 3 (paper)
            "depth": 32,  # K = 32 (paper)
            "hidden": 512,  # 512 channels in the coupling networks (paper)
            "conv": "emerging",  # the emerging convolution replaces Glow's 1x1 conv (paper)
            "conv_kwargs": {
                "kernel_size": 3,  # 3x3 emerging = two 2x2 autoregressive convs (paper)
                "inverse_method": "pixels",  # sampling only; the faster solver on CPU (guess)
            },
            "coupling": "affine",  # affine coupling as in Glow (paper)
        },
        n_bits=8,  # 8-bit CIFAR-10 (paper)
        batch_size=64,  # (guess: Glow's per-GPU minibatch)
        eval_batch_size=500,  # (guess)
        optimizer="adamax",  # (guess: Glow's optimiser)
        learning_rate=1e-3,  # (guess: Glow's)
        warmup_steps=4000,  # (guess)
        grad_clip_norm=None,  # (guess)
        num_steps=500_000,  # (guess)
        init_batch_size=512,  # data-dependent ActNorm initialisation batch (guess)
        eval_every=5000,
        checkpoint_every=2000,
        keep_checkpoints=3,
        log_every=100,
    )
