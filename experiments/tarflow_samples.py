"""Sample grids of a trained TarFlow with classifier-free guidance and score-based denoising
(issue "TarFlow", items 3 and 6): one grid per guidance weight w, and for a noise-trained model
(`model.noise_std`) the same draws again after one denoising step x ← x + σ² ∇ₓ log p(x).

    .venv/bin/python -m experiments.tarflow_samples --workdir runs/equal_time/tarflow_noise \\
        --guidance 0 1 3 --out experiments/results

Every grid uses the same key, so the grids differ only by w and by denoising. A class-conditional
model gives one row per class (guidance mixes in the mean-class pass); an unconditional one a
block at its temperature, guided by attention temperature (`--attention-temperature τ`, w > 0).
Denoising takes the gradient of the unguided density model (w = 0), as TarFlow's code does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def guided_flow(exp, guidance: float, attention_temperature: float):
    """The experiment's flow built with guidance w (and τ): the same parameters, a different
    sampler (its data set passed on, not loaded again)."""
    from jaxflows.train import setup

    model = {**exp.config.model, "guidance": guidance, "attention_temperature": attention_temperature}
    return setup(exp.config.replace(model=model, dataset=exp.dataset)).flow


def write_grids(
    workdir: Path,
    out: Path,
    guidance: list[float],
    temperature: float = 1.0,
    per_class: int = 8,
    attention_temperature: float = 1.0,
    prefix: str = "tarflow_samples",
) -> list[Path]:
    """The PNG grids (one per w, and per w denoised for a noise-trained model); returns their paths."""
    from jaxflows.models import denoise
    from jaxflows.train import (
        apply_process_settings,
        image_grid,
        load_workdir_config,
        restore_for_inference,
        sample_key,
    )

    config = load_workdir_config(workdir)
    if config.model.get("name") != "tarflow":
        raise SystemExit(f"{workdir} holds a {config.model.get('name')!r} run, not a TarFlow")
    apply_process_settings(config)  # the PRNG the run used: its checkpointed key has that shape
    exp, state = restore_for_inference(config, workdir)
    variables, bins, noise_std = state.variables(averaged=True), exp.bins, config.model.get("noise_std")
    classes = exp.flow.num_classes
    labels = np.repeat(np.arange(classes), per_class) if classes else None
    context = None if labels is None else jnp.asarray(labels, jnp.int32)
    count = len(labels) if classes else per_class * 8
    key = sample_key(config.seed)
    density = exp.flow

    @jax.jit
    def sharpen(v, x, context):
        return denoise(density, v, x, noise_std, context)

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for w in guidance:
        flow = guided_flow(exp, w, attention_temperature if w > 0 else 1.0)
        draw = jax.jit(lambda v, k, c, flow=flow: flow.apply(v, k, count, temperature, c, method="sample"))
        x = draw(variables, key, context)
        variants = {"": x}
        if noise_std is not None:
            variants["_denoised"] = sharpen(variables, x, context)
        for suffix, images in variants.items():
            images = np.asarray(images)
            if classes:
                rows = images.reshape(classes, per_class, *images.shape[1:])
                names = exp.dataset.class_names or [str(c) for c in range(classes)]
                grid = image_grid(rows, bins, [n[:10] for n in names])
            else:
                grid = image_grid(images[None], bins, [f"T={temperature:g}"])
            path = out / f"{prefix}_w{w:g}{suffix}.png"
            grid.save(path)
            paths.append(path)
            print(f"{path}: w={w:g}{', denoised (one score step)' if suffix else ''}", flush=True)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True, help="a trained TarFlow's workdir")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 3.0], help="weights w")
    parser.add_argument("--temperature", type=float, default=1.0, help="of the base distribution")
    parser.add_argument("--per-class", type=int, default=8, help="samples per class (per row)")
    parser.add_argument("--attention-temperature", type=float, default=1.0, help="τ (unconditional models)")
    parser.add_argument("--prefix", default="tarflow_samples", help="file names: PREFIX_wW[_denoised].png")
    args = parser.parse_args(argv)
    write_grids(
        args.workdir, args.out, args.guidance, args.temperature, args.per_class, args.attention_temperature,
        args.prefix,
    )  # fmt: skip


if __name__ == "__main__":
    main()
