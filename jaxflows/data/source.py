"""The dataset types every loader shares: a random-access `Source` of examples (and, for labelled
data, `source.labels(indices)`) and a `Dataset` of train and held-out sources, discrete (integer
values with a number of levels: pixels) or continuous (float arrays)."""

from __future__ import annotations

import warnings
from typing import NamedTuple, Protocol

import numpy as np

from jaxflows.core.errors import InvalidArgumentError, ShapeError


class Source(Protocol):
    """Random access to examples (uint8 pixels of a discrete dataset, floats of a continuous one):
    `len(source)` and `source[indices]`; a labelled source also has `labels(indices)`, int32 class
    labels."""

    def __len__(self) -> int: ...

    def __getitem__(self, indices: np.ndarray) -> np.ndarray: ...


class ArraySource:
    """An in-memory array of examples as a `Source` (`pixels`: uint8 pixels or float vectors), with
    optional class labels (one per example; int32) or float context rows (a conditional flow's
    context vectors, kept floating)."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray | None = None):
        if labels is not None and len(labels) != len(pixels):
            raise ShapeError(f"{len(labels)} labels for {len(pixels)} images")
        self.pixels = pixels
        if labels is not None:
            labels = np.asarray(labels)
            labels = labels if np.issubdtype(labels.dtype, np.floating) else labels.astype(np.int32)
        self._labels = labels

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
    """Train and held-out splits of examples of `event_shape`, labelled when `num_classes` is set
    (both sources then have `labels(indices)`).

    Discrete data (`num_bins` an integer): integer values in {0, …, num_bins − 1} (pixels of any
    event shape, NHWC images or flattened vectors), trained and scored on their dequantised
    density in bits/dim. Continuous data (`num_bins` None): float arrays, trained and scored on
    −log p(x) in nats. `test` is a deprecated alias of `held_out`, `image_shape` of `event_shape`.
    """

    name: str
    train: Source
    held_out: Source
    num_bins: int | None
    event_shape: tuple[int, ...]
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def discrete(self) -> bool:
        """Whether the examples are integer levels (dequantised, bits/dim) rather than floats."""
        return self.num_bins is not None

    @property
    def test(self) -> Source:
        """Deprecated alias of `held_out` (removed in the next release)."""
        warnings.warn("Dataset.test is deprecated; use Dataset.held_out", DeprecationWarning, stacklevel=2)
        return self.held_out

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one example (`event_shape`; the name of image datasets)."""
        return self.event_shape
