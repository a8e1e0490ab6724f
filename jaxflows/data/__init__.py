"""Datasets, discrete (integer pixels plus their number of intensity levels) or continuous (float
arrays), a registry of named ones (`DATASETS`, `register_dataset`), and batch iteration.

Offline: scikit-learn's 8x8 digits and Fashion-MNIST from local idx files. Online-prepared:
tensorflow-datasets (cifar10, mnist, downsampled_imagenet/32x32 and /64x64) read through
`tfds.data_source`, which needs no TensorFlow. Every loader returns a `Dataset`, as does
`array_dataset` for a user's own uint8 arrays; `BatchIterator` serves deterministic,
per-host-sharded, prefetched batches of it. `two_moons` and `ring_of_gaussians` generate 2D toy
points for flows on vectors (the ring with its exact log-density).
"""

from jaxflows.data.arrays import array_dataset, describe_dataset
from jaxflows.data.datasets import (
    DATASETS,
    FASHION_MNIST_DIR,
    CorruptDatasetError,
    DatasetNotFoundError,
    digits,
    digits_in_mnist_format,
    fashion_mnist,
    fashion_mnist_available,
    load_dataset,
    reduce_bits,
    register_dataset,
    toy_dataset,
)
from jaxflows.data.iterator import BatchIterator, batch_indices
from jaxflows.data.source import ArraySource, Dataset, Source, subset
from jaxflows.data.tfds_source import TFDS_DATASETS, DatasetNotPreparedError, tfds_dataset
from jaxflows.data.toy import ring_centres, ring_of_gaussians, ring_of_gaussians_log_prob, two_moons
from jaxflows.data.validation import validate_batch

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "TFDS_DATASETS",
    "ArraySource",
    "BatchIterator",
    "CorruptDatasetError",
    "Dataset",
    "DatasetNotFoundError",
    "DatasetNotPreparedError",
    "Source",
    "array_dataset",
    "batch_indices",
    "describe_dataset",
    "digits",
    "digits_in_mnist_format",
    "fashion_mnist",
    "fashion_mnist_available",
    "load_dataset",
    "reduce_bits",
    "register_dataset",
    "ring_centres",
    "ring_of_gaussians",
    "ring_of_gaussians_log_prob",
    "subset",
    "tfds_dataset",
    "toy_dataset",
    "two_moons",
    "validate_batch",
]
