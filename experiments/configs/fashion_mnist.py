"""Glow on Fashion-MNIST (28x28x1, 256 levels, from the local idx files): a longer run than the main job."""

from jaxflows.train.config import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        dataset="fashion_mnist",
        model={"levels": 2, "steps": 8, "hidden": 128, "conv": "lu", "coupling": "affine"},
        batch_size=64,
        eval_batch_size=500,
        optimizer="adam",
        learning_rate=1e-3,
        warmup_steps=200,
        num_steps=20_000,
        init_batch_size=512,
        eval_every=2000,
        checkpoint_every=1000,
        log_every=100,
    )
