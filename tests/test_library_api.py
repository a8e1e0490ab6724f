"""jaxflows as a library: a user's own bijector checked with jaxflows.testing (nothing imported from
tests/), failures that name what failed, and flows whose shapes are checked where they go wrong."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows import Bijector, Chain, EventShapeError, Flow, Invert, ShapeError, StandardNormal
from jaxflows.bijectors import ActNorm, AffineCoupling, Squeeze
from jaxflows.core import sum_except_batch
from jaxflows.ops import bijection_dtype
from jaxflows.testing import (
    BijectorCase,
    PropertyCheckError,
    assert_close,
    check_bijector,
    check_float64_inputs_with_float32_params,
)


class ChannelScale(Bijector):
    """y = x · exp(a_c): a user's layer, written as docs/custom_bijector.md says."""

    float32_inverse: bool = False  # a bug to catch: the inverse computed in float32

    @nn.compact
    def _log_scale(self, x):
        a = self.param("log_scale", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return a.astype(bijection_dtype(None, x, a))

    def _map(self, v, log_scale):
        log_det = jnp.broadcast_to(log_scale, v.shape)
        return v * jnp.exp(log_scale), sum_except_batch(log_det)

    def forward(self, x, context=None):
        return self._map(x, self._log_scale(x))

    def inverse(self, y, context=None):
        log_scale = self._log_scale(y)
        if self.float32_inverse:
            y, log_scale = y.astype(jnp.float32), log_scale.astype(jnp.float32)
        return self._map(y, -log_scale)


class WrongInverseLogDet(ChannelScale):
    def inverse(self, y, context=None):
        x, log_det = super().inverse(y, context)
        return x, log_det + 0.1


def test_a_correct_user_layer_passes_every_check():
    check_bijector(ChannelScale, shape=(2, 3, 3, 2))


def test_a_wrong_inverse_log_det_is_named_with_the_quantity_and_the_worst_element():
    with pytest.raises(PropertyCheckError) as info:
        check_bijector(WrongInverseLogDet, shape=(2, 3, 3, 2))
    message = str(info.value)
    assert message.startswith("check_log_det_antisymmetric: inverse log_det against −forward log_det")
    assert "worst at index" in message and "atol=" in message and "got " in message


def test_a_float32_inverse_fails_the_float64_check_naming_the_dtype():
    case = BijectorCase("float32 inverse", lambda: ChannelScale(float32_inverse=True), (2, 3, 3, 2))
    with pytest.raises(PropertyCheckError, match=r"inverse x is float32; expected float64"):
        check_float64_inputs_with_float32_params(case)


class ParamDtypeLogDet(ChannelScale):
    """A log-det computed in the parameters' dtype and cast back: float64 dtype, float32 values."""

    @nn.compact
    def forward(self, x, context=None):
        a = self.param("log_scale", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        y, _ = self._map(x, a.astype(bijection_dtype(None, x, a)))
        return y, sum_except_batch(jnp.broadcast_to(a, x.shape)).astype(x.dtype)  # summed in a's dtype


def test_a_log_det_rounded_to_the_parameters_dtype_fails_the_float64_check():
    case = BijectorCase("param-dtype log_det", ParamDtypeLogDet, (2, 3, 3, 2), perturb=0.3)
    with pytest.raises(PropertyCheckError, match=r"forward log_det with float32 parameters against float64"):
        check_float64_inputs_with_float32_params(case)


def test_assert_close_reports_index_values_and_tolerance():
    with pytest.raises(PropertyCheckError) as info:
        assert_close(
            np.array([1.0, 2.0, 3.5]), np.array([1.0, 2.0, 3.0]), check="demo", quantity="q", atol=0.1
        )
    assert str(info.value) == (
        "demo: q: 1 of 3 element(s) outside the tolerance atol=0.1 + rtol=0·|expected|; worst at index (2,): "
        "got 3.5, expected 3 (|difference| 0.5, allowed 0.1)"
    )
    assert_close(np.array([1.0]), np.array([1.05]), check="demo", quantity="q", atol=0.1)
    with pytest.raises(PropertyCheckError, match="1 of 1"):
        assert_close(np.array([np.nan]), np.array([0.0]), check="demo", quantity="q", atol=1.0)


def test_a_flow_whose_bijector_changes_the_shape_fails_at_init_with_the_fix():
    chain = Chain([Squeeze(), ActNorm(), AffineCoupling(hidden=4)], names=["squeeze", "actnorm", "coupling"])
    flow = Flow(bijector=chain, base=StandardNormal(), event_shape=(8, 8, 1))
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    with pytest.raises(EventShapeError, match=r"maps examples of shape \(8, 8, 1\) to \(4, 4, 4\).*Invert"):
        flow.init(jax.random.key(1), x)
    fixed = Flow(
        bijector=Chain(
            [*chain.layers, Invert(Squeeze())], names=["squeeze", "actnorm", "coupling", "unsqueeze"]
        ),
        base=StandardNormal(),
        event_shape=(8, 8, 1),
    )
    variables = fixed.init(jax.random.key(1), x)
    assert fixed.apply(variables, jax.random.key(2), 3, method="sample").shape == (3, 8, 8, 1)


def _lu_glow_and_variables():
    from jaxflows.models import glow

    flow = glow((4, 4, 1), levels=1, depth=1, hidden=4, conv="lu")
    x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1))
    return flow, flow.init(jax.random.key(1), x), x


def test_a_missing_constants_collection_is_a_named_error():
    from jaxflows.core import MissingCollectionError

    flow, variables, x = _lu_glow_and_variables()
    with pytest.raises(MissingCollectionError, match=r"not \['constants'\].*LU permutation"):
        flow.apply({"params": variables["params"]}, x, method="log_prob")


def test_float_constants_are_a_named_error():
    from jaxflows.core import VariablesMismatchError

    flow, variables, x = _lu_glow_and_variables()
    floated = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), variables)
    with pytest.raises(VariablesMismatchError, match=r"permutation is float32 where the model has int32"):
        flow.apply(floated, x, method="log_prob")


def test_functional_checks_variables_like_flow_apply():
    from jaxflows import functional
    from jaxflows.core import UnusedVariablesError

    chain = Chain([ActNorm(), AffineCoupling(hidden=4)], names=["actnorm", "coupling"])
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 2))
    variables = chain.init(jax.random.key(1), x)
    other = Chain([ActNorm()], names=["actnorm"]).init(jax.random.key(1), x)
    bad = {"params": {**variables["params"], **{"extra": other["params"]["actnorm"]}}}
    with pytest.raises(UnusedVariablesError, match="extra"):
        functional(chain, bad).forward(x)
    f = functional(chain, variables)
    z, _ = jax.jit(f.forward)(x)
    np.testing.assert_allclose(f.inverse(z)[0], x, atol=1e-5)

    def loss(params):
        return -functional(chain, {**variables, "params": params}).log_det(x).mean()

    grads = jax.grad(loss)(variables["params"])
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(variables["params"])


def test_one_rank_rule_single_examples_and_vmap_work_like_batches():
    from jaxflows.models import glow

    flow = glow((8, 8, 1), levels=2, depth=1, hidden=8, num_classes=3)
    apply = jax.jit(flow.apply, static_argnames="method")  # the rank rule acts at trace time
    x = jax.random.uniform(jax.random.key(0), (5, 8, 8, 1))
    labels = jnp.array([0, 1, 2, 0, 1])
    variables = jax.jit(flow.init)(jax.random.key(1), x, labels)
    batch = apply(variables, x, labels, method="log_prob")
    single = apply(variables, x[2], labels[2], method="log_prob")
    assert single.shape == () and np.isclose(single, batch[2], rtol=1e-5)
    mapped = jax.jit(jax.vmap(lambda e, y: flow.apply(variables, e, y, method="log_prob")))(x, labels)
    np.testing.assert_allclose(mapped, batch, rtol=1e-5)  # two compiled programs: float32 sums reorder
    z, log_det = apply(variables, x[0], labels[0], method="forward")
    assert z.shape == (8, 8, 1) and log_det.shape == ()
    x_back, _ = apply(variables, z, labels[0], method="inverse")
    np.testing.assert_allclose(x_back, x[0], atol=1e-5)
    with pytest.raises(ShapeError, match=r"one example of shape \(8, 8, 1\) or a batch"):
        flow.apply(variables, x[0, :, :, 0], labels[0], method="log_prob")
