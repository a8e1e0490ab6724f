"""Autoregressive flows: MADE's masks (reachable dependencies, strictness, tied degrees, cyclic
hidden degrees), `MaskedAutoregressive` (MAF) and its `Invert` (IAF) through the property harness
and `check_autoregressive`, conditional MAF, IAF's one-pass sampling, the incremental-conditioner
protocol, and the refusal of a channel-mixing transformer."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxflows.analysis import lowered_products
from jaxflows.bijectors import (
    MADE,
    AdditiveTransformer,
    MaskedAutoregressive,
    MatrixExpTransformer,
    RationalQuadraticSpline,
)
from jaxflows.bijectors.made import connectivity, hidden_degrees, reachable
from jaxflows.core import Invert
from jaxflows.core.context import MissingContextError
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.models import MODELS, autoregressive_spline_flow
from jaxflows.models import maf as maf_builder
from jaxflows.testing import PropertyCheckError, check_autoregressive, check_log_det_matches_jacobian
from tests.harness import PROPERTIES, BijectorCase, perturb_params


def _context(key, batch):
    return jax.random.normal(key, (batch, 2))


def maf(**fields):
    return lambda: MaskedAutoregressive(conditioner=MADE(hidden=(8,), **fields))


def spline_maf():
    return MaskedAutoregressive(transformer=RationalQuadraticSpline(bins=4), conditioner=MADE(hidden=(8, 8)))


def iaf():
    return Invert(MaskedAutoregressive(conditioner=MADE(hidden=(8,), order="reversed")))


def token_maf():
    return MaskedAutoregressive(conditioner=MADE(hidden=(6,), order="reversed"))


CASES = [
    pytest.param(BijectorCase("maf", maf(), (3, 3), perturb=0.2), marks=pytest.mark.slow, id="maf"),
    BijectorCase("maf_random_order_context", maf(order="random"), (3, 3), perturb=0.2, context=_context),
    pytest.param(
        BijectorCase(
            "maf_additive",
            lambda: MaskedAutoregressive(AdditiveTransformer(), MADE(hidden=(8,))),
            (3, 3),
            perturb=0.2,
        ),
        marks=pytest.mark.slow,
        id="maf_additive",
    ),
    BijectorCase("spline_maf", spline_maf, (3, 3), perturb=0.3),
    BijectorCase("iaf", iaf, (3, 3), perturb=0.2),
    BijectorCase("tokens", token_maf, (2, 3, 2), perturb=0.2),
]


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_autoregressive_layer_properties(case, check):
    check(case)


@pytest.mark.parametrize(
    ("make", "shape", "order"),
    [
        (maf(), (2, 4), None),
        (maf(order="random"), (2, 4), None),
        (spline_maf, (2, 3), None),
        (iaf, (2, 3), None),
        (token_maf, (2, 3, 2), None),
        (maf(order=(2, 1, 2, 3)), (2, 4), (2, 1, 2, 3)),  # tied degrees
    ],
    ids=["maf", "random", "spline", "iaf", "tokens", "tied"],
)
def test_layers_are_autoregressive_in_their_order(make, shape, order):
    check_autoregressive(make, shape, order)


def test_check_autoregressive_catches_a_wrong_order_and_a_diagonal_layer():
    with pytest.raises(PropertyCheckError, match="not triangular"):
        check_autoregressive(maf(), (2, 3), order=(3, 2, 1))
    with pytest.raises(PropertyCheckError, match="diagonal"):
        check_autoregressive(maf(), (2, 3), perturb=0.0)


class NonStrictMADE(MADE):
    """The trap of MATHS.md: a hidden → output mask with ≥ lets output i see x_i."""

    def masks(self, x, conditional=False):
        masks = super().masks(x, conditional)
        inputs = self.entry_degrees(x).reshape(-1)
        last = jnp.asarray(hidden_degrees(self.distinct_degrees(x.shape), self.hidden[-1], conditional))
        return [*masks[:-1], connectivity(last, jnp.repeat(inputs, self.outputs_per_entry), strict=False)]


def test_a_non_strict_output_mask_is_caught():
    # with tied degrees output i sees its tie j: the Jacobian is not triangular
    tied = lambda: MaskedAutoregressive(conditioner=NonStrictMADE(hidden=(8,), order=(1, 1, 2)))
    with pytest.raises(PropertyCheckError, match="depends on input"):
        check_autoregressive(tied, (2, 3))
    # without ties output i sees x_i itself: still triangular, but the log-det misses ∂h_i/∂x_i
    natural = BijectorCase(
        "non_strict",
        lambda: MaskedAutoregressive(conditioner=NonStrictMADE(hidden=(8,))),
        (2, 3),
        perturb=0.3,
    )
    with pytest.raises(PropertyCheckError, match="slogdet"):
        check_log_det_matches_jacobian(natural)


def _masks(made, shape):
    x = jnp.zeros(shape)
    variables = made.init(jax.random.key(3), x)
    return made.apply(variables, x, method=lambda m, a: m.masks(a)), np.asarray(
        made.apply(variables, x, method=lambda m, a: m.entry_degrees(a))
    ).reshape(-1)


@pytest.mark.parametrize(
    ("order", "hidden", "shape"),
    [
        ("natural", (4,), (1, 5)),
        ("reversed", (4, 7), (1, 5)),
        ("random", (5, 4, 6), (1, 5)),
        ((1, 3, 3, 2, 1), (2, 2), (1, 5)),  # tied: three distinct degrees need 2 units per layer
        ("natural", (2,), (1, 3, 2)),  # tokens: a token's two values share its degree
    ],
    ids=["natural", "reversed_two_layers", "random_three_layers", "tied", "tokens"],
)
def test_cyclic_hidden_degrees_reach_exactly_the_allowed_dependencies(order, hidden, shape):
    made = MADE(hidden=hidden, order=order, outputs_per_entry=2)
    masks, degrees = _masks(made, shape)
    paths = reachable(masks)
    outputs = np.repeat(degrees, 2)
    allowed = degrees[:, None] < outputs[None, :]  # strict: output i never sees input i or its ties
    np.testing.assert_array_equal(paths, allowed)


@pytest.mark.parametrize("hidden", [(3,), (3, 5)])
def test_with_a_context_the_inputs_keep_their_dependencies_and_the_context_reaches_every_output(hidden):
    made = MADE(hidden=hidden, order="reversed", outputs_per_entry=1)
    x = jnp.zeros((1, 3))
    variables = made.init(jax.random.key(0), x)
    masks = made.apply(variables, x, method=lambda m, a: m.masks(a, conditional=True))
    degrees = np.array([3, 2, 1])
    np.testing.assert_array_equal(reachable(masks), degrees[:, None] < degrees[None, :])
    from_context = reachable([np.ones((1, hidden[0]), bool), *masks[1:]])  # c feeds every first-layer unit
    assert from_context.all()


def test_hidden_layers_narrower_than_the_degrees_miss_dependencies():
    masks, degrees = _masks(MADE(hidden=(2,), outputs_per_entry=1), (1, 5))
    allowed = degrees[:, None] < degrees[None, :]
    paths = reachable(masks)
    assert not paths[~allowed].any() and not paths[allowed].all()


def test_made_outputs_are_grouped_by_entry_and_start_at_zero():
    made = MADE(hidden=(6,), outputs_per_entry=3)
    x = jax.random.normal(jax.random.key(0), (2, 4))
    variables = made.init(jax.random.key(1), x)
    assert made.apply(variables, x).shape == (2, 4, 3)
    assert not np.asarray(made.apply(variables, x)).any()
    # input 0 (degree 1) feeds the first hidden unit; outputs 3·i … 3·i + 2 belong to input i
    masks = made.apply(variables, x, method=lambda m, a: m.masks(a))
    np.testing.assert_array_equal(np.asarray(masks[-1])[:, :3], False)
    assert np.asarray(masks[-1])[:, 3:6].any()


def test_random_order_is_drawn_at_init_and_kept():
    made = MADE(hidden=(8,), order="random")
    x = jnp.zeros((1, 6))
    first = made.init(jax.random.key(0), x)["constants"]["degrees"]
    second = made.init(jax.random.key(1), x)["constants"]["degrees"]
    assert sorted(np.asarray(first).tolist()) == list(range(1, 7))
    assert not np.array_equal(first, second)


def test_made_rejects_bad_orders_and_shapes():
    with pytest.raises(InvalidArgumentError, match="order must be one of"):
        MADE(order="sideways")
    with pytest.raises(InvalidArgumentError, match="one integer degree per unit"):
        MADE(order=(0.5, 1.0))
    with pytest.raises(ShapeError, match="3 degrees but the input has 4 units"):
        MADE(order=(1, 2, 3)).init(jax.random.key(0), jnp.zeros((1, 4)))
    with pytest.raises(ShapeError, match=r"\(batch, d\) or tokens"):
        MaskedAutoregressive().init(jax.random.key(0), jnp.zeros((1, 2, 2, 2)))


def test_defaults_work_with_no_arguments_and_start_as_the_identity():
    layer = MaskedAutoregressive()
    x = jax.random.normal(jax.random.key(0), (4, 3))
    variables = layer.init(jax.random.key(1), x)
    z, log_det = layer.apply(variables, x)
    np.testing.assert_allclose(z, x, atol=1e-7)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-7)
    assert variables["params"]["network"]["input"]["kernel"].shape == (3, 64)


def test_a_channel_mixing_transformer_is_refused_by_name():
    with pytest.raises(InvalidArgumentError, match="MatrixExpTransformer is not an entry-wise transformer"):
        MaskedAutoregressive(transformer=MatrixExpTransformer())


def test_conditional_maf_reads_the_context_and_requires_it_once_learned():
    layer = maf()()
    x = jax.random.normal(jax.random.key(0), (4, 3))
    context = _context(jax.random.key(1), 4)
    variables = perturb_params(layer.init(jax.random.key(2), x, context), 0.3, jax.random.key(3))
    z, _ = layer.apply(variables, x, context)
    z_other, _ = layer.apply(variables, x, 2 * context)
    assert float(jnp.max(jnp.abs(z[:, 0] - z_other[:, 0]))) > 1e-3  # the context reaches the first entry
    x_back, _ = layer.apply(variables, z, context, method="inverse")
    np.testing.assert_allclose(x_back, x, atol=1e-5)
    with pytest.raises(MissingContextError):
        layer.apply(variables, x)


def _loops(fn, *args):
    text = str(jax.make_jaxpr(fn)(*args))
    return text.count("while[") + text.count("scan[")


def test_maf_density_and_iaf_sampling_are_one_pass():
    layer = maf()()
    x = jax.random.normal(jax.random.key(0), (2, 3))
    variables = layer.init(jax.random.key(1), x)
    assert _loops(lambda a: layer.apply(variables, a), x) == 0
    assert _loops(lambda a: layer.apply(variables, a, method="inverse"), x) == 1
    inverse_autoregressive = Invert(layer)
    iaf_variables = inverse_autoregressive.init(jax.random.key(1), x)
    assert _loops(lambda a: inverse_autoregressive.apply(iaf_variables, a, method="inverse"), x) == 0
    assert _loops(lambda a: inverse_autoregressive.apply(iaf_variables, a), x) == 1


def test_inverse_of_a_layer_initialised_through_it_creates_the_parameters_first():
    layer = iaf()
    x = jax.random.normal(jax.random.key(0), (2, 3))
    variables = layer.init(jax.random.key(1), x)  # Invert's forward is the MAF's sequential inverse
    assert set(variables["params"]["bijector"]["network"]) == {"input", "output"}


class RunningSum(nn.Module):
    """A linear autoregressive conditioner h_i = b_i + Σ_{j<i} W_ij x_j in the natural order, with the
    incremental protocol: the cache holds Σ_{j<t} W_j· x_j, and step t adds unit t − 1's column."""

    outputs_per_entry: int = 2

    def weights(self, d):
        w = self.param("w", nn.initializers.normal(0.3), (d, d, self.outputs_per_entry))
        b = self.param("b", nn.initializers.normal(0.3), (d, self.outputs_per_entry))
        return w * jnp.tril(jnp.ones((d, d)), -1)[:, :, None], b

    @nn.compact
    def __call__(self, x, context=None):
        w, b = self.weights(x.shape[1])
        return b + jnp.einsum("ijk,nj->nik", w, x)

    def degrees(self, x):
        return jnp.arange(1, x.shape[1] + 1)

    def distinct_degrees(self, shape):
        return np.arange(1, shape[1] + 1)

    @nn.compact
    def init_cache(self, x, context=None):
        return jnp.zeros((*x.shape, self.outputs_per_entry), x.dtype)

    @nn.compact
    def step(self, x, cache, index, context=None):
        w, b = self.weights(x.shape[1])
        previous = jnp.maximum(index - 1, 0)
        column = jax.lax.dynamic_index_in_dim(w, previous, axis=1, keepdims=False)  # (d, k)
        newest = jax.lax.dynamic_index_in_dim(x, previous, axis=1, keepdims=False)  # (batch,)
        cache = cache + jnp.where(index > 0, 1.0, 0.0) * newest[:, None, None] * column[None]
        return b + cache, cache


class NaiveRunningSum(RunningSum):
    init_cache = None
    step = None


def test_the_incremental_protocol_equals_the_naive_inverse():
    x = jax.random.normal(jax.random.key(0), (3, 5))
    incremental = MaskedAutoregressive(conditioner=RunningSum())
    naive = MaskedAutoregressive(conditioner=NaiveRunningSum())
    variables = incremental.init(jax.random.key(1), x)
    z, log_det = incremental.apply(variables, x)
    x_incremental, ld_incremental = incremental.apply(variables, z, method="inverse")
    x_naive, ld_naive = naive.apply(variables, z, method="inverse")
    np.testing.assert_allclose(x_incremental, x, atol=1e-5)
    np.testing.assert_allclose(x_incremental, x_naive, atol=1e-6)
    np.testing.assert_allclose(ld_incremental, -log_det, rtol=1e-6)
    np.testing.assert_allclose(ld_naive, ld_incremental, rtol=1e-6)
    text = str(jax.make_jaxpr(lambda a: incremental.apply(variables, a, method="inverse"))(z))
    loop = text.split("scan[" if "scan[" in text else "while[")[1]
    assert "dot_general" not in loop  # each pass adds one column: no full product


def test_builders_are_registered_and_reverse_the_order_between_layers():
    assert MODELS["maf"] is maf_builder and MODELS["autoregressive_spline_flow"] is autoregressive_spline_flow
    flow = maf_builder(3, depth=2, hidden=(8,))
    x = jax.random.normal(jax.random.key(0), (4, 3))
    variables = perturb_params(flow.init(jax.random.key(1), x), 0.2, jax.random.key(2))
    steps = variables["params"]["bijector"]
    assert steps["autoregressive"]["network"]["input"]["kernel"].shape == (2, 3, 8)  # two stacked steps
    assert steps["actnorm"]["log_scale"].shape == (2, 3)
    z, _ = flow.apply(variables, x, method="forward")
    x_back, _ = flow.apply(variables, z, method="inverse")
    np.testing.assert_allclose(x_back, x, atol=1e-5)
    # one step: z_2 of the first layer (reversed to position 0) depends on x_0 and x_1; after the
    # reversal the second layer's first coordinate is that z_2, so the flow's Jacobian is full
    jacobian = jax.jacfwd(lambda a: flow.apply(variables, a[None], method="forward")[0][0])(x[0])
    assert float(jnp.min(jnp.abs(jacobian))) > 1e-6


def test_spline_flow_logit_and_random_orders():
    flow = autoregressive_spline_flow((3,), depth=2, hidden=(8,), bins=4, logit=True, order="random")
    assert flow.domain == (0.0, 1.0)
    x = jax.random.uniform(jax.random.key(0), (4, 3))
    variables = perturb_params(flow.init(jax.random.key(1), x), 0.2, jax.random.key(2))
    degrees = variables["constants"]["bijector"]["steps"]["autoregressive"]["network"]["degrees"]
    assert degrees.shape == (2, 3)
    z, _ = flow.apply(variables, x, method="forward")
    x_back, _ = flow.apply(variables, z, method="inverse")
    np.testing.assert_allclose(x_back, x, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="order must be one of"):
        maf_builder(3, order="natural")


def test_conditional_maf_builder():
    flow = maf_builder(2, depth=1, hidden=(4,), context_features=3)
    x = jax.random.normal(jax.random.key(0), (5, 2))
    context = jax.random.normal(jax.random.key(1), (5, 3))
    variables = perturb_params(flow.init(jax.random.key(2), x, context), 0.3, jax.random.key(3))
    log_prob = flow.apply(variables, x, context, method="log_prob")
    other = flow.apply(variables, x, 2 * context, method="log_prob")
    assert log_prob.shape == (5,) and float(jnp.max(jnp.abs(log_prob - other))) > 1e-3


MEAN = jnp.array([1.0, -2.0])
COVARIANCE = jnp.array([[4.0, 1.8], [1.8, 1.0]])  # correlation 0.9
ENTROPY = 0.5 * math.log(np.linalg.det(2 * math.pi * math.e * np.asarray(COVARIANCE)))


def test_a_small_maf_fits_a_correlated_gaussian():
    cholesky = jnp.linalg.cholesky(COVARIANCE)
    sample = lambda key, n: MEAN + jax.random.normal(key, (n, 2)) @ cholesky.T
    flow = maf_builder(2, depth=2, hidden=(16,))
    variables = flow.init(jax.random.key(0), sample(jax.random.key(1), 512))
    optimizer = optax.adam(1e-2)

    def loss(params, x):
        return -jnp.mean(flow.apply({**variables, "params": params}, x, method="log_prob"))

    @jax.jit
    def step(params, state, key):
        value, grads = jax.value_and_grad(loss)(params, sample(key, 256))
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, value

    params, state = variables["params"], optimizer.init(variables["params"])
    for key in jax.random.split(jax.random.key(2), 400):
        params, state, _ = step(params, state, key)
    held_out = float(loss(params, sample(jax.random.key(3), 20_000)))
    assert abs(held_out - ENTROPY) < 0.05, (held_out, ENTROPY)  # 2.721 against 2.701 here
    far = jnp.array([[1e2, -1e2], [1e3, 5e2], [-1e4, 0.0]])  # far from the data: finite
    assert np.isfinite(flow.apply({**variables, "params": params}, far, method="log_prob")).all()


def test_maf_bounded_alpha_keeps_the_log_density_finite_where_the_unbounded_law_overflows():
    bounded, unbounded = (
        maf_builder(2, depth=2, hidden=(16,)),
        maf_builder(2, depth=2, hidden=(16,), alpha_bound=None),
    )
    x = jax.random.normal(jax.random.key(1), (8, 2))
    variables = bounded.init(jax.random.key(0), x)
    # a network that outputs α = −100 for every coordinate (its output layer starts at zero): e^100
    # overflows float32, where the bounded law's α = 5·tanh(−20) ≈ −5 scales by e^5
    output = variables["params"]["bijector"]["autoregressive"]["network"]["output"]
    output["bias"] = output["bias"].at[..., 1::2].set(-100.0)
    assert np.isfinite(bounded.apply(variables, x, method="log_prob")).all()
    assert not np.isfinite(unbounded.apply(variables, x, method="log_prob")).any()


def test_made_follows_the_network_policy():
    x = jax.random.normal(jax.random.key(0), (2, 3))
    context = _context(jax.random.key(1), 2)
    layer = MaskedAutoregressive(
        conditioner=MADE(hidden=(8, 8)), network_dtype=jnp.bfloat16, network_precision="default"
    )
    variables = layer.init(jax.random.key(2), x, context)
    products = lowered_products(lambda a: layer.apply(variables, a, context), x, platform="cuda")
    networks = [p for p in products if p.in_network]
    assert len(networks) == 4  # input, the context projection, hidden, output
    for product in networks:
        assert product.precision == ("DEFAULT", "DEFAULT") and product.dtypes == ("bf16", "bf16")
    assert layer.apply(variables, x, context)[0].dtype == jnp.float32
