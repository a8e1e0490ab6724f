"""Datasets, deterministic sharded batching, host-side validation and the tfds path (mocked)."""

import time

import numpy as np
import pytest

from jaxflows.data import (
    ArraySource,
    BatchIterator,
    DatasetNotPreparedError,
    batch_indices,
    digits,
    fashion_mnist,
    load_dataset,
    reduce_bits,
    tfds_dataset,
    validate_batch,
)
from jaxflows.data import datasets as datasets_module
from tests.fashion_mnist import require_fashion_mnist


def test_digits_split_is_deterministic_and_covers_the_data():
    a, b = digits(), digits()
    assert a.num_bins == 17 and a.image_shape == (8, 8, 1)
    assert a.train.all().dtype == np.uint8 and a.train.all().shape[1:] == (8, 8, 1)
    assert len(a.train) + len(a.held_out) == 1797 and len(a.held_out) == 359
    np.testing.assert_array_equal(a.held_out.all(), b.held_out.all())
    assert a.train.all().max() == 16 and a.train.all().min() == 0


def test_fashion_mnist_idx_files():
    require_fashion_mnist()  # a failure where CI is meant to have it (tests/fashion_mnist.py)
    data = fashion_mnist()
    assert (len(data.train), len(data.held_out)) == (60000, 10000)
    assert data.train[np.arange(3)].shape == (3, 28, 28, 1) and data.num_bins == 256
    assert data.train.all().max() == 255
    assert load_dataset("auto").name == "fashion_mnist"


def test_auto_falls_back_to_digits(monkeypatch):
    monkeypatch.setattr(datasets_module, "fashion_mnist_available", lambda *a: False)
    assert load_dataset("auto").name == "digits"


def test_batch_indices_shard_an_epoch_without_overlap():
    n, batch = 103, 8
    seen = []
    for step in range(n // batch):
        shards = [batch_indices(n, batch, step, seed=3, process_index=p, process_count=4) for p in range(4)]
        union = np.concatenate(shards)
        assert all(len(s) == 2 for s in shards) and len(set(union)) == batch
        seen.extend(union)
    assert len(set(seen)) == len(seen) == (n // batch) * batch  # an epoch visits examples once
    # the next epoch is another permutation, and everything depends only on (seed, step)
    assert not np.array_equal(batch_indices(n, batch, 0, 3), batch_indices(n, batch, n // batch, 3))
    np.testing.assert_array_equal(batch_indices(n, batch, 5, 3), batch_indices(n, batch, 5, 3))


def test_iterator_resumes_at_any_step():
    source = ArraySource(np.random.default_rng(0).integers(0, 17, (50, 8, 8, 1)).astype(np.uint8))
    full = BatchIterator(source, 8, 17, seed=1)
    first = [b for _, (s, b) in zip(range(9), full, strict=False)]
    resumed = BatchIterator(source, 8, 17, seed=1, start_step=4)
    for (step, batch), expected in zip(resumed, first[4:], strict=False):
        np.testing.assert_array_equal(batch, expected)
        if step == 8:
            break


def test_iterator_surfaces_invalid_data():
    pixels = np.zeros((16, 4, 4, 1), np.float32)
    pixels[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        for _ in BatchIterator(ArraySource(pixels), 16, 4):
            pass


@pytest.mark.parametrize(
    "pixels, error",
    [
        (np.zeros((2, 4, 4), np.uint8), r"expected examples of shape \(4, 4, 1\)"),
        (np.zeros(2, np.uint8), "rank ≥ 2"),
        (np.full((2, 4, 4, 1), 17, np.uint8), r"\[0, 16\]"),
        (np.full((2, 4, 4, 1), np.inf, np.float32), "finite"),
        (np.full((2, 4, 4, 1), 0.5, np.float32), "integer"),
        (np.zeros((2, 4, 5, 1), np.uint8), "shape"),
    ],
)
def test_validate_batch_rejects(pixels, error):
    with pytest.raises(ValueError, match=error):
        validate_batch(pixels, 17, (4, 4, 1))


def test_validate_batch_accepts_valid_pixels():
    pixels = np.arange(32, dtype=np.uint8).reshape(2, 4, 4, 1) % 17
    assert validate_batch(pixels, 17, (4, 4, 1)) is pixels


def test_reduce_bits():
    np.testing.assert_array_equal(reduce_bits(np.array([0, 7, 8, 255], np.uint8), 256, 5), [0, 0, 1, 31])
    with pytest.raises(ValueError):
        reduce_bits(np.zeros(1, np.uint8), 17, 2)


def test_unprepared_tfds_dataset_fails_fast_with_instructions(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetNotPreparedError) as info:
        tfds_dataset("cifar10", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "tfds build cifar10" in message and f"--data_dir={tmp_path}" in message
    assert not any(tmp_path.iterdir()), "nothing may be downloaded or written"


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("not_a_dataset")


def test_tfds_path_on_mock_data(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data fakes the files but not `is_prepared`, which guards every real read.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=24):
        data = load_dataset("cifar10")
        assert data.image_shape == (32, 32, 3) and data.num_bins == 256
        assert len(data.train) == 24
        batches = BatchIterator(data.train, 8, data.num_bins, seed=0, process_index=1, process_count=2)
        (step, batch), *_ = [item for item, _ in zip(batches, range(2), strict=False)]
        assert step == 0 and batch.shape == (4, 32, 32, 3) and batch.dtype == np.uint8
        again = BatchIterator(data.train, 8, data.num_bins, seed=0, process_index=1, process_count=2)
        np.testing.assert_array_equal(again.batch(0), batch)
        reduced = load_dataset("mnist", n_bits=5)
        assert reduced.num_bins == 32 and reduced.train[np.arange(4)].max() < 32


def test_data_modules_import_each_other_in_one_direction():
    """No import circle: the shared types live in `source`, which imports no other data module."""
    import ast
    from pathlib import Path

    import jaxflows.data

    package = Path(jaxflows.data.__file__).parent
    imports = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imports[path.stem] = {m.split(".")[-1] for m in names if m.startswith("jaxflows.data.")}
    assert imports["source"] == set()
    assert "datasets" not in imports["tfds_source"]

    def reaches(start, target, seen=()):
        return any(m == target or (m not in seen and reaches(m, target, (*seen, m))) for m in imports[start])

    for module in imports:
        if module != "__init__":
            assert not reaches(module, module), f"{module} imports itself through a circle"
