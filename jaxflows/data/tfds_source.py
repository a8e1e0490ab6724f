"""tensorflow-datasets through `tfds.data_source` (random access over ArrayRecord; no TensorFlow).

Nothing here downloads: a dataset whose files are not prepared under `data_dir` raises
`DatasetNotPreparedError` at once with the command that prepares it.
"""

from __future__ import annotations

import numpy as np

from jaxflows.core.errors import InvalidArgumentError, JaxflowsError
from jaxflows.data.source import Dataset

# tfds name -> (train split, held-out split)
TFDS_DATASETS: dict[str, tuple[str, str]] = {
    "cifar10": ("train", "test"),
    "mnist": ("train", "test"),
    "downsampled_imagenet/32x32": ("train", "validation"),
    "downsampled_imagenet/64x64": ("train", "validation"),
}


class DatasetNotPreparedError(JaxflowsError, RuntimeError):
    """The tfds files are not on disk (and this project never downloads them itself)."""


class TfdsSource:
    """A tfds random-access data source as a `Source` of uint8 NHWC images."""

    def __init__(self, data_source, image_key: str = "image"):
        self.data_source, self.image_key = data_source, image_key

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        # One record at a time: random access into ArrayRecord is cheap, and tfds' mock data source
        # (tfds.testing.mock_data, 4.9.10) breaks `__getitems__`.
        keys = np.asarray(indices).reshape(-1)
        return np.stack([np.asarray(self.data_source[int(i)][self.image_key], np.uint8) for i in keys])

    def labels(self, indices: np.ndarray) -> np.ndarray:
        keys = np.asarray(indices).reshape(-1)
        return np.asarray([int(self.data_source[int(i)]["label"]) for i in keys], np.int32)


def _prepare_hint(name: str, data_dir: str | None) -> str:
    flag = f" --data_dir={data_dir}" if data_dir else ""
    return (
        f"tfds dataset {name!r} is not prepared{' in ' + data_dir if data_dir else ''}. This job never "
        f"downloads. Prepare it on a machine with internet access:\n"
        f"    tfds build {name}{flag} --file_format=array_record\n"
        f"then pass the same directory as --data_dir (or set TFDS_DATA_DIR)."
    )


def tfds_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Open a prepared tfds image dataset; raises DatasetNotPreparedError in seconds if absent."""
    if name not in TFDS_DATASETS:
        raise InvalidArgumentError(
            f"unknown dataset {name!r}; expected 'digits', 'fashion_mnist', 'auto' "
            f"or one of {sorted(TFDS_DATASETS)}"
        )
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise DatasetNotPreparedError(_prepare_hint(name, data_dir))
    train_split, test_split = TFDS_DATASETS[name]
    sources = builder.as_data_source(split=[train_split, test_split])
    train, test = TfdsSource(sources[0]), TfdsSource(sources[1])
    shape = tuple(int(d) for d in builder.info.features["image"].shape)
    label = builder.info.features.get("label") if hasattr(builder.info.features, "get") else None
    num_classes = getattr(label, "num_classes", None)
    names = tuple(label.names) if num_classes else None
    return Dataset(name, train, test, 256, shape, num_classes, names)
