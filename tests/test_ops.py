"""`jaxflows.ops`: the CPU matmul formulation of `conv2d` equals XLA's convolution and
`batched_matmul` equals `jnp.matmul`, with all derivatives."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxflows.ops import Conv, batched_matmul, conv2d, matmul_conv, same_padding, xla_conv

# (c_in, c_out, kernel (kh, kw), padding or None for "SAME"): both narrow-side branches, 1x1,
# even and rectangular kernels, causal (emerging) and lopsided padding. The default run keeps both
# branches, a rectangular causal kernel and the emerging padding; the rest run under -m slow.
SHAPES = [
    (3, 5, (3, 3), None),
    (5, 3, (3, 3), None),
    pytest.param(4, 4, (1, 1), None, marks=pytest.mark.slow),
    pytest.param(2, 7, (4, 4), None, marks=pytest.mark.slow),
    (3, 4, (2, 3), ((1, 0), (2, 0))),
    (6, 3, (3, 3), ((2, 0), (2, 0))),
    pytest.param(7, 2, (5, 5), ((0, 4), (3, 1)), marks=pytest.mark.slow),
]


def _inputs(c_in, c_out, kernel, dtype=jnp.float64):
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, c_in), dtype)
    w = jax.random.normal(jax.random.key(1), (*kernel, c_in, c_out), dtype)
    return x, w


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "padding"), SHAPES, ids=str)
def test_matmul_conv_equals_xla_conv_with_its_derivatives(c_in, c_out, kernel, padding):
    with jax.enable_x64(True):
        x, w = _inputs(c_in, c_out, kernel)
        padding = padding or same_padding(kernel)
        ours = lambda a, k: matmul_conv(a, k, padding)
        reference = lambda a, k: xla_conv(a, k, padding)
        np.testing.assert_allclose(ours(x, w), reference(x, w), atol=1e-12)
        np.testing.assert_allclose(
            jax.jit(conv2d, static_argnums=2)(x, w, padding), reference(x, w), atol=1e-12
        )
        # reverse mode (the training path), forward mode (jacfwd) and second order
        g = jax.random.normal(jax.random.key(2), reference(x, w).shape, jnp.float64)
        for a, b in zip(jax.vjp(ours, x, w)[1](g), jax.vjp(reference, x, w)[1](g), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-11)
        for a, b in zip(
            jax.jacfwd(ours, argnums=(0, 1))(x, w), jax.jacrev(reference, argnums=(0, 1))(x, w), strict=True
        ):
            np.testing.assert_allclose(a, b, atol=1e-11)
        check_grads(ours, (x, w), order=2, modes=["fwd", "rev"])


def test_matmul_conv_under_vmap_of_inputs_and_of_kernels():
    x, w = _inputs(3, 5, (3, 3), jnp.float32)
    padding = same_padding((3, 3))
    xs = jnp.stack([x, 2 * x, -x])
    ws = jnp.stack([w, 0.5 * w, -w])
    expected = jnp.stack([xla_conv(a, k, padding) for a, k in zip(xs, ws, strict=True)])
    both = jax.vmap(lambda a, k: matmul_conv(a, k, padding))(xs, ws)
    np.testing.assert_allclose(both, expected, rtol=1e-5, atol=1e-5)
    inputs_only = jax.vmap(lambda a: matmul_conv(a, w, padding), in_axes=3, out_axes=0)(
        jnp.moveaxis(xs, 0, 3)
    )
    np.testing.assert_allclose(inputs_only, jnp.stack([xla_conv(a, w, padding) for a in xs]), atol=1e-4)


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape", "padding", "message"),
    [
        ((2, 4, 4, 3), (3, 3, 4, 5), None, "expected NHWC input with 4 channels"),
        ((4, 4, 3), (3, 3, 3, 5), None, "expected NHWC input"),
        ((2, 4, 4, 3), (3, 3, 3), None, "expected an HWIO kernel"),
        ((2, 4, 4, 3), (3, 3, 3, 5), ((1, 1), (0, 0)), "does not keep the image size"),
    ],
)
def test_conv2d_names_bad_shapes(x_shape, kernel_shape, padding, message):
    with pytest.raises(ValueError, match=message):
        conv2d(jnp.ones(x_shape), jnp.ones(kernel_shape), padding)


def test_conv_layer_has_flax_conv_parameters_and_output():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    ours = Conv(6, 3)
    variables = ours.init(jax.random.key(1), x)
    flax_conv = nn.Conv(6, (3, 3), padding="SAME")
    reference = flax_conv.init(jax.random.key(1), x)
    assert jax.tree_util.tree_map(jnp.shape, variables) == jax.tree_util.tree_map(jnp.shape, reference)
    np.testing.assert_allclose(ours.apply(variables, x), flax_conv.apply(variables, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n", "k", "m"), [(2, 2, 2), (4, 4, 4), (5, 6, 3), (3, 2, 7)])
def test_batched_matmul_equals_matmul_with_its_derivatives(n, k, m):
    """Both CPU formulations (the broadcast sum at 4–7, the dot elsewhere) and their transposes,
    in float64: values, reverse and forward mode, second derivatives, vmap."""
    with jax.enable_x64(True):
        a = jax.random.normal(jax.random.key(0), (3, 2, n, k), jnp.float64)
        b = jax.random.normal(jax.random.key(1), (3, 2, k, m), jnp.float64)
        f = lambda a, b, mm: jnp.sum(jnp.sin(mm(a, b)))
        ours, reference = (functools.partial(f, mm=batched_matmul), functools.partial(f, mm=jnp.matmul))
        np.testing.assert_allclose(jax.jit(batched_matmul)(a, b), a @ b, rtol=1e-12)
        for derivative in (jax.grad, jax.jacfwd, jax.hessian) if n == 4 else (jax.grad, jax.jacfwd):
            got = jax.jit(derivative(ours, argnums=(0, 1)))(a, b)
            want = derivative(reference, argnums=(0, 1))(a, b)
            for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
        mapped = jax.vmap(batched_matmul, in_axes=(1, None))(a, b[:, 0])
        np.testing.assert_allclose(mapped, jnp.swapaxes(a, 0, 1) @ b[:, 0], rtol=1e-12)


def test_batched_matmul_names_bad_shapes():
    with pytest.raises(ValueError, match=r"\(\.\.\., n, k\) and \(\.\.\., k, m\)"):
        batched_matmul(jnp.ones((2, 3, 4)), jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match="same leading shape"):
        batched_matmul(jnp.ones((2, 3, 4)), jnp.ones((3, 4, 4)))
