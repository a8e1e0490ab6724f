"""Jet (Kolesnikov et al. 2024) on Fashion-MNIST (28x28x1, 256 levels), sized for the 2-core CPU:
16 couplings of ViT depth 1 at width 48 (4 heads) over the 7x7 grid of 4x4 patches (16 values
per token), four channel couplings per spatial one as big_vision's ImageNet-64 config.

    ./run.sh train --config experiments/configs/jet_fashion_mnist.py --workdir runs/jet_fashion_mnist
    ./run.sh train --config experiments/configs/jet_fashion_mnist.py --smoke --workdir runs/jet_smoke

Why 16 narrow couplings rather than 8 wide ones: Jet's scale s = 2·sigmoid(h) < 2 caps what one
coupling can contribute to the log-det at log 2 per transformed value, half the values: at most
0.5 bits/dim per coupling (plus 1 bit/dim from the rescale to [−1, 1]). Fashion-MNIST's
background pixels sit in one 1/256 bin, so a Jet must expand them a lot, and 8 couplings saturate:
after 500 steps (batch 64, lr 1e-3, cosine) 8 couplings at width 64 held out 6.067 bits/dim with
every channel coupling at −0.25 to −0.41 bits/dim of its −0.5 cap (751 s), 16 at width 48 5.329
(1145 s, the CPU shared with other jobs, load ~12 on 2 cores: at equal wall time still ~0.5 better).

Sizing (`python benchmarks/train_step.py --model jet --image 28x28x1 --batch 64 --model-kwargs
'{"patch_size": 4, "couplings": 16, "depth": 1, "width": 48, "heads": 4}'`, 2026-12-07, the
2-core CPU under load ~11): 514 k parameters, 10.7 GFLOP per step of batch 64, 1262 ms per step
(51 images/s), 114 s to compile (the 16 couplings are unrolled). The run is capped at 60 minutes
of training (`train_time_limit_s`), with held-out evaluations every 1000 steps; for the 15- and
30-minute points set `num_steps` to what the budget allows (a capped run stops before its cosine
schedule has decayed).

Optimisation follows Jet's where TrainConfig can: Adam with a cosine decay to 0 after a 10%
warm-up and gradient clipping at norm 1; Jet's b2 = 0.95 and weight decay 1e-5 are not
TrainConfig options (b2 = 0.999, no decay here). Jet's learning rate is 3e-4 at batch 1024 for 200
epochs; this short run at batch 64 uses 4e-3, the best of the probes below (held-out bits/dim, no
averaging, cosine to 0 after a 10% warm-up, 2026-12-07, the CPU shared with other jobs; 8e-3 not
tried):

    250 steps:  1e-3 5.722, 2e-3 5.602
    1000 steps: 2e-3 4.725, 4e-3 4.532
    ./run.sh train --config experiments/configs/jet_fashion_mnist.py --workdir /tmp/probe \
        --set num_steps=1000 warmup_steps=100 eval_every=1000 ema_decay=None learning_rate=4e-3

Polyak averaging (0.999) as the Glow configuration.
"""

from pathlib import Path

from jaxflows.train import TrainConfig, load_config

MODEL = {"name": "jet", "patch_size": 4, "couplings": 16, "depth": 1, "width": 48, "heads": 4}


def get_config(smoke: bool = False) -> TrainConfig:
    main_job = load_config(Path(__file__).with_name("default.py"))
    config = main_job.replace(
        dataset="fashion_mnist",
        model=dict(MODEL),
        batch_size=64,
        learning_rate=4e-3,
        warmup_steps=400,
        grad_clip_norm=1.0,
        ema_decay=0.999,
        num_steps=4000,
        init_batch_size=256,
        eval_every=1000,
        checkpoint_every=500,
        log_every=50,
        train_time_limit_s=3600.0,
    )
    if not smoke:
        return config
    return config.replace(
        model={**MODEL, "couplings": 5, "width": 16, "heads": 2},
        warmup_steps=20,
        num_steps=200,
        eval_every=0,
        ema_decay=None,
        sample_temperatures=(0.7, 1.0),
        samples_per_temperature=8,
        train_time_limit_s=300.0,
    )
