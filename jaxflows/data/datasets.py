"""Offline datasets (sklearn digits, Fashion-MNIST idx files, the 2-D toy densities), the registry
of named datasets (`DATASETS`, `register_dataset`) and `load_dataset`."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from jaxflows.core.errors import InvalidArgumentError, JaxflowsError
from jaxflows.data.source import ArraySource, Dataset, Source
from jaxflows.data.tfds_source import tfds_dataset
from jaxflows.data.toy import ring_of_gaussians, two_moons

FASHION_MNIST_DIR = Path(os.environ.get("JAXFLOWS_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
_FASHION_FILES = {
    "train": "train-images-idx3-ubyte.gz",
    "test": "t10k-images-idx3-ubyte.gz",
}
_FASHION_LABEL_FILES = {
    "train": "train-labels-idx1-ubyte.gz",
    "test": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class DatasetNotFoundError(JaxflowsError, FileNotFoundError):
    """A data set's files are not where they were looked for (this project never downloads them)."""


class CorruptDatasetError(JaxflowsError, ValueError):
    """A dataset file that exists but cannot be read: the message names the file and the fault."""


def reduce_bits(pixels: np.ndarray, num_bins: int, n_bits: int) -> np.ndarray:
    """Quantise `num_bins`-level pixels to 2^n_bits levels (Glow's 5-bit CelebA)."""
    target = 2**n_bits
    if target > num_bins or num_bins % target:
        raise InvalidArgumentError(f"cannot reduce {num_bins} intensity levels to {target} (n_bits={n_bits})")
    return (pixels // (num_bins // target)).astype(np.uint8)


def _load_digits_csv() -> tuple[np.ndarray, np.ndarray]:
    """(pixels, labels) of sklearn's bundled digits.csv.gz, read without importing sklearn (slow to
    import)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the digits dataset needs scikit-learn (its bundled digits.csv.gz)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data.astype(np.uint8), digits.target.astype(np.int32)
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int32)


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits: values 0..16 (17 levels), labels 0..9, deterministic split."""
    pixels, labels = _load_digits_csv()
    images = pixels.reshape(-1, 8, 8, 1)  # (1797, 8, 8, 1)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = round(test_fraction * len(images))
    test, train = order[:n_test], order[n_test:]
    split = lambda idx: ArraySource(images[idx], labels[idx])
    names = tuple(str(d) for d in range(10))
    return Dataset("digits", split(train), split(test), 17, (8, 8, 1), 10, names)


_IDX3_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX3_HEADER = 16  # magic, count, rows, cols: four big-endian uint32


def _gunzip(path: Path) -> bytes:
    """The decompressed bytes of `path`, every gzip fault a `CorruptDatasetError` naming the file."""
    raw = Path(path).read_bytes()
    if not raw:
        raise CorruptDatasetError(f"{path}: empty file (0 bytes); expected a gzipped idx file")
    if raw[:2] != b"\x1f\x8b":
        raise CorruptDatasetError(
            f"{path}: not a gzip file (starts with {raw[:4]!r}, expected the gzip magic b'\\x1f\\x8b')"
        )
    try:
        return gzip.decompress(raw)
    except EOFError as error:
        raise CorruptDatasetError(f"{path}: truncated gzip stream ({len(raw)} bytes on disk)") from error
    except gzip.BadGzipFile as error:
        if "CRC check failed" in str(error):
            raise CorruptDatasetError(f"{path}: gzip CRC check failed: the data is damaged") from error
        raise CorruptDatasetError(f"{path}: corrupt gzip stream ({error})") from error
    except zlib.error as error:
        raise CorruptDatasetError(f"{path}: corrupt gzip stream ({error})") from error


def _read_idx_images(path: Path, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 images (count, rows, cols, 1) from a gzipped idx3 file; `image_size` = (rows, cols)
    checks the header's image size. Any fault raises `CorruptDatasetError` naming the file."""
    data = _gunzip(path)
    if len(data) < _IDX3_HEADER:
        raise CorruptDatasetError(
            f"{path}: expected a {_IDX3_HEADER}-byte idx3 header, the decompressed file has {len(data)} bytes"
        )
    magic, count, rows, cols = (int(v) for v in np.frombuffer(data[:_IDX3_HEADER], dtype=">u4"))
    if magic != _IDX3_MAGIC:
        raise CorruptDatasetError(
            f"{path}: not an idx3 image file (magic number {magic}, expected {_IDX3_MAGIC})"
        )
    if image_size is not None and (rows, cols) != tuple(image_size):
        raise CorruptDatasetError(
            f"{path}: idx header says {rows}×{cols} images, expected {image_size[0]}×{image_size[1]}"
        )
    expected, payload = count * rows * cols, len(data) - _IDX3_HEADER
    if payload != expected:
        raise CorruptDatasetError(
            f"{path}: idx header says {count}×{rows}×{cols} = {expected} bytes but the payload has {payload}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=_IDX3_HEADER).reshape(count, rows, cols, 1)


_IDX1_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _read_idx_labels(path: Path, count: int, num_classes: int = 10) -> np.ndarray:
    """int32 labels from a gzipped idx1 file, checked against the image count and class range."""
    data = _gunzip(path)
    if len(data) < 8:
        raise CorruptDatasetError(f"{path}: expected an 8-byte idx1 header, the file has {len(data)} bytes")
    magic, n = (int(v) for v in np.frombuffer(data[:8], dtype=">u4"))
    if magic != _IDX1_MAGIC:
        raise CorruptDatasetError(
            f"{path}: not an idx1 label file (magic number {magic}, expected {_IDX1_MAGIC})"
        )
    if n != count or len(data) - 8 != n:
        raise CorruptDatasetError(
            f"{path}: {n} labels in the header and {len(data) - 8} in the payload, "
            f"expected {count} (one per image)"
        )
    labels = np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int32)
    if labels.size and labels.max() >= num_classes:
        raise CorruptDatasetError(f"{path}: label {labels.max()} outside 0…{num_classes - 1}")
    return labels


def digits_in_mnist_format() -> tuple[np.ndarray, np.ndarray]:
    """(pixels, labels) of all 1797 scikit-learn digits laid out as MNIST lays out its digits:
    each 8x8 image (17 levels) upscaled (bilinear) into a 20x20 box, intensities mapped to 0..255,
    in a 28x28 canvas with its centre of mass at the centre (as near as a shift of at most 4 pixels
    gets it); uint8 (1797, 28, 28, 1).

    Unlike MNIST, the source is 8x8 (blurred strokes after upscaling, no fine detail), from 43
    writers, and the 17 levels become 256 only through interpolation."""
    from PIL import Image

    pixels, labels = _load_digits_csv()
    out = np.zeros((len(pixels), 28, 28, 1), np.uint8)
    rows, cols = np.indices((28, 28))
    for i, image in enumerate(pixels.reshape(-1, 8, 8).astype(np.float32) * (255.0 / 16.0)):
        canvas = np.zeros((28, 28), np.float32)
        canvas[4:24, 4:24] = np.asarray(Image.fromarray(image).resize((20, 20), Image.BILINEAR))
        mass = canvas.sum()
        shift = [round(13.5 - (axis * canvas).sum() / mass) for axis in (rows, cols)]
        shift = np.clip(shift, -4, 4)  # the box stays inside the canvas (np.roll would wrap it)
        out[i, ..., 0] = np.clip(np.rint(np.roll(canvas, shift, axis=(0, 1))), 0, 255).astype(np.uint8)
    return out, labels


def fashion_mnist_available(directory: Path | None = None) -> bool:
    """Whether both image files are in `directory` (default `FASHION_MNIST_DIR`)."""
    directory = Path(FASHION_MNIST_DIR if directory is None else directory)
    return all((directory / f).is_file() for f in _FASHION_FILES.values())


def fashion_mnist(directory: Path | None = None) -> Dataset:
    """Fashion-MNIST (60k train, 10k test, 28x28x1, 256 levels) from local idx files in `directory`
    (default `FASHION_MNIST_DIR`). A damaged file raises `CorruptDatasetError` naming it."""
    directory = Path(FASHION_MNIST_DIR if directory is None else directory)
    if not fashion_mnist_available(directory):
        raise DatasetNotFoundError(
            f"Fashion-MNIST idx files not found in {directory} (expected {sorted(_FASHION_FILES.values())}); "
            "install the Debian package dataset-fashion-mnist or set JAXFLOWS_FASHION_MNIST_DIR"
        )
    train = _read_idx_images(directory / _FASHION_FILES["train"], (28, 28))
    test = _read_idx_images(directory / _FASHION_FILES["test"], (28, 28))
    label_paths = {split: directory / name for split, name in _FASHION_LABEL_FILES.items()}
    if not all(p.is_file() for p in label_paths.values()):  # images only: unlabelled
        return Dataset("fashion_mnist", ArraySource(train), ArraySource(test), 256, (28, 28, 1))
    train_labels = _read_idx_labels(label_paths["train"], len(train))
    test_labels = _read_idx_labels(label_paths["test"], len(test))
    return Dataset(
        "fashion_mnist",
        ArraySource(train, train_labels),
        ArraySource(test, test_labels),
        256,
        (28, 28, 1),
        10,
        FASHION_MNIST_CLASSES,
    )


DatasetLoader = Callable[[str | None], Dataset]
DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str, loader: DatasetLoader, *, replace: bool = False) -> DatasetLoader:
    """Registers a named dataset for `TrainConfig(dataset=name)` and `load_dataset(name)`:
    loader(data_dir) -> Dataset (data_dir: `TrainConfig.data_dir`, which a loader may ignore). A
    name already taken is an error unless `replace`."""
    if not isinstance(name, str) or not name or name == "auto":
        raise InvalidArgumentError(
            f'a dataset name must be a non-empty string other than "auto", got {name!r}'
        )
    if not callable(loader):
        raise InvalidArgumentError(f"register_dataset({name!r}, ...): the loader must be callable")
    if name in DATASETS and not replace:
        raise InvalidArgumentError(f"dataset {name!r} is already registered; pass replace=True to replace it")
    DATASETS[name] = loader
    return loader


TOY_TRAIN_EXAMPLES, TOY_HELD_OUT_EXAMPLES = 10_000, 10_000


def toy_dataset(name: str, sample: Callable, train: int = TOY_TRAIN_EXAMPLES,
                held_out: int = TOY_HELD_OUT_EXAMPLES) -> Dataset:  # fmt: skip
    """A continuous dataset of points from `sample(key, n)`: `train` points from key 0 and
    `held_out` points from key 1 (fixed: every run sees the same points)."""
    points = lambda seed, n: np.asarray(sample(jax.random.key(seed), n), np.float32)
    event_shape = points(0, 1).shape[1:]
    return Dataset(name, ArraySource(points(0, train)), ArraySource(points(1, held_out)), None, event_shape)


def _two_moons(data_dir: str | None = None) -> Dataset:
    return toy_dataset("two_moons", two_moons)


def _ring_of_gaussians(data_dir: str | None = None) -> Dataset:
    return toy_dataset("ring_of_gaussians", ring_of_gaussians)


register_dataset("digits", lambda data_dir=None: digits())
register_dataset("fashion_mnist", lambda data_dir=None: fashion_mnist())
register_dataset("two_moons", _two_moons)  # continuous (n, 2) points, 10,000 + 10,000
register_dataset("ring_of_gaussians", _ring_of_gaussians)  # exact density: data.ring_of_gaussians_log_prob


def load_dataset(name: str | Dataset, data_dir: str | None = None, n_bits: int | None = None) -> Dataset:
    """A registered name (`DATASETS`: "digits", "fashion_mnist", "two_moons", "ring_of_gaussians",
    yours), "auto" (Fashion-MNIST if its files exist, else digits), any other name from
    tensorflow-datasets, or a `Dataset` (e.g. `array_dataset(...)`) taken as it is; a discrete
    one reduced to `n_bits` (an error for continuous data)."""
    if name == "auto":
        name = "fashion_mnist" if fashion_mnist_available() else "digits"
    if isinstance(name, Dataset):
        dataset = name
    elif name in DATASETS:
        dataset = DATASETS[name](data_dir)
    else:
        dataset = tfds_dataset(name, data_dir=data_dir)
    if n_bits is not None and not dataset.discrete:
        raise InvalidArgumentError(
            f"n_bits={n_bits} reduces pixel levels, but {dataset.name!r} is continuous"
        )
    if n_bits is not None and 2**n_bits != dataset.num_bins:
        dataset = _reduced(dataset, n_bits)
    return dataset


class _ReducedSource:
    def __init__(self, source: Source, num_bins: int, n_bits: int):
        self.source, self.num_bins, self.n_bits = source, num_bins, n_bits

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        return reduce_bits(self.source[indices], self.num_bins, self.n_bits)

    def labels(self, indices: np.ndarray) -> np.ndarray:
        return self.source.labels(indices)


def _reduced(dataset: Dataset, n_bits: int) -> Dataset:
    reduce_bits(np.zeros(1, np.uint8), dataset.num_bins, n_bits)  # validates the reduction
    split = lambda s: _ReducedSource(s, dataset.num_bins, n_bits)
    return dataset._replace(
        name=f"{dataset.name}@{n_bits}bit",
        train=split(dataset.train),
        held_out=split(dataset.held_out),
        num_bins=2**n_bits,
    )
