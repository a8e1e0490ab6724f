"""The class-conditional TarFlow p(x | y) on Fashion-MNIST: `tarflow_fashion_mnist.py` with a class
embedding (10 classes) added to every token of every block.

    ./run.sh train --config experiments/configs/tarflow_fashion_mnist_classes.py \
        --workdir runs/tarflow_fashion_mnist_classes

Sample with classifier-free guidance by building the same model with `guidance=w` (and the
trained variables); the unconditional pass uses the mean class embedding. The official code also
drops 10% of the labels in training so that this pass is trained; TrainConfig has no label
dropout, so here the mean embedding is never trained on its own.
"""

from pathlib import Path

from jaxflows.train import TrainConfig, load_config


def get_config(smoke: bool = False) -> TrainConfig:
    base = load_config(Path(__file__).with_name("tarflow_fashion_mnist.py"), smoke=smoke)
    return base.replace(model={**base.model, "num_classes": 10})
