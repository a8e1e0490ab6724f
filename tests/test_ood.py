"""Out-of-distribution tools: AUROC, the PNG complexity score, and digits in MNIST's layout."""

import numpy as np
import pytest

from jaxflows.analysis import auroc, complexity_corrected, png_bits_per_dim
from jaxflows.data import digits_in_mnist_format


@pytest.mark.parametrize("seed", range(4))
def test_auroc_is_the_mann_whitney_probability_with_ties_halved(seed):
    rng = np.random.default_rng(seed)
    inside, outside = rng.integers(0, 6, 30).astype(float), rng.integers(2, 8, 20).astype(float)
    pairs = (outside[:, None] > inside[None, :]) + 0.5 * (outside[:, None] == inside[None, :])
    assert auroc(inside, outside) == pytest.approx(pairs.mean())


def test_auroc_extremes():
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert auroc([1.0, 1.0], [1.0]) == 0.5


def test_png_complexity_orders_constant_natural_and_noise_images():
    rng = np.random.default_rng(0)
    constant = np.full((2, 28, 28, 1), 128, np.uint8)
    noise = rng.integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)
    digits, _ = digits_in_mnist_format()
    sizes = [png_bits_per_dim(x).mean() for x in (constant, digits[:2], noise)]
    assert sizes[0] < sizes[1] < sizes[2]
    assert sizes[2] > 8.0  # uniform noise does not compress: PNG adds its headers
    np.testing.assert_allclose(complexity_corrected(np.full(2, 9.0), noise), 9.0 - png_bits_per_dim(noise))


def test_digits_in_mnist_format_fill_a_centred_20x20_box():
    pixels, labels = digits_in_mnist_format()
    assert pixels.shape == (1797, 28, 28, 1) and pixels.dtype == np.uint8 and labels.shape == (1797,)
    assert pixels.max() == 255 and set(np.unique(labels)) == set(range(10))
    rows, cols = np.indices((28, 28))
    mass = pixels[..., 0].astype(float)
    centre_row = (mass * rows).sum(axis=(1, 2)) / mass.sum(axis=(1, 2))
    centre_col = (mass * cols).sum(axis=(1, 2)) / mass.sum(axis=(1, 2))
    assert np.median(np.abs(centre_row - 13.5)) < 0.5 and np.median(np.abs(centre_col - 13.5)) < 0.5
    for image in pixels[..., 0]:  # the 20x20 box moved, never wrapped around the canvas
        filled_rows, filled_cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
        assert filled_rows[-1] - filled_rows[0] < 20 and filled_cols[-1] - filled_cols[0] < 20
