"""Sample grids at several temperatures and latent interpolations, written as PNG with Pillow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from jaxflows.analysis import attribute_direction, manipulate
from jaxflows.core import Flow
from jaxflows.train.errors import ConfigError

SAMPLE_STREAM = 7  # sample grids draw from fold_in(PRNGKey(seed), SAMPLE_STREAM): apart from training's keys


def sample_key(seed: int) -> jax.Array:
    """The key of a run's sample grids: the same grid for the same seed and parameters."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), SAMPLE_STREAM)


def _to_uint8(x: np.ndarray, bins: int) -> np.ndarray:
    """Floats in [0, 1) -> their intensity level -> 0..255 for display."""
    x = np.nan_to_num(np.asarray(x, np.float32), nan=0.0, posinf=1.0, neginf=0.0)  # shown black/white
    levels = np.floor(np.clip(x, 0.0, 1.0 - 1e-6) * bins)
    return np.round(levels * (255.0 / max(bins - 1, 1))).astype(np.uint8)


COLUMNS = 8  # samples per row of a grid: 64 samples at one temperature make an 8×8 block
MIN_PIXELS = 84  # an image is upscaled (nearest) to at least this many pixels on its side


def _tile(images: np.ndarray, scale: int, pad: int = 2, columns: int = COLUMNS) -> Image.Image:
    """NHWC uint8 images in rows of `columns`, upscaled by `scale` (nearest), as an RGB image."""
    n, h, w, c = images.shape
    cols, rows = min(n, columns), -(-n // columns)
    cell_h, cell_w = h * scale + pad, w * scale + pad
    grid = np.full((rows * cell_h - pad, cols * cell_w - pad, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, columns)
        grid[r * cell_h : r * cell_h + h * scale, k * cell_w : k * cell_w + w * scale] = im.repeat(
            scale, 0
        ).repeat(scale, 1)
    return Image.fromarray(grid[..., 0] if c == 1 else grid).convert("RGB")


def _stack_rows(rows: Sequence[Image.Image], labels: Sequence[str], pad: int = 4) -> Image.Image:
    label_width = 60
    width = label_width + max(r.width for r in rows)
    height = sum(r.height for r in rows) + pad * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for row, label in zip(rows, labels, strict=True):
        canvas.paste(row, (label_width, y))
        draw.text((4, y + row.height // 2 - 5), label, fill="black")
        y += row.height + pad
    return canvas


def _scale(height: int) -> int:
    return max(1, -(-MIN_PIXELS // height))


def sample_grid(
    flow: Flow,
    variables,
    key: jax.Array,
    bins: int,
    temperatures: Sequence[float] = (0.5, 0.7, 1.0),
    per_temperature: int = 8,
) -> tuple[Image.Image, dict[float, np.ndarray]]:
    """A block of `per_temperature` samples per temperature (rows of 8, each image upscaled to at
    least 84 pixels), labelled "T=…" on the left."""
    rows, labels, samples = [], [], {}
    draw = jax.jit(lambda v, k, t: flow.apply(v, k, per_temperature, t, method="sample"))
    for i, t in enumerate(temperatures):
        x = np.asarray(draw(variables, jax.random.fold_in(key, i), jnp.float32(t)))
        samples[float(t)] = x
        rows.append(_tile(_to_uint8(x, bins), _scale(x.shape[1])))
        labels.append(f"T={t:g}")
    return _stack_rows(rows, labels), samples


def image_grid(images: np.ndarray, bins: int, row_labels: Sequence[str]) -> Image.Image:
    """Images (rows, count, H, W, C) with values in [0, 1) as one labelled block per row (8 images
    per line, each upscaled to at least 84 pixels), a row's label on its left."""
    rows = [_tile(_to_uint8(row, bins), _scale(row.shape[1])) for row in images]
    return _stack_rows(rows, list(row_labels))


def class_sample_grid(
    flow: Flow,
    variables,
    key: jax.Array,
    bins: int,
    temperature: float = 0.7,
    per_class: int = 8,
    class_names: Sequence[str] | None = None,
) -> tuple[Image.Image, np.ndarray]:
    """A class-conditional flow's samples: one row of `per_class` draws from p(x | c) per class c,
    labelled with the class name; returns the image and the samples (classes, per_class, H, W, C)."""
    classes = flow.num_classes
    if classes is None:
        raise ConfigError("class_sample_grid needs a class-conditional flow (glow(..., num_classes=N))")
    names = [str(c) for c in range(classes)] if class_names is None else list(class_names)
    draw = jax.jit(lambda v, k, c: flow.apply(v, k, per_class, temperature, c, method="sample"))
    samples = np.stack([np.asarray(draw(variables, key, jnp.int32(c))) for c in range(classes)])
    return image_grid(samples, bins, [name[:10] for name in names]), samples


def sample_grid_path(workdir: Path, temperatures: Sequence[float]) -> Path:
    return Path(workdir) / ("samples_T" + "_".join(str(float(t)) for t in temperatures) + ".png")


def interpolate(
    flow: Flow,
    variables,
    pixels_a: np.ndarray,
    pixels_b: np.ndarray,
    bins: int,
    num: int = 8,
    label: int | None = None,
) -> Image.Image:
    """Decode (1 − α) z_a + α z_b for `num` values of α in [0, 1]; z = f(pixel centres). A
    class-conditional flow encodes and decodes both under `label`."""
    centres = _pixel_centres(np.stack([pixels_a, pixels_b]), bins)
    z = flow.apply(variables, centres, label, method="forward")[0]
    alphas = jnp.linspace(0.0, 1.0, num)[:, None, None, None]
    path = (1 - alphas) * z[0] + alphas * z[1]
    decode = jax.jit(lambda v, p: flow.apply(v, p, label, method="inverse")[0])
    x = np.asarray(decode(variables, path))
    return _stack_rows([_tile(_to_uint8(x, bins), _scale(x.shape[1]))], ["interp"])


def _pixel_centres(pixels: np.ndarray, bins: int) -> jax.Array:
    """Integer pixels -> the centres of their intensity bins in [0, 1): the flow's input without noise."""
    return jnp.asarray((np.asarray(pixels).astype(np.float32) + 0.5) / bins)


def attribute_grid(
    flow: Flow,
    variables,
    pixels: np.ndarray,
    with_attribute: np.ndarray,
    without_attribute: np.ndarray,
    alphas: Sequence[float],
    bins: int,
) -> Image.Image:
    """Latent attribute manipulation as a picture (Glow Sec 5): the direction is the mean latent of
    `with_attribute` minus that of `without_attribute` (`jaxflows.analysis.attribute_direction`);
    one row per image of `pixels`, one column per α of f⁻¹(f(x) + α · direction). All integer
    pixels, encoded at their bin centres."""
    direction = attribute_direction(
        flow, variables, _pixel_centres(with_attribute, bins), _pixel_centres(without_attribute, bins)
    )
    encoded = _pixel_centres(pixels, bins)
    out = np.asarray(manipulate(flow, variables, encoded, direction, jnp.asarray(alphas)))
    columns = len(alphas)
    rows = [_tile(_to_uint8(images, bins), _scale(images.shape[1]), columns=columns) for images in out]
    return _stack_rows(rows, [""] * len(rows))


def density_and_samples_plot(
    flow: Flow, variables, key: jax.Array, held_out: np.ndarray, path: Path, num_samples: int = 2000,
    resolution: int = 120, temperature: float = 1.0,
) -> Path:  # fmt: skip
    """A PNG of continuous data: for 2-D points the flow's density on a grid over the held-out
    points' range beside its samples and the held-out points; for any other event shape, samples
    and held-out points projected on their first two coordinates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held_out = np.asarray(held_out, np.float32).reshape(len(held_out), -1)
    draws = np.asarray(flow.apply(variables, key, num_samples, temperature, method="sample"))
    draws = draws.reshape(num_samples, -1)
    two_d = tuple(flow.event_shape) == (2,)
    fig, axes = plt.subplots(1, 3 if two_d else 2, figsize=(12 if two_d else 8, 4))
    low, high = np.percentile(held_out[:, :2], [0.5, 99.5], axis=0)
    margin = 0.15 * (high - low)
    low, high = low - margin, high + margin
    if two_d:
        xs, ys = (np.linspace(low[i], high[i], resolution) for i in range(2))
        grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)
        log_p = np.asarray(jax.jit(lambda v, g: flow.apply(v, g, method="log_prob"))(variables, grid))
        axes[0].imshow(np.exp(log_p).reshape(resolution, resolution), origin="lower",
                       extent=(low[0], high[0], low[1], high[1]), cmap="viridis", aspect="auto")  # fmt: skip
        axes[0].set_title("flow density")
    titles = (f"samples (T={temperature})", "held-out data")
    for ax, points, title in zip(axes[-2:], (draws, held_out), titles, strict=True):
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5)
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_title(title if two_d else f"{title}, coordinates 1-2")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
