"""A user's own arrays as a `Dataset` (integer pixels with a number of levels, or continuous
floats), and the description (shape, levels, counts, hash) that stands for any dataset where it
cannot be stored: a workdir's config.json."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.data.source import ArraySource, Dataset, Source
from jaxflows.data.validation import validate_batch

# Examples hashed per read when fingerprinting a source that is not held in memory.
_HASH_CHUNK = 4096


def _as_source(split: np.ndarray | ArraySource, num_bins: int | None, name: str) -> ArraySource:
    """`split` (an array, or an array source) as an array source of validated examples: uint8
    pixels for discrete data, float32 (float64 kept) for continuous data."""
    pixels, labels = (split.pixels, split.class_labels) if isinstance(split, ArraySource) else (split, None)
    pixels = np.asarray(pixels)
    if num_bins is None and np.issubdtype(pixels.dtype, np.integer):
        raise InvalidArgumentError(
            f"{name}: integer arrays ({pixels.dtype}) are discrete data: pass their number of levels, "
            "array_dataset(train, held_out, levels) or TrainConfig(dataset=(train, held_out, levels)); "
            "float arrays are continuous"
        )
    pixels = validate_batch(pixels, num_bins, name=name)
    if len(pixels) == 0:
        raise ShapeError(f"{name}: expected at least one example, got shape {pixels.shape}")
    if num_bins is not None:
        return ArraySource(pixels.astype(np.uint8, copy=False), labels)
    dtype = np.float64 if pixels.dtype == np.float64 else np.float32
    return ArraySource(pixels.astype(dtype, copy=False), labels)


def array_dataset(
    train: np.ndarray | ArraySource,
    held_out: np.ndarray | ArraySource,
    num_bins: int | None = None,
    *,
    name: str = "arrays",
    num_classes: int | None = None,
    class_names: tuple[str, ...] | None = None,
) -> Dataset:
    """A `Dataset` of in-memory arrays (or array sources, labelled when `num_classes` is set), of
    any event shape:

    - discrete, with `num_bins`: integer values in {0, …, num_bins − 1} (pixels: NHWC images or
      flattened vectors), dequantised in training and scored in bits/dim;
    - continuous, `num_bins` None: float arrays, scored in nats (−log p(x)); integer arrays
      without `num_bins` are an error asking for their number of levels.

    The same checks as the named datasets' batches (`validate_batch`): integer values in range or
    finite floats, and both splits with one example shape; a wrong one is a ShapeError,
    InvalidInputError or InputDtypeError naming the split.
    """
    if num_bins is not None and not (isinstance(num_bins, int) and 2 <= num_bins <= 256):
        raise InvalidArgumentError(
            "num_bins must be an integer in 2..256 (uint8 pixels), or None for continuous data, "
            f"got {num_bins!r}"
        )
    train_source = _as_source(train, num_bins, "train")
    test_source = _as_source(held_out, num_bins, "held_out")
    shape = tuple(int(d) for d in train_source.pixels.shape[1:])
    validate_batch(test_source.pixels, num_bins, shape, "held_out")
    if num_classes is not None:
        for split, source in (("train", train_source), ("held_out", test_source)):
            labels = source.class_labels
            if labels is None:
                raise InvalidArgumentError(
                    f"num_classes={num_classes} needs labels: pass {split} as ArraySource(pixels, labels)"
                )
            if labels.min() < 0 or labels.max() >= num_classes:
                raise InvalidArgumentError(f"{split} labels must be in 0..{num_classes - 1}")
    return Dataset(name, train_source, test_source, num_bins, shape, num_classes, class_names)


def _example_bytes(examples: np.ndarray, discrete: bool) -> bytes:
    dtype = np.uint8 if discrete else np.float32
    return np.ascontiguousarray(examples, dtype).tobytes()


def _chunks(source: Source, labelled: bool):
    """(pixels, labels or None) of `source` in order: at once when in memory, else in chunks."""
    n = len(source)
    step = max(n, 1) if isinstance(source, ArraySource) else _HASH_CHUNK
    for start in range(0, n, step):
        idx = np.arange(start, min(start + step, n))
        yield source[idx], source.labels(idx) if labelled else None


def describe_dataset(dataset: Dataset) -> dict[str, Any]:
    """What identifies `dataset`'s data without holding it: name, example shape ("image_shape", the
    key's name since workdirs first recorded it), levels (None: continuous), example counts,
    classes and the SHA-256 of both splits' examples (uint8 pixels, or floats as float32) and
    labels."""
    digest = hashlib.sha256()
    labelled = dataset.num_classes is not None
    for split in (dataset.train, dataset.held_out):
        for pixels, labels in _chunks(split, labelled):
            digest.update(_example_bytes(pixels, dataset.discrete))
            if labels is not None:
                digest.update(np.ascontiguousarray(labels, np.int32).tobytes())
    return {
        "name": dataset.name,
        "image_shape": [int(d) for d in dataset.event_shape],
        "num_bins": None if dataset.num_bins is None else int(dataset.num_bins),
        "train_examples": len(dataset.train),
        "held_out_examples": len(dataset.held_out),
        "num_classes": dataset.num_classes,
        "sha256": digest.hexdigest(),
    }


DESCRIPTION_KEYS = frozenset(
    ("name", "image_shape", "num_bins", "train_examples", "held_out_examples", "num_classes", "sha256")
)


def is_description(value: Any) -> bool:
    """Whether `value` is a `describe_dataset` result (e.g. read back from config.json)."""
    return isinstance(value, dict) and set(value) == DESCRIPTION_KEYS
