"""A coupling Neural Spline Flow (Durkan et al. 2019) on two moons, 2-D continuous points: held-out
negative log-likelihood in nats, a density and sample plot; about a minute on a CPU.

    ./run.sh train --config experiments/configs/two_moons.py [--workdir runs/two_moons]
    ./run.sh train --config experiments/configs/two_moons.py --set dataset=ring_of_gaussians

Its smoke mode (`--smoke`) trains 200 steps of a smaller flow.
"""

from jaxflows.train import TrainConfig


def get_config(smoke: bool = False) -> TrainConfig:
    config = TrainConfig(
        dataset="two_moons",
        model={"name": "coupling_flow", "coupling": "spline", "mixing": "lu", "depth": 6, "hidden": 64},
        batch_size=256,
        learning_rate=2e-3,
        warmup_steps=100,
        lr_decay="cosine",
        num_steps=3000,
        eval_every=1000,
        eval_batch_size=2000,
        checkpoint_every=1000,
        log_every=100,
        init_batch_size=1024,
    )
    if not smoke:
        return config
    return config.replace(
        model={**config.model, "depth": 2, "hidden": 16}, num_steps=200, eval_every=100, checkpoint_every=100
    )
