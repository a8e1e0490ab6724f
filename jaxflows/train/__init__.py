"""Training: configs, data, the training loop, checkpoints, evaluation and sampling."""

from jaxflows.train.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
