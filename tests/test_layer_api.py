"""The layer conventions: each direction returns its own log-det, inner bijectors, masks, the
Flax dtype / param_dtype convention, and distrax-style docstrings."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflows.bijectors as bijectors
from jaxflows.bijectors import ChannelMask, CheckerboardMask, ScalarAffine, Shift
from jaxflows.bijectors.matrix_exp import MatrixExpAffine, PixelExponential
from jaxflows.core import Bijector
from jaxflows.models import MultiScaleFlow, VariationalDequantizer, glow

LAYERS = [
    cls
    for name in bijectors.__all__
    if inspect.isclass(cls := getattr(bijectors, name)) and issubclass(cls, Bijector)
]


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_no_layer_method_takes_a_direction_flag(cls):
    """forward and inverse are written beside each other; no hook is told the direction."""
    for name, method in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("__"):
            continue
        assert "inverse" not in inspect.signature(method).parameters, f"{cls.__name__}.{name}"
    assert not hasattr(cls, "transform")


@pytest.mark.parametrize("cls", [*LAYERS, MultiScaleFlow, VariationalDequantizer], ids=lambda c: c.__name__)
def test_public_layers_document_both_directions_and_their_fields(cls):
    doc = inspect.getdoc(cls) or ""
    assert "Attributes:" in doc, cls.__name__
    fields = [f for f in cls.__dataclass_fields__ if f not in ("parent", "name")]
    for field in fields:
        assert field in doc.split("Attributes:")[1], f"{cls.__name__}: field {field} undocumented"
    concrete = cls not in (bijectors.Coupling, bijectors.InvertibleConv1x1, bijectors.RootFindingBijector)
    if concrete and cls is not VariationalDequantizer:
        assert "Forward" in doc and "Inverse" in doc, cls.__name__


def test_glow_documents_every_argument():
    doc = inspect.getdoc(glow)
    for argument in inspect.signature(glow).parameters:
        assert f"  {argument}:" in doc, argument


@pytest.mark.parametrize(
    "make",
    [
        lambda: ScalarAffine(jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, -0.2, 0.1])),
        lambda: Shift(jnp.array([0.3, -1.0, 2.0])),
    ],
    ids=["scalar_affine", "shift"],
)
def test_elementwise_inner_bijectors_return_their_own_log_det(make):
    """Each direction's terms are log|∂out/∂in| of that direction, entry by entry."""
    with jax.enable_x64(True):
        inner = make()
        x = jnp.array([1.5, 0.2, -0.7])
        y, forward_terms = inner.forward_and_log_det(x)
        x_back, inverse_terms = inner.inverse_and_log_det(y)
        np.testing.assert_allclose(x_back, x, atol=1e-14)
        for fn, point, terms in (
            (inner.forward_and_log_det, x, forward_terms),
            (inner.inverse_and_log_det, y, inverse_terms),
        ):
            diagonal = jnp.diag(jax.jacfwd(lambda v, fn=fn: fn(v)[0])(point))
            expected = np.log(np.abs(diagonal))
            np.testing.assert_allclose(jnp.broadcast_to(terms, x.shape), expected, atol=1e-14)


@pytest.mark.parametrize("factors", ["full", "low_rank"])
def test_matrix_exp_affine_inverse_is_the_same_product_with_minus_s(factors):
    """exp(−S)(exp(S) x + b − b) = x, and the inverse's log-det is tr(−S), per pixel."""
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(0), 4)
        if factors == "full":
            s_factors = (0.3 * jax.random.normal(keys[0], (2, 3, 3), jnp.float64),)
        else:
            s_factors = (
                0.5 * jax.random.normal(keys[0], (2, 3, 1), jnp.float64),
                0.5 * jax.random.normal(keys[1], (2, 1, 3), jnp.float64),
            )
        shift = jax.random.normal(keys[2], (2, 3), jnp.float64)
        inner = MatrixExpAffine(shift, PixelExponential(s_factors, 1e-16, 5))
        x = jax.random.normal(keys[3], (2, 3), jnp.float64)
        y, forward_terms = inner.forward_and_log_det(x)
        x_back, inverse_terms = inner.inverse_and_log_det(y)
        np.testing.assert_allclose(x_back, x, atol=1e-13)
        s = inner.exponential.matrix()
        np.testing.assert_allclose(forward_terms[..., 0], np.trace(s, axis1=-2, axis2=-1), atol=1e-14)
        np.testing.assert_allclose(inverse_terms, -forward_terms, atol=1e-14)
        for fn, point, terms in (
            (inner.forward_and_log_det, x, forward_terms),
            (inner.inverse_and_log_det, y, inverse_terms),
        ):
            jacobian = jax.jacfwd(lambda v, fn=fn, p=point: fn(v.reshape(p.shape))[0].reshape(-1))
            _, expected = jnp.linalg.slogdet(jacobian(point.reshape(-1)))  # block diagonal over pixels
            np.testing.assert_allclose(jnp.sum(terms), expected, atol=1e-12)


def test_masks_know_how_many_channels_they_need_and_what_counts():
    assert ChannelMask.min_channels == 2 and CheckerboardMask.min_channels == 1
    x = jnp.ones((2, 2, 2, 3))
    terms = jnp.ones((2, 2, 2, 3))
    np.testing.assert_array_equal(ChannelMask().sum_active(terms, x), 12.0)  # active part only
    np.testing.assert_array_equal(CheckerboardMask().sum_active(terms, x), 6.0)  # half the pixels
    np.testing.assert_array_equal(CheckerboardMask().sum_active(jnp.zeros(()), x), 0.0)


@pytest.mark.parametrize("cls", [bijectors.AffineCoupling, bijectors.AdditiveCoupling])
def test_coupling_channel_check_comes_from_the_mask(cls):
    with pytest.raises(ValueError, match="cannot split 1 channel"):
        cls(hidden=4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))
    cls(hidden=4, mask="checkerboard").init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))


def _float_dtypes(tree):
    return {str(a.dtype) for a in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)}


@pytest.mark.parametrize("conv, coupling", [("lu", "affine"), ("qr", "matrix_exp"), ("periodic", "additive")])
def test_glow_parameters_follow_param_dtype(conv, coupling):
    """float32 parameters by default even under x64 (Flax's convention), float64 on request;
    float64 inputs with float32 parameters give float64 latents and log-dets."""
    kwargs = dict(levels=1, depth=1, hidden=4, conv=conv, coupling=coupling)
    if conv == "periodic":
        kwargs["conv_kwargs"] = {"kernel_size": 2}
    with jax.enable_x64(True):
        x = jax.random.uniform(jax.random.key(0), (1, 4, 4, 2), jnp.float64)
        default = glow((4, 4, 2), **kwargs)
        variables = jax.eval_shape(default.init, jax.random.key(1), x)
        assert _float_dtypes(variables) == {"float32"}
        wide = glow((4, 4, 2), param_dtype=jnp.float64, **kwargs)
        assert _float_dtypes(jax.eval_shape(wide.init, jax.random.key(1), x)) == {"float64"}
        z, log_det = jax.eval_shape(
            lambda v, a: default.apply(v, a, method="forward"),
            jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), variables),
            x,
        )
        assert z.dtype == log_det.dtype == jnp.float64


def test_dtype_field_sets_the_computation_dtype_never_below_float32():
    """`dtype` sets a map's computation dtype (float64 here from float32 parameters), but never
    below float32: a bfloat16 request (or input) still computes the map in float32."""
    x = jax.random.normal(jax.random.key(0), (1, 2, 2, 4))
    variables = bijectors.Conv1x1LU().init(jax.random.key(1), x)
    assert _float_dtypes(variables) == {"float32"}
    y, log_det = bijectors.Conv1x1LU(dtype=jnp.bfloat16).apply(variables, x.astype(jnp.bfloat16))
    assert y.dtype == log_det.dtype == jnp.float32
    with jax.enable_x64(True):
        y, log_det = bijectors.Conv1x1LU(dtype=jnp.float64).apply(variables, x)
        assert y.dtype == log_det.dtype == jnp.float64
