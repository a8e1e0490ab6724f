"""Glow on CIFAR-10 with the paper's settings (Kingma & Dhariwal 2018, Sec 5 and Appendix; openai/glow).

Needs the prepared tfds dataset: `tfds build cifar10 --data_dir=DIR`, then --data_dir=DIR. The paper
reports 3.35 bits/dim. Paper values are marked (paper); the rest are this project's choices.
"""

from jaxflows.train import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        dataset="cifar10",
        model={
            "levels": 3,  # L = 3 (paper)
            "depth": 32,  # K = 32 (paper)
            "hidden": 512,  # 512 channels in the coupling networks (paper)
            "conv": "lu",  # invertible 1x1 conv; the LU form is the paper's faster variant
            "coupling": "affine",  # affine coupling for the CIFAR-10 likelihood result (paper, Table 2)
        },
        n_bits=8,  # 8-bit CIFAR-10 (paper)
        batch_size=64,  # minibatch 64 per GPU (openai/glow n_batch_train)
        eval_batch_size=500,
        optimizer="adamax",  # Adamax (paper, Appendix: "Adamax ... learning rate 0.001")
        learning_rate=1e-3,  # (paper)
        warmup_steps=4000,  # linear warm-up; openai/glow warms up over 10 epochs of 400 steps
        grad_clip_norm=None,  # the paper does not clip gradients
        num_steps=500_000,
        init_batch_size=512,  # data-dependent ActNorm init batch (openai/glow n_batch_init 256 per GPU)
        eval_every=5000,
        checkpoint_every=2000,
        keep_checkpoints=3,
        log_every=100,
    )
