"""The class-conditional TarFlow p(x | y) on Fashion-MNIST: `tarflow_fashion_mnist.py` with a class
embedding (10 classes) added to every token of every block.

    ./run.sh train --config experiments/configs/tarflow_fashion_mnist_classes.py \
        --workdir runs/tarflow_fashion_mnist_classes

Sample with classifier-free guidance by building the same model with `guidance=w` (and the
trained variables; `python -m experiments.tarflow_samples --workdir DIR`); the unconditional pass
uses the mean class embedding. As the official code, 10% of the training examples are conditioned
on that mean embedding instead of their label (`label_dropout=0.1`), so the pass is trained.
"""

from pathlib import Path

from jaxflows.train import TrainConfig, load_config


def get_config(smoke: bool = False) -> TrainConfig:
    base = load_config(Path(__file__).with_name("tarflow_fashion_mnist.py"), smoke=smoke)
    return base.replace(model={**base.model, "num_classes": 10}, label_dropout=0.1)
