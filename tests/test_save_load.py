"""Save and load any flow a registered builder makes (`jaxflows.pretrained.save/load/build`): every
builder in `MODELS` round-trips its variables bitwise, and a new process rebuilds the same flow."""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.core import Chain, Flow, StandardNormal
from jaxflows.models import MODELS, coupling_flow
from jaxflows.pretrained import UnregisteredFlowError, build, card, load, save
from jaxflows.pretrained.recipes import first_difference, from_json, to_json

# The smallest sensible instance of every registered builder: (event shape, keyword arguments).
# A new family registered with `register_model` adds its row here (the test below fails until then).
TINY = {
    "glow": ((4, 4, 1), {"levels": 1, "depth": 1, "hidden": 4}),
    "coupling_flow": ((2,), {"depth": 1, "hidden": 4}),
    "planar_flow": ((2,), {"depth": 2}),
    "sylvester_flow": ((3,), {"depth": 1}),
    "residual_flow": ((2,), {"depth": 1, "hidden": 4, "num_layers": 2}),
    "maf": ((2,), {"depth": 1, "hidden": [4]}),
    "autoregressive_spline_flow": ((2,), {"depth": 1, "hidden": [4], "bins": 3}),
    "jet": ((8, 8, 1), {"patch_size": 4, "couplings": 1, "depth": 1, "width": 8, "heads": 1}),
    "tarflow": ((4, 4, 1), {"patch_size": 2, "width": 8, "blocks": 2, "layers_per_block": 1, "heads": 2}),
    "ffjord_flow": ((2,), {"depth": 1, "hidden": 4, "num_layers": 2}),
}


def _example(flow: Flow, n: int = 3) -> jnp.ndarray:
    """n points inside the flow's domain."""
    rng = np.random.default_rng(1)
    domain = flow.domain
    if domain is None:
        return jnp.asarray(rng.normal(size=(n, *flow.event_shape)), jnp.float32)
    low, high = domain
    return jnp.asarray(low + (high - low) * rng.uniform(0.05, 0.95, (n, *flow.event_shape)), jnp.float32)


def _perturbed(variables, seed: int = 0):
    """The parameters moved off their initial values (zero-initialised layers would hide a swap)."""
    leaves, tree = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(jax.random.key(seed, impl="threefry2x32"), len(leaves))
    moved = [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys, strict=True)]
    return {**variables, "params": jax.tree_util.tree_unflatten(tree, moved)}


def _log_prob(flow: Flow, variables, x) -> np.ndarray:
    return np.asarray(jax.jit(lambda v, x: flow.apply(v, x, method="log_prob"))(variables, x))


def _identical(a, b) -> bool:
    same = jax.tree_util.tree_map(lambda x, y: x.dtype == y.dtype and bool(jnp.all(x == y)), a, b)
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and jax.tree_util.tree_all(same)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_builder_saves_and_loads_bitwise(name, tmp_path):
    assert name in TINY, (
        f"model {name!r} is registered but has no row in tests/test_save_load.py's TINY table: add its "
        "smallest event shape and keyword arguments there"
    )
    event_shape, kwargs = TINY[name]
    model = {"name": name, **kwargs}
    flow = MODELS[name](event_shape, **kwargs)  # the builder called directly: save needs model=
    x = _example(flow)
    variables = _perturbed(jax.jit(flow.init)(jax.random.key(0), x))
    written = save(tmp_path / name, flow, variables, model=model, description=f"tiny {name}")
    assert written.model == model and written.event_shape == tuple(event_shape)
    assert card(written.path).architecture == json.loads(written.path.read_text())["architecture"]

    loaded_flow, loaded = load(written.path)
    assert first_difference(loaded_flow, flow) is None
    assert _identical(variables, loaded), "every collection comes back in its own dtype, bit for bit"
    np.testing.assert_array_equal(_log_prob(loaded_flow, loaded, x), _log_prob(flow, variables, x))
    # A loaded flow remembers its recipe: saved again without model=, the same bytes.
    again = save(tmp_path / "again", loaded_flow, loaded)
    assert again.sha256 == written.sha256 and again.architecture == written.architecture


_CHILD = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from jaxflows.pretrained import load
    for path in sys.argv[1:]:
        flow, variables = load(path + ".json")
        x = np.load(path + "_x.npy")
        log_prob = jax.jit(lambda v, x: flow.apply(v, x, method="log_prob"))(variables, x)
        np.save(path + "_child.npy", np.asarray(log_prob))
    """
)


def test_a_new_process_gives_bitwise_equal_log_prob(tmp_path):
    """A vector flow (coupling_flow on (2,)) trained-like (parameters off their init) and a small
    Glow, saved here and loaded in a fresh Python process: the same log p(x), bit for bit."""
    cases = {
        "moons": (build({"name": "coupling_flow", "depth": 2, "hidden": 8}, event_shape=(2,)), 8),
        "glow": (build({"name": "glow", "levels": 2, "depth": 1, "hidden": 8}, event_shape=(8, 8, 1)), 4),
    }
    expected = {}
    for stem, (flow, n) in cases.items():
        x = _example(flow, n)
        variables = _perturbed(jax.jit(flow.init)(jax.random.key(0), x))
        save(tmp_path / stem, flow, variables, bins=256 if stem == "glow" else None)
        np.save(tmp_path / f"{stem}_x.npy", np.asarray(x))
        expected[stem] = _log_prob(flow, variables, x)
    paths = [str(tmp_path / stem) for stem in cases]
    subprocess.run([sys.executable, "-c", _CHILD, *paths], check=True, timeout=300)
    for stem in cases:
        child = np.load(tmp_path / f"{stem}_child.npy")
        assert child.dtype == expected[stem].dtype and np.all(np.isfinite(child))
        np.testing.assert_array_equal(child, expected[stem], err_msg=stem)


def test_a_flow_without_a_recipe_is_a_named_error_that_says_how_to_give_it_one(tmp_path):
    flow = coupling_flow(2, depth=1, hidden=4)
    variables = flow.init(jax.random.key(0), jnp.zeros((2, 2)))
    with pytest.raises(UnregisteredFlowError, match=r"model=\{'name'.*register_model"):
        save(tmp_path / "a", flow, variables)
    by_hand = Flow(Chain([flow.bijector], names=["inner"]), StandardNormal(), event_shape=(2,))
    with pytest.raises(UnregisteredFlowError, match="register_model"):
        save(tmp_path / "b", by_hand, {"params": {"bijector": {"inner": variables["params"]["bijector"]}}})
    with pytest.raises(UnregisteredFlowError, match=r"different flow.*length: 2 != 1"):
        save(tmp_path / "c", flow, variables, model={"name": "coupling_flow", "depth": 2, "hidden": 4})
    with pytest.raises(ValueError, match="takes no argument"):
        save(tmp_path / "d", flow, variables, model={"name": "coupling_flow", "layers": 2})
    assert not list(tmp_path.iterdir()), "a refused save writes nothing"


def test_save_from_a_model_dict_without_a_flow(tmp_path):
    """save(path, variables=..., model={...}, event_shape=...): what training code that keeps a
    config's model (not the flow) calls."""
    model = {"name": "coupling_flow", "depth": 1, "hidden": 4, "mixing": "lu"}
    flow = build(model, event_shape=2)
    variables = _perturbed(flow.init(jax.random.key(0), jnp.zeros((2, 2))))
    written = save(tmp_path / "m.json", variables=variables, model=model, event_shape=(2,))
    loaded_flow, loaded = load(tmp_path / "m.json")
    assert written.path == tmp_path / "m.json" and (tmp_path / "m.npz").is_file()
    assert loaded_flow == flow and _identical(variables, loaded)
    assert loaded["constants"], "LULinear's permutation and signs travel in the constants collection"


def test_the_network_policy_is_stored_and_can_be_replaced_at_load(tmp_path):
    model = {"name": "coupling_flow", "depth": 1, "hidden": 4}
    flow = build(model, event_shape=(2,), network_precision="default")
    variables = flow.init(jax.random.key(0), jnp.zeros((2, 2)))
    written = save(tmp_path / "p", flow, variables)
    assert written.architecture["pipeline"]["network_precision"] == "default"
    assert written.architecture["pipeline"]["network_dtype"] is None
    assert load(written.path)[0] == flow
    bf16, _ = load(written.path, network_dtype=jnp.bfloat16, network_precision="highest")
    assert bf16 == build(model, event_shape=(2,), network_dtype=jnp.bfloat16)


def test_keyword_arguments_keep_their_python_types_through_json():
    value = {"a": (1, 2.5), "b": [jnp.float32, jnp.dtype("bfloat16")], "c": {"d": None, "e": "x"}}
    back = from_json(json.loads(json.dumps(to_json(value, "kwargs"))))
    assert back == {**value, "b": [jnp.dtype("float32"), jnp.dtype("bfloat16")]}
    with pytest.raises(ValueError, match=r"kwargs\['f'\].*cannot be stored"):
        to_json({"f": object()}, "kwargs")


def test_bfloat16_parameters_round_trip(tmp_path):
    model = {"name": "planar_flow", "depth": 1, "param_dtype": jnp.bfloat16}
    flow = build(model, event_shape=(2,))
    variables = flow.init(jax.random.key(0), jnp.zeros((2, 2), jnp.float32))
    assert {a.dtype for a in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.bfloat16)}
    written = save(tmp_path / "b", flow, variables)
    assert written.architecture["model"]["param_dtype"] == {"__dtype__": "bfloat16"}
    loaded_flow, loaded = load(written.path)
    assert loaded_flow == flow and _identical(variables, loaded)


def test_build_takes_the_pipeline_arguments_and_a_config_model(tmp_path):
    """build(model, event_shape=, data_range=, dequantizer=, network_*=): what the training
    pipeline passes, remembered for save; a model without a name is a Glow (TrainConfig.model)."""
    bounded = build(
        {"name": "coupling_flow", "depth": 1, "hidden": 4}, event_shape=(2,), data_range=(-4.0, 4.0)
    )
    assert bounded.data_range == (-4.0, 4.0)
    variables = bounded.init(jax.random.key(0), jnp.zeros((2, 2)))
    assert save(tmp_path / "b", bounded, variables).architecture["pipeline"]["data_range"] == [-4.0, 4.0]
    assert load(tmp_path / "b.json")[0].data_range == (-4.0, 4.0)
    images = build({"levels": 1, "depth": 1, "hidden": 4}, event_shape=(4, 4, 1), dequantizer={"hidden": 4})
    assert images.dequantizer is not None and images.dequantizer.hidden == 4
    with pytest.raises(ValueError, match="takes no"):
        build({"name": "planar_flow"}, event_shape=(2,), dequantizer={"hidden": 4})
    with pytest.raises(ValueError, match="looks like variables"):
        save(tmp_path / "v", variables)
