"""Periodic (circular) convolutions in the Fourier domain (Hoogeboom et al. 2019, Sec 3.3).

A k×k convolution with periodic boundaries, y(i, j) = Σ_{a,b} K[a, b]ᵀ x((i + a − p) mod h,
(j + b − p) mod w) with p = ⌊(k−1)/2⌋ ("SAME" centring), is diagonalised by the 2-D DFT:
ŷ(u, v) = K̂(u, v) x̂(u, v) with one c×c complex matrix K̂(u, v) per frequency (paper Eq. 9). So
log|det J| = Σ_{u,v} log|det K̂(u, v)| and the inverse solves one c×c system per frequency.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from jaxflows.core.bijector import Array, Bijector, per_example
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.core.validation import check_image
from jaxflows.ops.precision import BIJECTION_PRECISION, bijection_dtype


def kernel_spectrum(kernel: Array, height: int, width: int) -> Array:
    """K̂(u, v) as [u, v, c_out, c_in] on the rfft half-plane v = 0 … ⌊w/2⌋.

    The kernel becomes the circular filter g with y = g ⊛ x: tap (a, b) sits at
    ((p − a) mod h, (p − b) mod w); then K̂ = DFT(g).
    """
    size = kernel.shape[0]
    centre = (size - 1) // 2
    rows = (centre - jnp.arange(size)) % height
    cols = (centre - jnp.arange(size)) % width
    channels = kernel.shape[-1]
    filt = jnp.zeros((height, width, channels, channels), kernel.dtype)
    filt = filt.at[rows[:, None], cols[None, :]].set(kernel)
    return jnp.swapaxes(jnp.fft.rfft2(filt, axes=(0, 1)), -1, -2)


def half_spectrum_weights(width: int) -> Array:
    """How many full-spectrum frequencies each rfft column v stands for.

    Column v and column w − v are complex conjugates (same |det|). Columns 0 and, for even w,
    w/2 are their own partners (weight 1); every other kept column also stands for w − v (weight 2).
    """
    columns = jnp.arange(width // 2 + 1)
    self_conjugate = (columns == 0) | (2 * columns == width)
    return jnp.where(self_conjugate, 1.0, 2.0)


def lu_solve(lu: Array, permutation: Array, rhs: Array) -> Array:
    """Solve P⁻¹ L U x = rhs for a batch of packed LU factors from `lax.linalg.lu`.

    Forward then back substitution as c vectorised steps over the whole batch: on CPU, XLA's
    batched triangular solve (behind `jnp.linalg.solve`) is several times slower for complex c×c
    batches (see benchmarks/emerging.py).
    """
    size = lu.shape[-1]
    rhs = jnp.take_along_axis(rhs, permutation[..., None], axis=-2)
    lower, upper = jnp.tril(lu, -1), jnp.triu(lu)

    def substitute(matrix, targets, row, x):
        # rows of x not yet solved are zero, so the full row product sums only the solved ones
        solved = targets[..., row, :] - jnp.einsum(
            "...j,...jr->...r", matrix[..., row, :], x, precision=BIJECTION_PRECISION
        )
        return x.at[..., row, :].set(solved)

    z = lax.fori_loop(0, size, lambda k, x: substitute(lower, rhs, k, x), jnp.zeros_like(rhs))
    scaled_upper = upper / jnp.diagonal(upper, axis1=-2, axis2=-1)[..., None]
    scaled_z = z / jnp.diagonal(upper, axis1=-2, axis2=-1)[..., None]
    return lax.fori_loop(
        0, size, lambda k, x: substitute(scaled_upper, scaled_z, size - 1 - k, x), jnp.zeros_like(rhs)
    )


class PeriodicConv(Bijector):
    """k×k periodic convolution (Hoogeboom et al. 2019, Sec 3.3), applied with rfft2.

    Forward: ŷ(u, v) = K̂(u, v) x̂(u, v), per-frequency matrix products;
    log_det = Σ_{u,v} log|det K̂(u, v)| over all h·w frequencies.
    Inverse: x̂(u, v) = K̂(u, v)⁻¹ ŷ(u, v), per-frequency solves (`lu_solve`, O(b·h·w·c²));
    log_det = −Σ_{u,v} log|det K̂(u, v)|.
    Both share one LU factorisation per frequency (O(h·w·c³)), whose diagonal gives log|det K̂| on
    the ⌊w/2⌋+1 rfft columns, weighted by `half_spectrum_weights`; both cost O(b·h·w·c·log(h·w))
    for the FFTs. kernel_size 1 is a plain 1x1 convolution. The kernel starts at the identity plus
    N(0, 0.02²); nothing keeps K̂ non-singular during training (as in the paper).

    Attributes:
      kernel_size: k ≥ 1, the side of the (centred, "SAME") kernel.
      dtype: real computation dtype (None: promoted from the input and parameters).
      param_dtype: dtype of the kernel at init.
    """

    kernel_size: int = 3
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32

    def __post_init__(self):
        if self.kernel_size < 1:
            raise InvalidArgumentError(f"PeriodicConv: kernel_size must be ≥ 1, got {self.kernel_size}")
        super().__post_init__()

    @nn.compact
    def spectrum(self, x: Array) -> Array:
        """K̂ on the rfft half-plane, [u, v, c_out, c_in], complex in the computation dtype."""
        _, height, width, channels = x.shape
        size = self.kernel_size
        centre = (size - 1) // 2

        def identity_plus_noise(key, shape, dtype=jnp.float32):
            noise = 0.02 * jax.random.normal(key, shape, dtype)
            return noise.at[centre, centre].add(jnp.eye(channels, dtype=dtype))

        shape = (size, size, channels, channels)
        kernel = self.param("kernel", identity_plus_noise, shape, self.param_dtype)
        return kernel_spectrum(kernel.astype(bijection_dtype(self.dtype, x, kernel)), height, width)

    def _factorised(self, x: Array) -> tuple[Array, Array, Array, Array]:
        """(K̂, its packed LU factors and pivots, log|det| of the forward map)."""
        check_image(x)
        height, width = x.shape[1], x.shape[2]
        if self.kernel_size > min(height, width):
            raise ShapeError(
                f"PeriodicConv: kernel_size {self.kernel_size} is larger than the {height}x{width} image"
            )
        matrices = self.spectrum(x)
        lu, _, permutation = lax.linalg.lu(matrices)
        log_abs_dets = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(lu, axis1=-2, axis2=-1))), axis=-1)
        log_abs_det = jnp.sum(log_abs_dets * half_spectrum_weights(width).astype(log_abs_dets.dtype))
        return matrices, lu, permutation, log_abs_det

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        matrices, _, _, log_abs_det = self._factorised(x)
        x_hat = jnp.fft.rfft2(x.astype(log_abs_det.dtype), axes=(1, 2))
        y_hat = jnp.einsum("uvoi,buvi->buvo", matrices, x_hat, precision=BIJECTION_PRECISION)
        y = jnp.fft.irfft2(y_hat, s=x.shape[1:3], axes=(1, 2))
        return y, per_example(log_abs_det, x)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        _, lu, permutation, log_abs_det = self._factorised(y)
        y_hat = jnp.fft.rfft2(y.astype(log_abs_det.dtype), axes=(1, 2))
        rhs = jnp.moveaxis(y_hat, 0, -1)  # [u, v, c, b]: every example shares one factorisation
        x_hat = jnp.moveaxis(lu_solve(lu, permutation, rhs), -1, 0)
        x = jnp.fft.irfft2(x_hat, s=y.shape[1:3], axes=(1, 2))
        return x, per_example(-log_abs_det, y)
