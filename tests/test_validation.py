"""Bad input at the public boundary gets an error that names what was expected."""

import jax
import jax.numpy as jnp
import pytest

from jaxflows.bijectors import AffineCoupling, Split, Squeeze
from jaxflows.models import glow


@pytest.fixture(scope="module")
def flow_and_variables():
    flow = glow((4, 4, 1), levels=1, depth=1, hidden=4)
    x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1))
    return flow, flow.init(jax.random.key(1), x)


def test_spatial_size_that_cannot_squeeze():
    with pytest.raises(ValueError, match="even"):
        Squeeze().init(jax.random.key(0), jnp.zeros((1, 3, 4, 1)))
    with pytest.raises(ValueError, match="multiples of 8"):
        glow((12, 12, 1), levels=3, depth=1, hidden=4)


def test_channels_that_cannot_split():
    with pytest.raises(ValueError, match="cannot split 1 channel"):
        Split().init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="cannot split 1 channel"):
        AffineCoupling(hidden=4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))


def test_wrong_rank(flow_and_variables):
    flow, variables = flow_and_variables
    with pytest.raises(ValueError, match=r"one example of shape \(4, 4, 1\) or a batch"):
        flow.apply(variables, jnp.zeros((4, 4)))
    with pytest.raises(ValueError, match="expected examples of shape"):
        flow.apply(variables, jnp.zeros((1, 8, 8, 1)))


def test_wrong_dtype(flow_and_variables):
    flow, variables = flow_and_variables
    with pytest.raises(TypeError, match="dequantize"):
        flow.apply(variables, jnp.zeros((1, 4, 4, 1), jnp.uint8))


def test_non_finite_pixels(flow_and_variables):
    flow, variables = flow_and_variables
    x = jnp.full((1, 4, 4, 1), 0.5).at[0, 1, 2, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="finite"):
        flow.apply(variables, x)
    with pytest.raises(ValueError, match="finite"):
        flow.apply(variables, x.at[0, 1, 2, 0].set(jnp.inf), method="forward")


def test_pixels_outside_the_documented_range(flow_and_variables):
    flow, variables = flow_and_variables
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        flow.apply(variables, jnp.full((1, 4, 4, 1), 255.0))


def test_unknown_layer_names():
    with pytest.raises(ValueError, match="unknown conv 'bogus'"):
        glow((4, 4, 1), levels=1, depth=1, hidden=4, conv="bogus")
    with pytest.raises(ValueError, match="mask must be one of"):
        AffineCoupling(hidden=4, mask="stripes").init(jax.random.key(0), jnp.zeros((1, 2, 2, 2)))
