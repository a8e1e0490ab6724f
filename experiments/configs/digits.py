"""A small Glow on scikit-learn's 8x8 digits (17 intensity levels); trains in about a minute on a CPU."""

from jaxflows.train.config import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        dataset="digits",
        model={"levels": 2, "depth": 4, "hidden": 64, "conv": "lu", "coupling": "affine"},
        batch_size=64,
        eval_batch_size=512,
        optimizer="adam",
        learning_rate=1e-3,
        warmup_steps=100,
        num_steps=1500,
        init_batch_size=512,
        eval_every=500,
        checkpoint_every=500,
        log_every=50,
    )
