"""A user's own pixels as a `Dataset`, and the description (shape, levels, counts, hash) that stands
for any dataset where it cannot be stored: a workdir's config.json."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.data.source import ArraySource, Dataset, Source
from jaxflows.data.validation import validate_batch

# Examples hashed per read when fingerprinting a source that is not held in memory.
_HASH_CHUNK = 4096


def _as_source(split: np.ndarray | ArraySource, num_bins: int, name: str) -> ArraySource:
    """`split` (pixels, or an array source) as an array source of validated uint8 pixels."""
    pixels, labels = (split.pixels, split.class_labels) if isinstance(split, ArraySource) else (split, None)
    pixels = validate_batch(pixels, num_bins, name=name)
    if len(pixels) == 0:
        raise ShapeError(f"{name}: expected at least one example, got shape {pixels.shape}")
    return ArraySource(pixels.astype(np.uint8, copy=False), labels)


def array_dataset(
    train: np.ndarray | ArraySource,
    held_out: np.ndarray | ArraySource,
    num_bins: int,
    *,
    name: str = "arrays",
    num_classes: int | None = None,
    class_names: tuple[str, ...] | None = None,
) -> Dataset:
    """A `Dataset` of in-memory pixels: `train` and `held_out` are uint8 NHWC arrays (or array
    sources, labelled when `num_classes` is set) of intensities in {0, …, num_bins − 1}.

    The same checks as the named datasets' batches (`validate_batch`): rank 4, integer values in
    range, and both splits with one example shape; a wrong one is a ShapeError, InvalidInputError
    or InputDtypeError naming the split.
    """
    if not (isinstance(num_bins, int) and 2 <= num_bins <= 256):
        raise InvalidArgumentError(f"num_bins must be an integer in 2..256 (uint8 pixels), got {num_bins!r}")
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


def _chunks(source: Source, labelled: bool):
    """(pixels, labels or None) of `source` in order: at once when in memory, else in chunks."""
    n = len(source)
    step = max(n, 1) if isinstance(source, ArraySource) else _HASH_CHUNK
    for start in range(0, n, step):
        idx = np.arange(start, min(start + step, n))
        yield source[idx], source.labels(idx) if labelled else None


def describe_dataset(dataset: Dataset) -> dict[str, Any]:
    """What identifies `dataset`'s data without holding it: name, image shape, levels, example
    counts, classes and the SHA-256 of both splits' pixels (and labels)."""
    digest = hashlib.sha256()
    labelled = dataset.num_classes is not None
    for split in (dataset.train, dataset.test):
        for pixels, labels in _chunks(split, labelled):
            digest.update(np.ascontiguousarray(pixels, np.uint8).tobytes())
            if labels is not None:
                digest.update(np.ascontiguousarray(labels, np.int32).tobytes())
    return {
        "name": dataset.name,
        "image_shape": [int(d) for d in dataset.image_shape],
        "num_bins": int(dataset.num_bins),
        "train_examples": len(dataset.train),
        "held_out_examples": len(dataset.test),
        "num_classes": dataset.num_classes,
        "sha256": digest.hexdigest(),
    }


DESCRIPTION_KEYS = frozenset(
    ("name", "image_shape", "num_bins", "train_examples", "held_out_examples", "num_classes", "sha256")
)


def is_description(value: Any) -> bool:
    """Whether `value` is a `describe_dataset` result (e.g. read back from config.json)."""
    return isinstance(value, dict) and set(value) == DESCRIPTION_KEYS
