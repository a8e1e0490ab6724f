"""A small Glow on scikit-learn's 8x8 digits (17 intensity levels); trains in about a minute on a CPU.

Its smoke mode (`load_config(..., smoke=True)`, `--smoke`) is the paper comparisons' base
(experiments/compare.py): half the depth and width, 800 steps, no evaluation during training.
"""

from jaxflows.train import TrainConfig


def get_config(smoke: bool = False) -> TrainConfig:
    config = TrainConfig(
        dataset="digits",
        model={"levels": 2, "depth": 4, "hidden": 64, "conv": "lu", "coupling": "affine"},
        eval_batch_size=512,
        warmup_steps=100,
        num_steps=1500,
        init_batch_size=512,
    )
    if not smoke:
        return config
    return config.replace(
        model={**config.model, "depth": 2, "hidden": 32},
        warmup_steps=50,
        num_steps=800,
        eval_every=0,
        sample_temperatures=(0.7, 1.0),
        samples_per_temperature=8,
        prng_impl="rbg",
    )
