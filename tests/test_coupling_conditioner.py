"""Pluggable conditioners: `Coupling(conditioner=...)` builds the user's network, sized by the
transformer, and the coupling stays a bijector (property harness), conditional and trainable."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.typing import DTypeLike

from jaxflows.bijectors import (
    AdditiveTransformer,
    AffineCoupling,
    AffineTransformer,
    Coupling,
    MatrixExpCoupling,
)
from jaxflows.core.errors import InvalidArgumentError, ShapeError
from jaxflows.models import glow
from jaxflows.ops import Precision
from tests.harness import BijectorCase, property_params


class OneHiddenLayerNet(nn.Module):
    """A user's conditioner: 3x3 conv, tanh, 1x1 conv to out_channels; a context adds a bias."""

    width: int
    out_channels: int
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: Precision = None

    @nn.compact
    def __call__(self, x, context=None):
        policy = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        h = nn.Conv(self.width, (3, 3), name="hidden", **policy)(x)
        if context is not None:
            h = h + nn.Dense(self.width, name="context", **policy)(context)[:, None, None, :]
        return nn.Conv(self.out_channels, (1, 1), name="out", **policy)(jnp.tanh(h))


NET = functools.partial(OneHiddenLayerNet, width=6)


def vectors(key, batch):
    return jax.random.normal(key, (batch, 3))


CASES = [
    BijectorCase(
        "affine_channel", lambda: Coupling(transformer=AffineTransformer(), conditioner=NET), (2, 4, 4, 4)
    ),
    BijectorCase(
        "additive_checkerboard",
        lambda: Coupling(mask="checkerboard", parity=1, transformer=AdditiveTransformer(), conditioner=NET),
        (2, 4, 4, 2),
    ),
    BijectorCase("matrix_exp", lambda: MatrixExpCoupling(conditioner=NET, form="full"), (2, 3, 3, 4)),
    BijectorCase(
        "affine_conditional", lambda: AffineCoupling(conditioner=NET), (2, 4, 4, 4), context=vectors
    ),
]


# -m slow: a user conditioner feeding the matrix-exp transformer (the plumbing is the affine and
# additive cases'; the transformer's maths is test_matrix_exp.py's)
@pytest.mark.parametrize(("case", "check"), property_params(CASES, slow={"matrix_exp"}))
def test_user_conditioner_properties(case, check):
    check(case)


@pytest.mark.parametrize(
    ("layer", "channels", "out_channels"),
    [
        (Coupling(transformer=AffineTransformer(), conditioner=NET), 6, 2 * 3),
        (Coupling(transformer=AdditiveTransformer(), conditioner=NET), 6, 3),
        (MatrixExpCoupling(conditioner=NET, form="full"), 4, 2 * 3),  # c + c² for c = 2 active
        (MatrixExpCoupling(conditioner=NET, form="low_rank", rank=2), 4, 2 * (2 * 2 + 1)),
    ],
    ids=["affine", "additive", "matrix_exp_full", "matrix_exp_low_rank"],
)
def test_the_transformer_sizes_the_conditioner(layer, channels, out_channels):
    x = jnp.ones((1, 4, 4, channels))
    params = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    assert params["network"]["out"]["kernel"].shape == (1, 1, 6, out_channels)
    assert layer.num_params(channels // 2) == out_channels


def test_default_conditioner_keeps_glows_parameter_paths():
    params = jax.eval_shape(AffineCoupling(8).init, jax.random.key(0), jnp.ones((1, 4, 4, 4)))["params"]
    assert set(params) == {"network"}
    assert set(params["network"]) == {"conv_in", "conv_hidden", "conv_out"}
    assert params["network"]["conv_out"]["kernel"].shape[-1] == 4  # (t, h_s) for 2 active channels


def test_conditioner_of_the_wrong_size_or_kind_is_rejected():
    wrong = Coupling(
        transformer=AffineTransformer(), conditioner=lambda out_channels, **kw: NET(out_channels=1, **kw)
    )
    with pytest.raises(ShapeError, match=r"conditioner must return h of shape \(1, 4, 4, 4\)"):
        wrong.init(jax.random.key(0), jnp.ones((1, 4, 4, 4)))
    with pytest.raises(InvalidArgumentError, match="conditioner must build a network module"):
        AffineCoupling(conditioner="mlp")


def test_glow_with_a_user_conditioner_trains():
    flow = glow((8, 8, 1), levels=2, depth=2, hidden=8, coupling_kwargs={"conditioner": NET})
    x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1))
    variables = flow.init(jax.random.key(1), x)
    level = variables["params"]["bijector"]["level1"]["flow_steps"]["coupling"]
    assert set(level["network"]) == {"hidden", "out"}
    optimizer = optax.adam(1e-2)

    def loss(params):
        return -jnp.mean(flow.apply({**variables, "params": params}, x, method="log_prob"))

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, value

    params, state = variables["params"], optimizer.init(variables["params"])
    losses = []
    for _ in range(30):
        params, state, value = step(params, state)
        losses.append(float(value))
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.5
    z, _ = flow.apply({**variables, "params": params}, x, method="forward")
    x_back, _ = flow.apply({**variables, "params": params}, z, method="inverse")
    assert float(jnp.max(jnp.abs(x_back - x))) < 1e-4
