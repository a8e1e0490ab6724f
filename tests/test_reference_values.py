"""Independent references for the headline numbers: bits/dim of a small image flow with given weights,
computed here in NumPy from the formulas (Glow Table 1: ActNorm, 1x1 convolution; the change of
variables; the −D log K of uniform dequantisation; nats to bits), against `Flow.log_prob`,
`Flow.discrete_log_prob` and `bits_per_dim`. The golden values recorded from the code's own output
(the pretrained cards' first-1000 bits/dim in tests/test_pretrained.py, the checkpoint-format
reference in tests/test_checkpoint_format.py) only say that the code has not changed; these say
that it computes what the papers define."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bijectors import ActNorm, Conv1x1
from jaxflows.core import Chain, Flow, StandardNormal, dequantize
from jaxflows.core.objective import bits_per_dim

SHAPE = (4, 4, 3)  # H, W, C
BINS = 256


def _weights(rng: np.random.Generator) -> dict:
    """ActNorm (bias, log-scale), a 1x1 convolution W, a second ActNorm: float64 values."""
    c = SHAPE[-1]
    w = rng.normal(size=(c, c)) + 2 * np.eye(c)
    return {
        "bias0": rng.normal(scale=0.3, size=c),
        "log_scale0": rng.normal(scale=0.5, size=c),
        "kernel": w,
        "bias1": rng.normal(scale=0.3, size=c),
        "log_scale1": rng.normal(scale=0.5, size=c),
    }


def _numpy_log_prob(x: np.ndarray, p: dict) -> np.ndarray:
    """log p(x) in nats per example: z = actnorm1(W · actnorm0(x)) per pixel, z ~ N(0, I)."""
    h, w, _ = SHAPE
    y = (x + p["bias0"]) * np.exp(p["log_scale0"])
    y = np.einsum("ij,bhwj->bhwi", p["kernel"], y)
    z = (y + p["bias1"]) * np.exp(p["log_scale1"])
    log_det = h * w * (p["log_scale0"].sum() + np.linalg.slogdet(p["kernel"])[1] + p["log_scale1"].sum())
    base = -0.5 * (z**2).reshape(len(x), -1).sum(-1) - 0.5 * z[0].size * math.log(2 * math.pi)
    return base + log_det


def _flow_and_variables(p: dict, dtype=jnp.float32):
    flow = Flow(Chain([ActNorm(), Conv1x1(), ActNorm()]), StandardNormal(), SHAPE)
    variables = flow.init(jax.random.key(0), jnp.full((2, *SHAPE), 0.5) + 0.1 * jnp.arange(3))
    params = variables["params"]["bijector"]
    names = sorted(params, key=lambda name: int(name.rsplit("_", 1)[-1]))  # the chain's layers in order
    assert len(names) == 3, names
    replaced = {
        names[0]: {"bias": p["bias0"], "log_scale": p["log_scale0"]},
        names[1]: {"kernel": p["kernel"]},
        names[2]: {"bias": p["bias1"], "log_scale": p["log_scale1"]},
    }
    for name, values in replaced.items():
        assert set(params[name]) == set(values), (name, set(params[name]))
    cast = {n: {k: jnp.asarray(v, dtype) for k, v in d.items()} for n, d in replaced.items()}
    return flow, {**variables, "params": {**variables["params"], "bijector": cast}}


def test_bits_per_dim_of_a_small_flow_matches_numpy():
    rng = np.random.default_rng(0)
    p = _weights(rng)
    # the float32 weights the flow holds, in float64 for the reference
    p = {k: np.asarray(np.float32(v), np.float64) for k, v in p.items()}
    flow, variables = _flow_and_variables(p)
    pixels = rng.integers(0, BINS, (5, *SHAPE))
    key = jax.random.key(3)
    x = np.asarray(dequantize(key, jnp.asarray(pixels), BINS), np.float64)
    assert np.all((x * BINS >= pixels) & (x * BINS < pixels + 1))  # each value in its pixel's bin

    expected = _numpy_log_prob(x, p)
    log_prob = np.asarray(flow.apply(variables, jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5)  # float32 layers: ~1e-6 relative

    d = math.prod(SHAPE)
    expected_bpd = -(expected - d * math.log(BINS)) / (d * math.log(2))
    discrete = np.asarray(flow.apply(variables, jnp.asarray(pixels), key, BINS, method="discrete_log_prob"))
    np.testing.assert_allclose(discrete, expected - d * math.log(BINS), rtol=1e-6)
    bpd = np.asarray(bits_per_dim(jnp.asarray(log_prob), d, BINS))
    # bits/dim of order 8 (uniform-ish pixels): 1e-5 absolute is ~1e-6 relative (float32)
    np.testing.assert_allclose(bpd, expected_bpd, atol=1e-5)
    assert 5.0 < float(expected_bpd.mean()) < 15.0  # a flow far from the data: a plausible magnitude


def test_the_same_in_float64():
    """Under x64 with float64 weights the library's log-density agrees with NumPy to 1e-12."""
    rng = np.random.default_rng(1)
    p = _weights(rng)
    x = rng.uniform(size=(3, *SHAPE))
    with jax.enable_x64(True):
        flow, variables = _flow_and_variables(p, jnp.float64)
        log_prob = np.asarray(flow.apply(variables, jnp.asarray(x)))
    assert log_prob.dtype == np.float64
    np.testing.assert_allclose(log_prob, _numpy_log_prob(x, p), rtol=1e-12)
