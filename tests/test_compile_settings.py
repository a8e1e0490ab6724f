"""The suite compiles with fast-compiling XLA:CPU settings (tests/conftest.py); a model's numbers
must not depend on them: the same log-likelihoods and gradients come out of a process that runs
with XLA's defaults, as users do."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from jaxflows.models import glow
from tests.harness import perturb_params

REPO = Path(__file__).resolve().parent.parent


def small_glow():
    return glow((4, 4, 2), levels=2, depth=1, hidden=8)  # ActNorm, LU 1x1 conv, affine coupling, split


def batch() -> np.ndarray:
    return np.random.default_rng(0).uniform(size=(4, 4, 4, 2)).astype(np.float32)


def log_likelihoods_and_gradients(variables) -> dict[str, list[float]]:
    """log p(x) of the fixed batch and the gradient of its mean with respect to the parameters."""
    flow, x = small_glow(), batch()

    def mean_and_log_prob(params):
        log_prob = flow.apply({**variables, "params": params}, x)
        return jnp.mean(log_prob), log_prob

    (_, value), grads = jax.jit(jax.value_and_grad(mean_and_log_prob, has_aux=True))(variables["params"])
    flat = jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grads)])
    return {"log_prob": np.asarray(value).tolist(), "grads": np.asarray(flat).tolist()}


_SCRIPT = """
import json, sys
from pathlib import Path
from flax import serialization
from tests.test_compile_settings import log_likelihoods_and_gradients
variables = serialization.msgpack_restore(Path(sys.argv[1]).read_bytes())
print(json.dumps(log_likelihoods_and_gradients(variables)))
"""


@pytest.mark.skipif(os.environ.get("JAXFLOWS_TEST_XLA_DEFAULTS") == "1", reason="already XLA's defaults")
def test_the_suites_compile_settings_give_the_numbers_of_xlas_defaults(tmp_path):
    k_init, k_noise = jax.random.split(jax.random.key(1))
    variables = perturb_params(jax.jit(small_glow().init)(k_init, batch()), 0.05, k_noise)
    path = tmp_path / "variables.msgpack"
    path.write_bytes(serialization.msgpack_serialize(jax.tree_util.tree_map(np.asarray, variables)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # XLA's defaults, one CPU device
    command = [sys.executable, "-c", _SCRIPT, str(path)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    defaults = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = log_likelihoods_and_gradients(variables)
    np.testing.assert_allclose(ours["log_prob"], defaults["log_prob"], rtol=1e-5)
    expected = np.asarray(defaults["grads"])
    np.testing.assert_allclose(ours["grads"], expected, rtol=1e-4, atol=1e-5 * np.max(np.abs(expected)))
