"""Rational-quadratic spline couplings (Durkan et al. 2019): the property harness on the coupling
and on a Glow with spline couplings, knots, bounds and tails, the float32 inverse, a bisection
reference, the identity at initialisation, and the constructor's checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import Coupling, RationalQuadraticMap, RationalQuadraticSpline
from jaxflows.bijectors.spline import knot_derivatives
from jaxflows.core.errors import InvalidArgumentError, JaxflowsError
from jaxflows.models import glow
from tests.harness import BijectorCase, property_params
from tests.test_conditional import labels, vectors

SPLINE_GLOW = dict(levels=2, depth=2, hidden=8, coupling="spline", coupling_kwargs={"bins": 8, "bound": 3.0})

# perturb=0.2 makes network outputs of std ~1.3, bending the splines well away from the identity
# (log-det terms from -5 to 2.5) while float32 still inverts them to 1e-5: much steeper bins are
# conditioned worse than the harness's float32 tolerances (float64 checks hold at any steepness). The
# inputs (1.5·N(0, 1) + 0.3) reach past B = 3 and B = 2, so the tails are in every check.
CASES = [
    BijectorCase(
        "spline_channel",
        lambda: Coupling(hidden=8, transformer=RationalQuadraticSpline()),
        (2, 3, 3, 4),
        perturb=0.2,
    ),
    BijectorCase(
        "spline_checkerboard_conditional",
        lambda: Coupling(
            hidden=8, mask="checkerboard", parity=1, transformer=RationalQuadraticSpline(bins=4, bound=2.0)
        ),
        (2, 4, 4, 1),
        perturb=0.2,
        context=vectors(3),
    ),
    BijectorCase(
        "glow_spline",
        lambda: glow((4, 4, 2), **SPLINE_GLOW),
        (2, 4, 4, 2),
        perturb=0.1,
        data="unit",
        jit_atol=1e-4,
    ),
    BijectorCase(
        "glow_spline_labels",
        lambda: glow((4, 4, 2), num_classes=3, **SPLINE_GLOW),
        (3, 4, 4, 2),
        data="unit",
        jit_atol=1e-4,
        context=labels(3),
    ),
]
# the whole spline Glows (~60 s of compilation each) run with -m slow; the default run checks the
# coupling itself (spline_channel, spline_checkerboard_conditional) and a Glow's composition
# (test_models.py)
SLOW = {"glow_spline", "glow_spline_labels"}


@pytest.mark.parametrize(("case", "check"), property_params(CASES, slow=SLOW))
def test_bijector_properties(case, check):
    check(case)


def random_spline(key, shape, scale=1.0, dtype=jnp.float32, **fields) -> RationalQuadraticMap:
    """A spline per entry of `shape` from N(0, scale²) network outputs."""
    law = RationalQuadraticSpline(**fields)
    h = scale * jax.random.normal(key, (*shape, law.num_params(1)), dtype)
    return law(h, 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_knots_and_bounds_are_exact(dtype):
    """At each knot x^k the map gives y^k with log-det log δ^k, both ways; at ±B it gives ±B with
    log-det 0 (δ = 1 there). Knots of steep bins are where float32 log-dets are least accurate (the
    log-slope varies fast there: 1 ulp of x moves it by up to 1e-2), so float32 checks the points
    and float64 the log-dets too."""
    with jax.enable_x64(dtype == "float64"):
        spline = random_spline(jax.random.key(0), (64, 9), scale=1.5, dtype=jnp.dtype(dtype))
        assert float(jnp.abs(jnp.log(spline.derivatives)).max()) > 0.5, "the knot derivatives are all near 1"
        atol = 1e-12 if dtype == "float64" else 2e-6
        points = [(spline.x_knots[..., k], spline.y_knots[..., k]) for k in range(spline.x_knots.shape[-1])]
        edges = [(jnp.full(spline.x_knots.shape[:-1], edge, dtype),) * 2 for edge in (-3.0, 3.0)]
        for k, (x_k, y_k) in enumerate(points + edges):
            log_d = jnp.log(spline.derivatives[..., k]) if k < len(points) else 0
            y, log_det = spline.forward_and_log_det(x_k)
            x, log_det_inv = spline.inverse_and_log_det(y_k)
            np.testing.assert_allclose(y, y_k, rtol=0, atol=atol)
            np.testing.assert_allclose(x, x_k, rtol=0, atol=4 * atol)
            if dtype == "float64":
                np.testing.assert_allclose(log_det, log_d, rtol=0, atol=1e-8)
                np.testing.assert_allclose(log_det_inv, -log_d, rtol=0, atol=1e-8)


def test_tails_are_the_identity_exactly():
    spline = random_spline(jax.random.key(1), (6,), scale=2.0)
    far = jnp.array([-1e30, -1e6, -3.0001, 3.0001, 17.0, 1e6])[:, None]
    for method in (spline.forward_and_log_det, spline.inverse_and_log_det):
        out, log_det = method(far)
        assert bool(jnp.all(out == far)) and bool(jnp.all(log_det == 0))


def test_inverse_matches_bisection_in_float64():
    """The quadratic root against bisection of the forward map, which shares no code with it."""
    with jax.enable_x64(True):
        spline = random_spline(jax.random.key(2), (2000,), scale=2.0, dtype=jnp.float64)
        y = jax.random.uniform(jax.random.key(3), (2000, 1), jnp.float64, -3.0, 3.0)
        low, high = jnp.full_like(y, -3.0), jnp.full_like(y, 3.0)
        for _ in range(60):
            middle = (low + high) / 2
            below = spline.forward_and_log_det(middle)[0] < y
            low, high = jnp.where(below, middle, low), jnp.where(below, high, middle)
        x, _ = spline.inverse_and_log_det(y)
        np.testing.assert_allclose(x, (low + high) / 2, atol=1e-9)


def test_float32_inverse_on_1e5_points():
    """The float32 round trip on 10⁵ points across [−3.5, 3.5] is as accurate as the map's
    conditioning allows: |x' − x| within a few ulps of y times dx/dy, the error the forward's own
    rounding of y already causes (a quadratic root that cancels is off by far more)."""
    n = 100_000
    spline = random_spline(jax.random.key(4), (n,), scale=1.0)
    x = jax.random.uniform(jax.random.key(5), (n, 1), minval=-3.5, maxval=3.5)
    y, log_det = spline.forward_and_log_det(x)
    x_back, log_det_inv = spline.inverse_and_log_det(y)
    error = jnp.abs(x_back - x)
    ulps = jnp.finfo(jnp.float32).eps * jnp.maximum(jnp.abs(y), 1) * jnp.exp(-log_det)
    print(f"float32 spline round trip on 1e5 points: max |x' - x| = {float(error.max()):.3g}")
    assert float((error / ulps).max()) < 64
    assert float(jnp.median(error)) < 1e-6
    assert float(jnp.median(jnp.abs(log_det_inv + log_det))) < 1e-5


def test_gradients_at_knots_and_bounds_are_finite():
    """Gradients of outputs and log-dets with respect to the network outputs and the inputs, at
    points exactly on the knots (±B among them) and beyond B, both directions; dy/dx at knot k is
    δ^k, whichever bin the knot is assigned to."""
    law = RationalQuadraticSpline(bins=4)
    h = 1.5 * jax.random.normal(jax.random.key(6), (5, law.num_params(1)))
    spline = law(h, 1)  # knots (5, 1, K + 1)
    beyond = jnp.full((5, 1), 9.0)
    points = {
        "forward_and_log_det": jnp.concatenate([spline.x_knots[:, 0], beyond], -1),
        "inverse_and_log_det": jnp.concatenate([spline.y_knots[:, 0], beyond], -1),
    }
    for method, point in points.items():

        def loss(h, v, method=method):
            per_point = law(jnp.broadcast_to(h[:, None, :], (*v.shape, h.shape[-1])), 1)
            out, log_det = getattr(per_point, method)(v[..., None])
            return jnp.sum(out**2) + jnp.sum(log_det)

        grads = jax.grad(loss, argnums=(0, 1))(h, point)
        for g in grads:
            assert bool(jnp.all(jnp.isfinite(g))), method
        assert float(jnp.abs(grads[0]).sum()) > 0
    per_knot = law(jnp.broadcast_to(h[:, None, :], (5, 5, h.shape[-1])), 1)
    forward = lambda v: jnp.sum(per_knot.forward_and_log_det(v[..., None])[0])
    slope_at_knots = jax.grad(forward)(spline.x_knots[:, 0])
    np.testing.assert_allclose(slope_at_knots, spline.derivatives[:, 0], rtol=1e-4)


def test_zero_network_outputs_give_the_identity():
    """Equal bins and knot derivatives 1 (softplus shifted by log(e^{1−m} − 1)): a freshly
    initialised spline coupling and spline Glow step is the identity."""
    np.testing.assert_allclose(knot_derivatives(jnp.zeros((3, 7)), 1e-3), 1.0, rtol=1e-6)
    x = 1.5 * jax.random.normal(jax.random.key(7), (2, 4, 4, 4))
    coupling = Coupling(hidden=8, transformer=RationalQuadraticSpline())
    variables = coupling.init(jax.random.key(8), x)
    y, log_det = coupling.apply(variables, x)
    np.testing.assert_allclose(y, x, atol=1e-6)
    np.testing.assert_allclose(log_det, 0, atol=1e-5)


def test_network_outputs_3k_minus_1_per_active_channel():
    x = jnp.zeros((1, 4, 4, 6))
    coupling = Coupling(hidden=8, transformer=RationalQuadraticSpline(bins=5))
    kernel = coupling.init(jax.random.key(0), x)["params"]["network"]["conv_out"]["kernel"]
    assert kernel.shape[-1] == (3 * 5 - 1) * 3
    flow = glow((4, 4, 2), levels=1, depth=1, hidden=8, coupling="spline", coupling_kwargs={"bins": 5})
    variables = jax.eval_shape(flow.init, jax.random.key(0), jnp.zeros((1, 4, 4, 2)))
    shapes = [leaf.shape for leaf in jax.tree_util.tree_leaves(variables["params"])]
    assert (1, 3, 3, 8, (3 * 5 - 1) * 4) in shapes  # one step of the scan: 8 channels, 4 active


@pytest.mark.parametrize(
    "fields",
    [
        {"bins": 1},
        {"bins": 2.5},
        {"bins": True},
        {"bound": 0.0},
        {"bound": float("inf")},
        {"bound": "3"},
        {"min_bin_width": 0.125},  # 8 bins of at least 1/8 leave nothing to learn
        {"min_bin_height": -1e-3},
        {"min_derivative": 1.0},
    ],
    ids=str,
)
def test_invalid_fields_are_named_errors(fields):
    with pytest.raises(InvalidArgumentError, match="RationalQuadraticSpline") as raised:
        RationalQuadraticSpline(**fields)
    assert isinstance(raised.value, JaxflowsError) and isinstance(raised.value, ValueError)
    with pytest.raises(InvalidArgumentError, match="RationalQuadraticSpline"):
        glow((4, 4, 2), levels=1, depth=1, hidden=8, coupling="spline", coupling_kwargs=fields)
