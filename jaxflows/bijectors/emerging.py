"""Emerging convolutions (Hoogeboom, van den Berg & Welling 2019, Sec 3.1, Fig. 3).

An autoregressive convolution masks its kernel so that output (i, j, c) depends only on inputs
strictly before (i, j) in raster order and, at (i, j) itself, on channels ≤ c. Its Jacobian in
raster order (rows, then columns, then channels; the NHWC flattening) is lower triangular with the
centre tap's diagonal on its diagonal, so log|det J| = h·w·Σ_c log|diag_c| (paper Eq. 7).

Kernels here are square windows ending at the output pixel ("SAME" zero padding kept only on the
causal side): a kernel of size s has taps at offsets (di, dj) ∈ {−(s−1), …, 0}², index
[s−1+di, s−1+dj, c_in, c_out]. The opposite ordering is the same convolution conjugated by
`flip` (reverse rows, columns and channels), a permutation with |det| = 1.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import DTypeLike

from jaxflows.core.bijector import Array, Bijector, per_example
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_image
from jaxflows.ops import BIJECTION_PRECISION, bijection_dtype, conv2d

INVERSE_METHODS = ("pixels", "rows")


def flip(x: Array) -> Array:
    """Reverse rows, columns and channels: raster order becomes reversed raster order."""
    return x[:, ::-1, ::-1, ::-1]


def causal_mask(size: int, channels: int) -> np.ndarray:
    """(size, size, c_in, c_out) mask of the free entries of an autoregressive kernel.

    Every tap off the output pixel is free; at the output pixel only c_in < c_out is free (the
    diagonal is the scale, set separately).
    """
    mask = np.ones((size, size, channels, channels), np.float32)
    mask[-1, -1] = np.tril(np.ones((channels, channels), np.float32), -1).T  # [c_in, c_out]: c_in < c_out
    return mask


def autoregressive_kernel(raw: Array, log_diag: Array) -> Array:
    """Masked kernel whose centre tap has diagonal exp(log_diag) (never zero)."""
    size, channels = raw.shape[0], raw.shape[-1]
    kernel = raw * causal_mask(size, channels).astype(raw.dtype)
    return kernel.at[-1, -1].add(jnp.diag(jnp.exp(log_diag)).astype(kernel.dtype))


def causal_conv(x: Array, kernel: Array) -> Array:
    """y(i, j) = Σ_{a,b} kernel[a, b]ᵀ x(i + a − s + 1, j + b − s + 1), zeros outside the image."""
    causal = ((kernel.shape[0] - 1, 0), (kernel.shape[1] - 1, 0))
    return conv2d(x, kernel, padding=causal, precision=BIJECTION_PRECISION)


def solve_causal_conv_pixels(y: Array, kernel: Array) -> Array:
    """x with causal_conv(x, kernel) = y, by forward substitution one pixel at a time.

    `lax.scan` over the h·w pixels in raster order; each step subtracts the s²−1 known taps and
    solves the c×c lower-triangular centre tap: O(h·w·b·s²·c²) work in h·w sequential steps.
    """
    batch, height, width, channels = y.shape
    size = kernel.shape[0]
    pad = size - 1
    centre = kernel[pad, pad].T  # [c_out, c_in], lower triangular
    off_centre = kernel.at[pad, pad].set(0)

    def step(x_padded, inputs):
        index, y_pixel = inputs
        row, col = index // width, index % width
        window = lax.dynamic_slice(x_padded, (0, row, col, 0), (batch, size, size, channels))
        rhs = y_pixel - jnp.einsum("bxyi,xyio->bo", window, off_centre, precision=BIJECTION_PRECISION)
        x_pixel = jax.scipy.linalg.solve_triangular(centre, rhs.T, lower=True).T
        x_padded = lax.dynamic_update_slice(x_padded, x_pixel[:, None, None, :], (0, row + pad, col + pad, 0))
        return x_padded, None

    pixels = y.reshape(batch, height * width, channels).transpose(1, 0, 2)
    x_padded = jnp.zeros((batch, height + pad, width + pad, channels), y.dtype)
    x_padded, _ = lax.scan(step, x_padded, (jnp.arange(height * width), pixels))
    return x_padded[:, pad:, pad:, :]


def row_matrix(kernel_row: Array, width: int) -> Array:
    """The (w·c)×(w·c) lower-triangular map of one image row onto itself (the kernel's last row).

    Entry [(j, c_out), (j', c_in)] = kernel_row[s − 1 + j' − j, c_in, c_out] for j − s < j' ≤ j.
    """
    size = kernel_row.shape[0]
    return sum(
        jnp.kron(jnp.eye(width, k=-t, dtype=kernel_row.dtype), kernel_row[size - 1 - t].T)
        for t in range(size)
    )


def solve_causal_conv_rows(y: Array, kernel: Array) -> Array:
    """x with causal_conv(x, kernel) = y, by block forward substitution one row at a time.

    `lax.scan` over the h rows; each step subtracts the previous s−1 rows' contribution (a 1-D
    convolution) and solves one (w·c)×(w·c) triangular system shared by every row and example:
    O(h·b·(w·c)²) work in h sequential steps.
    """
    batch, _, width, channels = y.shape
    pad = kernel.shape[0] - 1
    system = row_matrix(kernel[pad], width)

    def step(previous_rows, y_row):
        # the rows above, through the kernel's first s−1 rows (none for a 1x1 kernel)
        rhs = y_row - causal_conv(previous_rows, kernel[:pad])[:, -1] if pad else y_row
        x_flat = jax.scipy.linalg.solve_triangular(system, rhs.reshape(batch, width * channels).T, lower=True)
        x_row = x_flat.T.reshape(batch, width, channels)
        previous_rows = jnp.concatenate([previous_rows, x_row[:, None]], axis=1)[:, 1:]
        return previous_rows, x_row

    previous_rows = jnp.zeros((batch, pad, width, channels), y.dtype)
    _, rows = lax.scan(step, previous_rows, y.transpose(1, 0, 2, 3))
    return rows.transpose(1, 0, 2, 3)


SOLVERS = {"pixels": solve_causal_conv_pixels, "rows": solve_causal_conv_rows}


def window_sizes(kernel_size: int) -> tuple[int, int]:
    """Sizes of the two autoregressive windows whose composition is a k×k "SAME" window.

    The window of a k×k SAME conv spans offsets −⌊(k−1)/2⌋ … ⌊k/2⌋; the first convolution takes
    the upper-left part, the reversed one the lower-right (k = 3: two 2×2, as in the paper).
    """
    return (kernel_size - 1) // 2 + 1, kernel_size // 2 + 1


class EmergingConv(Bijector):
    """Emerging k×k convolution (Hoogeboom et al. 2019, Sec 3.1): y = flip(A₂(flip(A₁(x)))).

    A₁ and A₂ are autoregressive convolutions (Eq. 6), A₂ applied in reversed raster order, so the
    composition has a dense k×k receptive field; the diagonal taps are d = exp(log d).
    Forward: two ordinary convolutions; log_det = h·w·Σ_c (log d₁,c + log d₂,c).
    Inverse: exact substitution, A₂ in reversed raster order then A₁ in raster order, inside
    `lax.scan`; log_det = −h·w·Σ_c (log d₁,c + log d₂,c).
    `inverse_method="pixels"` scans the h·w pixels (each a c×c triangular solve; cost
    O(h·w·b·k²·c²), h·w sequential steps); `"rows"` scans the h rows, each one (w·c)×(w·c)
    triangular solve (O(h·b·w²·c²), h steps). Kernels start at the identity plus N(0, 0.02²).

    Attributes:
      kernel_size: k ≥ 2, the side of the composed "SAME" window.
      inverse_method: "pixels" or "rows", the substitution order of the inverse.
      dtype: computation dtype (None: promoted from the input and parameters).
      param_dtype: dtype of the parameters at init.
    """

    kernel_size: int = 3
    inverse_method: str = "pixels"
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32

    def __post_init__(self):
        if self.kernel_size < 2:
            raise InvalidArgumentError(f"EmergingConv: kernel_size must be ≥ 2, got {self.kernel_size}")
        if self.inverse_method not in INVERSE_METHODS:
            raise InvalidArgumentError(
                f"EmergingConv: inverse_method must be one of {INVERSE_METHODS}, got {self.inverse_method!r}"
            )
        super().__post_init__()

    @nn.compact
    def kernels(self, x: Array) -> tuple[Array, Array, Array]:
        """The masked kernels of A₁ and A₂ (each in its own raster order) and log|det| per pixel
        of the forward map, in the computation dtype for inputs like x."""
        channels = x.shape[-1]

        def identity_plus_noise(key, shape, dtype=jnp.float32):
            noise = 0.02 * jax.random.normal(key, shape, dtype)
            return noise.at[-1, -1].set(jnp.eye(channels, dtype=dtype))

        params = []
        for name, size in zip(("first", "second"), window_sizes(self.kernel_size), strict=True):
            shape = (size, size, channels, channels)
            raw = self.param(f"{name}_kernel", identity_plus_noise, shape, self.param_dtype)
            log_diag = self.param(f"{name}_log_diag", nn.initializers.zeros, (channels,), self.param_dtype)
            params += [raw, log_diag]
        dtype = bijection_dtype(self.dtype, x, *params)
        raw1, log_d1, raw2, log_d2 = (param.astype(dtype) for param in params)
        log_abs_det = jnp.sum(log_d1) + jnp.sum(log_d2)
        return autoregressive_kernel(raw1, log_d1), autoregressive_kernel(raw2, log_d2), log_abs_det

    def _check(self, x: Array) -> None:
        check_image(x)
        if self.kernel_size > min(x.shape[1], x.shape[2]):
            raise ShapeError(
                f"EmergingConv: kernel_size {self.kernel_size} is larger than the "
                f"{x.shape[1]}x{x.shape[2]} image"
            )

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        self._check(x)
        first, second, log_abs_det = self.kernels(x)
        h = causal_conv(x.astype(first.dtype), first)  # A₁, raster order
        y = flip(causal_conv(flip(h), second))  # A₂, reversed raster order
        return y, per_example(x.shape[1] * x.shape[2] * log_abs_det, x)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        self._check(y)
        first, second, log_abs_det = self.kernels(y)
        solve = SOLVERS[self.inverse_method]
        h = flip(solve(flip(y.astype(second.dtype)), second))  # A₂⁻¹, reversed raster order
        x = solve(h, first)  # A₁⁻¹, raster order
        return x, per_example(-y.shape[1] * y.shape[2] * log_abs_det, y)
