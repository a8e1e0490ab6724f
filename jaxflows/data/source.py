"""The dataset types every loader shares: a random-access `Source` of uint8 NHWC pixels and a
`Dataset` of train and held-out sources."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np


class Source(Protocol):
    """Random access to uint8 NHWC examples: `len(source)` and `source[indices]`."""

    def __len__(self) -> int: ...

    def __getitem__(self, indices: np.ndarray) -> np.ndarray: ...


class ArraySource:
    """An in-memory uint8 NHWC array as a `Source`."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        return self.pixels[indices]

    def all(self) -> np.ndarray:
        return self.pixels


class Dataset(NamedTuple):
    """Train and held-out splits of integer pixels in {0, …, num_bins − 1}, NHWC."""

    name: str
    train: Source
    test: Source
    num_bins: int
    image_shape: tuple[int, int, int]
