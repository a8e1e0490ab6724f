"""Stride-1 2-D convolutions of NHWC images, fast on every backend; one place chooses the formulation.

On XLA:CPU, `lax.conv_general_dilated` is slow for the weight gradient and, inside a `lax.scan`
(a `Repeat` of flow steps), 20–300× slower than its unrolled form (`python -m benchmarks.conv`).
On CPU the convolution therefore runs as **one matrix product with the kh·kw spatial shifts applied
to the narrower side** (`matmul_conv`):

- C_in ≤ C_out: y = shifts(x) · W, the kh·kw shifted copies of the input side by side
  (kh·kw·C_in channels);
- C_in > C_out: y = Σ_n shift_n((x · W')_n), W' the kernel as C_in × kh·kw·C_out: the shifted
  partial outputs (kh·kw·C_out channels) are summed.

`matmul_conv` is a bilinear JAX primitive (like `dot_general`), so its derivatives are written
once, as its two transposes: the input gradient is the same convolution of the output gradient with
the flipped, transposed kernel (the narrow side is shifted again), and the weight gradient is one
product contracting the b·h·w positions, with the shifted copies of the narrow operand. Forward
mode (`jvp`, `jacfwd`), reverse mode, `vmap` and higher derivatives all work. Other backends (GPU,
TPU) keep `lax.conv_general_dilated` (cuDNN's and the TPU's convolutions), chosen by
`lax.platform_dependent` when the function is lowered for its device.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.typing import DTypeLike

from jaxflows.core.errors import ShapeError
from jaxflows.ops.precision import Precision

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]


def same_padding(kernel_shape: Sequence[int]) -> Padding:
    """(low, high) padding of each spatial axis that keeps the image size ("SAME")."""
    return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_shape[:2])


def _check(x_shape: Sequence[int], kernel_shape: Sequence[int], padding: Padding) -> None:
    if len(kernel_shape) != 4:
        raise ShapeError(f"expected an HWIO kernel (kh, kw, c_in, c_out), got shape {tuple(kernel_shape)}")
    if len(x_shape) != 4 or x_shape[-1] != kernel_shape[2]:
        raise ShapeError(f"expected NHWC input with {kernel_shape[2]} channels, got shape {tuple(x_shape)}")
    sizes_match = len(padding) == 2 and all(
        low + high == k - 1 and low >= 0 and high >= 0
        for (low, high), k in zip(padding, kernel_shape[:2], strict=True)
    )
    if not sizes_match:
        raise ShapeError(
            f"padding {padding} does not keep the image size for a "
            f"{kernel_shape[0]}x{kernel_shape[1]} kernel (each axis needs low + high = k - 1)"
        )


def xla_conv(x: Array, kernel: Array, padding: Padding, precision: Precision = None) -> Array:
    """y[b, h, w, o] = Σ_{i, j, c} x[b, h + i − low_h, w + j − low_w, c] · kernel[i, j, c, o]."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )


def _windows(t: Array, padding: Padding) -> list[Array]:
    """The kh·kw windows t[:, h + i − low_h, w + j − low_w] (zeros outside), in (i, j) raster order."""
    (low_h, high_h), (low_w, high_w) = padding
    height, width = t.shape[1], t.shape[2]
    padded = jnp.pad(t, ((0, 0), (low_h, high_h), (low_w, high_w), (0, 0)))
    return [
        padded[:, i : i + height, j : j + width]
        for i in range(low_h + high_h + 1)
        for j in range(low_w + high_w + 1)
    ]


def patches(t: Array, padding: Padding) -> Array:
    """P[b, h, w, (i, j, c)] = t[b, h + i − low_h, w + j − low_w, c]: shape (b, h, w, kh·kw·c)."""
    return jnp.concatenate(_windows(t, padding), axis=-1)


def overlap_add(z: Array, padding: Padding) -> Array:
    """y[b, h, w, o] = Σ_{i, j} z[b, h + i − low_h, w + j − low_w, (i, j, o)]."""
    windows = _windows(z, padding)
    channels = z.shape[-1] // len(windows)
    return sum(window[..., n * channels : (n + 1) * channels] for n, window in enumerate(windows))


def _transpose_padding(padding: Padding) -> Padding:
    return tuple((high, low) for low, high in padding)


def _flip_kernel(kernel: Array) -> Array:
    """The kernel of the transposed convolution: spatially flipped, c_in and c_out swapped."""
    return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


def _product_form(x: Array, kernel: Array, *, padding: Padding, precision: Precision) -> Array:
    kh, kw, c_in, c_out = kernel.shape
    if kh == kw == 1:
        return jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0], precision=precision)
    if c_in <= c_out:
        columns = kernel.reshape(kh * kw * c_in, c_out)
        return jnp.einsum("bhwp,po->bhwo", patches(x, padding), columns, precision=precision)
    per_shift = kernel.transpose(2, 0, 1, 3).reshape(c_in, kh * kw * c_out)
    return overlap_add(jnp.einsum("bhwc,cp->bhwp", x, per_shift, precision=precision), padding)


def _kernel_gradient(
    x: Array, g: Array, kernel_shape: Sequence[int], padding: Padding, precision: Precision
) -> Array:
    """Σ_{b, h, w} x[b, h + i − low_h, w + j − low_w, c] g[b, h, w, o]: one product over positions."""
    kh, kw, c_in, c_out = kernel_shape
    if kh == kw == 1:
        return jnp.einsum("bhwc,bhwo->co", x, g, precision=precision)[None, None]
    if c_in <= c_out:
        return jnp.einsum("bhwp,bhwo->po", patches(x, padding), g, precision=precision).reshape(kernel_shape)
    # Σ_n x[n + shift] g[n] = Σ_m x[m] g[m − shift]: shift the narrow g instead of x.
    flipped = jnp.einsum("bhwc,bhwp->cp", x, patches(g, _transpose_padding(padding)), precision=precision)
    return jnp.flip(flipped.reshape(c_in, kh, kw, c_out), (1, 2)).transpose(1, 2, 0, 3)


matmul_conv_p = Primitive("matmul_conv")


def matmul_conv(x: Array, kernel: Array, padding: Padding, precision: Precision = None) -> Array:
    """The convolution as one product with the shifts on the narrow side (see the module docstring);
    `precision` is that of every product it runs, its derivatives' included."""
    padding = tuple((int(low), int(high)) for low, high in padding)
    _check(x.shape, kernel.shape, padding)
    return matmul_conv_p.bind(x, kernel, padding=padding, precision=precision)


def _abstract_eval(x, kernel, *, padding, precision):
    return jax.core.ShapedArray((*x.shape[:-1], kernel.shape[-1]), jnp.result_type(x.dtype, kernel.dtype))


def _input_transpose(g, x, kernel, *, padding, precision):
    return matmul_conv(g, _flip_kernel(kernel), _transpose_padding(padding), precision)


def _kernel_transpose(g, x, kernel, *, padding, precision):
    return _kernel_gradient(x, g, kernel.aval.shape, padding, precision)


def _batch(args, dims, *, padding, precision):
    x, kernel = args
    x_dim, kernel_dim = dims
    if kernel_dim is not None:  # a batch of kernels: map the product form itself
        x_axis = None if x_dim is None else x_dim
        product = functools.partial(_product_form, padding=padding, precision=precision)
        fn = jax.vmap(product, in_axes=(x_axis, kernel_dim))
        return fn(x, kernel), 0
    x = jnp.moveaxis(x, x_dim, 0)
    out = matmul_conv(x.reshape(-1, *x.shape[2:]), kernel, padding, precision)
    return out.reshape(*x.shape[:2], *out.shape[1:]), 0


matmul_conv_p.def_impl(_product_form)
matmul_conv_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(matmul_conv_p, mlir.lower_fun(_product_form, multiple_results=False))
ad.defbilinear(matmul_conv_p, _input_transpose, _kernel_transpose)
batching.primitive_batchers[matmul_conv_p] = _batch


def conv2d(x: Array, kernel: Array, padding: Padding | None = None, precision: Precision = None) -> Array:
    """Stride-1 convolution of NHWC `x` with an HWIO `kernel` (kh × kw); "SAME" padding by default.

    `padding` gives (low, high) zeros per spatial axis with low + high = k − 1 (the image size is
    kept), e.g. ((k − 1, 0), (k − 1, 0)) for a causal convolution. The formulation is chosen per
    backend when lowered: `matmul_conv` on CPU, `lax.conv_general_dilated` elsewhere; a 1x1
    convolution is a matrix product everywhere. `precision` (as `lax.dot_general`'s; None: JAX's
    default) applies on every branch; a bijection's own convolution passes
    `jaxflows.ops.precision.BIJECTION_PRECISION`.
    """
    if padding is None:
        padding = same_padding(kernel.shape)
    padding = tuple((int(low), int(high)) for low, high in padding)
    _check(x.shape, kernel.shape, padding)
    if kernel.shape[:2] == (1, 1):
        return jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0], precision=precision)
    return lax.platform_dependent(
        x,
        kernel,
        cpu=lambda a, w: matmul_conv(a, w, padding, precision),
        default=lambda a, w: xla_conv(a, w, padding, precision),
    )


class Conv(nn.Module):
    """A stride-1 convolution layer with bias ("SAME" padding), computed by `conv2d`.

    y = conv2d(x, kernel) + bias. Parameters are named and shaped like `flax.linen.Conv`'s, and it
    follows the same dtype convention.

    Attributes:
      features: output channels c_out.
      kernel_size: kh = kw (an int) or (kh, kw).
      use_bias: whether to add the learned bias.
      kernel_init: initialiser of the kernel (kh, kw, c_in, c_out).
      bias_init: initialiser of the bias (c_out).
      dtype: computation dtype (None: promoted from the input and parameters).
      param_dtype: dtype of the parameters at init.
      precision: of the convolution, as `lax.conv_general_dilated`'s (None: JAX's default).
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: Precision = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        size = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        shape = (*size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv2d(x, kernel, precision=self.precision)
        return y if bias is None else y + bias
