"""The dataset types every loader shares: a random-access `Source` of uint8 NHWC pixels (and, for
labelled data, `source.labels(indices)`) and a `Dataset` of train and held-out sources."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from jaxflows.core.errors import InvalidArgumentError, ShapeError


class Source(Protocol):
    """Random access to uint8 NHWC examples: `len(source)` and `source[indices]`; a labelled
    source also has `labels(indices)`, int32 class labels."""

    def __len__(self) -> int: ...

    def __getitem__(self, indices: np.ndarray) -> np.ndarray: ...


class ArraySource:
    """An in-memory uint8 NHWC array as a `Source`, with optional class labels (one per image)."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray | None = None):
        if labels is not None and len(labels) != len(pixels):
            raise ShapeError(f"{len(labels)} labels for {len(pixels)} images")
        self.pixels = pixels
        self._labels = None if labels is None else np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        return self.pixels[indices]

    def all(self) -> np.ndarray:
        return self.pixels

    @property
    def class_labels(self) -> np.ndarray | None:
        """The int32 label of every image, or None for unlabelled pixels."""
        return self._labels

    def labels(self, indices: np.ndarray) -> np.ndarray:
        if self._labels is None:
            raise InvalidArgumentError("this source has no labels")
        return self._labels[indices]


def subset(source: Source, indices: np.ndarray, labels: bool = False) -> ArraySource:
    """The examples `indices` of `source` in memory, with their labels when `labels`."""
    return ArraySource(source[indices], source.labels(indices) if labels else None)


class Dataset(NamedTuple):
    """Train and held-out splits of integer pixels in {0, …, num_bins − 1}, NHWC; labelled when
    `num_classes` is set (both sources then have `labels(indices)`)."""

    name: str
    train: Source
    test: Source
    num_bins: int
    image_shape: tuple[int, int, int]
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
