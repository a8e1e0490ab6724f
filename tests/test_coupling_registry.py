"""The layer registry (jaxflows.models.registry): glow() builds any registered conv or coupling."""

import jax
import jax.numpy as jnp
import pytest

from jaxflows.bijectors import AffineTransformer, ReversePermutation
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.models import CONVS, COUPLINGS, glow, register_conv, register_coupling, transformer_coupling


@pytest.fixture
def registered():
    names = []

    def add(register, name, factory, **kwargs):
        register(name, factory, **kwargs)
        names.append((register, name))

    yield add
    for register, name in names:
        del (CONVS if register is register_conv else COUPLINGS)[name]


def test_glow_builds_user_registered_layers(registered):
    registered(register_conv, "my_reverse", ReversePermutation, label="my reverse")
    registered(register_coupling, "my_affine", transformer_coupling(AffineTransformer))
    flow = glow((8, 8, 1), levels=1, depth=2, hidden=4, conv="my_reverse", coupling="my_affine")
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    variables = flow.init(jax.random.key(1), x)
    params = variables["params"]["bijector"]["level1"]["flow_steps"]
    assert "conv" not in params  # a fixed permutation has no parameters
    assert set(params["coupling"]) == {"network"}
    z, _ = flow.apply(variables, x, method="forward")
    assert float(jnp.max(jnp.abs(flow.apply(variables, z, method="inverse")[0] - x))) < 1e-5
    assert CONVS.label("my_reverse") == "my reverse" and COUPLINGS.label("my_affine") == "my affine"


def test_registering_a_taken_name_needs_replace(registered):
    with pytest.raises(InvalidArgumentError, match="already registered"):
        register_coupling("affine", transformer_coupling(AffineTransformer))
    with pytest.raises(InvalidArgumentError, match="callable"):
        register_conv("not_a_factory", 3)
    registered(register_conv, "twice", ReversePermutation)
    register_conv("twice", ReversePermutation, replace=True, label="again")
    assert CONVS.label("twice") == "again"


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(InvalidArgumentError, match=r"unknown coupling 'nope'.*'additive', 'affine'"):
        glow((8, 8, 1), levels=1, depth=1, hidden=4, coupling="nope")
    with pytest.raises(InvalidArgumentError, match="unknown conv"):
        CONVS.lookup("nope")
