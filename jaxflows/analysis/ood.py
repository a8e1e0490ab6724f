"""Out-of-distribution scores from a flow's likelihood (Nalisnick et al. 2019; Serrà et al. 2020).

A flow's bits/dim is the obvious OOD score (higher: less likely under the training data), and
famously fails: flows trained on Fashion-MNIST give MNIST digits *lower* bits/dim than their own
test set. Serrà et al.'s input-complexity correction subtracts what a generic lossless compressor
needs for the image, S(x) = bits/dim(x) − L(x), with L(x) its PNG size in bits per dimension.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve of "higher score = out of distribution": the probability that an
    out-of-distribution example scores above an in-distribution one (ties count one half); 0.5 is
    chance, below 0.5 the OOD set looks *more* in-distribution than the test set."""
    scores = np.concatenate([np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores[order][np.diff(scores[order], prepend=np.nan) == 0]):
        tied = scores == value
        ranks[tied] = ranks[tied].mean()  # average ranks over ties
    n_in, n_out = len(in_scores), len(out_scores)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def png_bits_per_dim(images: np.ndarray) -> np.ndarray:
    """L(x): each uint8 image's size as a PNG (zlib level 9, optimised) in bits per dimension."""
    sizes = []
    for image in np.asarray(images, np.uint8):
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            buffer, format="PNG", optimize=True, compress_level=9
        )
        sizes.append(8.0 * len(buffer.getvalue()) / image.size)
    return np.asarray(sizes)


def complexity_corrected(bits_per_dim: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Serrà et al.'s S(x) = bits/dim(x) − L(x) (their Eq. 2 with a PNG compressor): higher is more
    out of distribution."""
    return np.asarray(bits_per_dim, np.float64) - png_bits_per_dim(images)
