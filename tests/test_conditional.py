"""Conditional flows p(x | c): every conditional layer and whole conditional models through the
shared harness, the context's effect, exact agreement with unconditional models at context=None,
and the named errors. Select with `-k conditional`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.analysis import log_det_breakdown
from jaxflows.bijectors import ActNorm, AdditiveCoupling, AffineCoupling, Conv1x1LU, LearnedPrior, Split
from jaxflows.bijectors.matrix_exp import MatrixExpCoupling
from jaxflows.core import Chain, Repeat, functional
from jaxflows.core.context import (
    ContextShapeError,
    LabelRangeError,
    MissingContextError,
    UnexpectedContextError,
)
from jaxflows.models import glow
from tests.harness import (
    PROPERTIES,
    BijectorCase,
    case_context,
    check_log_det_matches_jacobian,
    perturb_params,
    setup_case,
)


def vectors(width: int):
    return lambda key, batch: jax.random.normal(key, (batch, width))


def labels(num_classes: int):
    return lambda key, batch: jax.random.randint(key, (batch,), 0, num_classes)


TINY = {"levels": 2, "depth": 1, "hidden": 4}
STEP = lambda: Chain(
    [ActNorm(), Conv1x1LU(), AffineCoupling(hidden=8)], names=["actnorm", "conv", "coupling"]
)

slow = pytest.mark.slow
GLOW_LABELS = BijectorCase(
    "conditional_glow_labels",
    lambda: glow((4, 4, 2), num_classes=3, **TINY),
    (3, 4, 4, 2),
    data="unit",
    context=labels(3),
)

CASES = [
    BijectorCase(
        "conditional_affine_channel", lambda: AffineCoupling(hidden=8), (2, 4, 4, 4), context=vectors(3)
    ),
    pytest.param(
        BijectorCase(
            "conditional_affine_checkerboard",
            lambda: AffineCoupling(hidden=8, mask="checkerboard", parity=1),
            (2, 4, 4, 2),
            context=vectors(3),
        ),
        marks=slow,
    ),
    pytest.param(
        BijectorCase(
            "conditional_additive", lambda: AdditiveCoupling(hidden=8), (2, 4, 4, 4), context=vectors(2)
        ),
        marks=slow,
    ),
    pytest.param(
        BijectorCase(
            "conditional_matrix_exp_coupling",
            lambda: MatrixExpCoupling(hidden=8),
            (2, 3, 3, 4),
            perturb=0.3,
            context=vectors(3),
        ),
        marks=slow,
    ),
    BijectorCase("conditional_split", Split, (2, 4, 4, 4), context=vectors(3)),
    BijectorCase("conditional_learned_prior", LearnedPrior, (2, 4, 4, 3), context=vectors(3)),
    pytest.param(BijectorCase("conditional_glow_step", STEP, (2, 4, 4, 4), context=vectors(3)), marks=slow),
    pytest.param(
        BijectorCase("conditional_repeat", lambda: Repeat(STEP(), 3), (2, 4, 4, 4), context=vectors(3)),
        marks=slow,
    ),
    pytest.param(
        BijectorCase(
            "conditional_repeat_invertible",
            lambda: Repeat(STEP(), 3, gradient="invertible"),
            (2, 4, 4, 4),
            context=vectors(3),
            jacobian="jacrev",
        ),
        marks=slow,
    ),
    pytest.param(GLOW_LABELS, marks=slow),
    pytest.param(
        BijectorCase(
            "conditional_glow_vectors",
            lambda: glow((4, 4, 2), context_features=2, **TINY),
            (2, 4, 4, 2),
            data="unit",
            context=vectors(2),
        ),
        marks=slow,
    ),
]


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conditional_bijector_properties(case, check):
    check(case)


@pytest.mark.slow  # default-run budget: the conditional layers' own harness cases check their jacobians
def test_conditional_glow_log_det_matches_the_float64_jacobian():
    """A whole class-conditional Glow in the default run: its log-det against the dense float64
    jacobian with the label held fixed (every property under -m slow)."""
    check_log_det_matches_jacobian(GLOW_LABELS)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_conditional_layers_depend_on_the_context(case):
    module, variables, x = setup_case(case)
    forward = jax.jit(lambda v, a, c: module.apply(v, a, c, method="forward"))
    c = case_context(case)
    other = case_context(case, 2 * x.shape[0])[x.shape[0] :]
    if jnp.issubdtype(c.dtype, jnp.integer):
        other = (c + 1) % 3
    y, ld = forward(variables, x, c)
    y2, ld2 = forward(variables, x, other)
    assert float(jnp.max(jnp.abs(y - y2)) + jnp.max(jnp.abs(ld - ld2))) > 1e-4


def _flow_and_variables(conditional: bool, seed: int = 0):
    flow = glow((4, 4, 2), num_classes=4 if conditional else None, **TINY)
    x = jax.random.uniform(jax.random.key(seed), (6, 4, 4, 2))
    y = jnp.arange(6) % 4
    variables = jax.jit(flow.init)(jax.random.key(1), x, y if conditional else None)
    return flow, variables, x, y


def _log_prob(flow):
    return jax.jit(lambda v, x, c: flow.apply(v, x, c, method="log_prob"))


def test_conditional_glow_at_init_is_the_unconditional_glow():
    """The context projections start at zero and are the only new parameters: the same seed gives
    the unconditional model's parameters and exactly its log-likelihoods, for every label."""
    cond, cond_vars, x, _ = _flow_and_variables(True)
    plain, plain_vars, _, _ = _flow_and_variables(False)
    flat_cond = {"/".join(map(str, p)): a for p, a in jax.tree_util.tree_leaves_with_path(cond_vars)}
    flat_plain = {"/".join(map(str, p)): a for p, a in jax.tree_util.tree_leaves_with_path(plain_vars)}
    extra = sorted(set(flat_cond) - set(flat_plain))
    assert extra and all("'context'" in p for p in extra), extra
    for path, value in flat_plain.items():
        np.testing.assert_array_equal(flat_cond[path], value, err_msg=path)
    expected = _log_prob(plain)(plain_vars, x, None)
    log_prob = _log_prob(cond)
    for label in range(4):
        np.testing.assert_array_equal(log_prob(cond_vars, x, jnp.full((6,), label)), expected)


def test_unconditional_layers_called_with_context_none_are_unchanged():
    """context=None takes exactly the unconditional code path: same variables, same numbers."""
    layer = AffineCoupling(hidden=8)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    variables = perturb_params(layer.init(jax.random.key(1), x), 0.1, jax.random.key(2))
    assert "context" not in variables["params"]["network"]
    y, ld = layer.apply(variables, x, method="forward")
    y_none, ld_none = layer.apply(variables, x, None, method="forward")
    np.testing.assert_array_equal(y, y_none)
    np.testing.assert_array_equal(ld, ld_none)


def _trained_like(flow, variables, seed=3):
    return perturb_params(variables, 0.05, jax.random.key(seed))


def test_conditional_log_likelihoods_and_samples_differ_between_labels():
    flow, variables, x, _ = _flow_and_variables(True)
    variables = _trained_like(flow, variables)
    log_prob = _log_prob(flow)
    lp = [log_prob(variables, x, jnp.full((6,), k)) for k in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert float(jnp.max(jnp.abs(lp[a] - lp[b]))) > 1e-3
    key = jax.random.key(7)
    sample = jax.jit(lambda c: flow.apply(variables, key, 5, 0.7, c, method="sample"))
    samples = [sample(jnp.full((5,), k, jnp.int32)) for k in range(2)]
    assert samples[0].shape == (5, 4, 4, 2)
    assert float(jnp.max(jnp.abs(samples[0] - samples[1]))) > 1e-3
    # one integer label for all samples is broadcast to every sample
    per_row = flow.apply(variables, key, 5, 0.7, 1, method="sample")
    np.testing.assert_allclose(per_row, samples[1], atol=1e-6)


def test_conditional_functional_view_and_round_trip_under_jit():
    flow, variables, x, y = _flow_and_variables(True)
    variables = _trained_like(flow, variables)
    f = functional(flow, variables)
    z, ld = jax.jit(f.forward)(x, y)
    x_back, ld_inv = jax.jit(f.inverse)(z, y)
    np.testing.assert_allclose(x_back, x, atol=1e-5)
    np.testing.assert_allclose(ld_inv, -ld, rtol=1e-5, atol=1e-5)  # float32 log-dets of ~42 nats
    np.testing.assert_allclose(jax.jit(f.log_det)(x, y), ld, rtol=1e-6, atol=1e-4)


def test_conditional_log_det_breakdown_adds_up_to_the_conditional_log_prob():
    flow, variables, x, _ = _flow_and_variables(True)
    variables = _trained_like(flow, variables)
    breakdown = jax.jit(lambda c: log_det_breakdown(flow, variables, x, c))
    terms = {}
    for label in (0, 3):
        context = jnp.full((6,), label)
        terms[label] = breakdown(context)
        total = sum(terms[label].values())
        # float32 sums of terms of size ~10: an absolute tolerance for totals near 0
        np.testing.assert_allclose(total, _log_prob(flow)(variables, x, context), rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(terms[0]["level1/split"] - terms[3]["level1/split"]))) > 1e-4


@pytest.mark.parametrize("gradient", [pytest.param("remat", marks=slow), "invertible"])
def test_conditional_gradients_match_standard_backprop(gradient):
    """Gradients with respect to parameters and to a float context are the same in every mode."""
    x = jax.random.uniform(jax.random.key(0), (3, 4, 4, 2))
    c = jax.random.normal(jax.random.key(1), (3, 2))
    grads = {}
    for mode in ("standard", gradient):
        flow = glow((4, 4, 2), context_features=2, gradient=mode, **TINY)
        variables = _trained_like(flow, jax.jit(flow.init)(jax.random.key(2), x, c))
        rest = {k: v for k, v in variables.items() if k != "params"}

        def loss(p, ctx, flow=flow, rest=rest):
            return -jnp.mean(flow.apply({"params": p, **rest}, x, ctx, method="log_prob"))

        grads[mode] = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], c)
    pairs = zip(
        jax.tree_util.tree_leaves(grads["standard"]), jax.tree_util.tree_leaves(grads[gradient]), strict=True
    )
    for a, b in pairs:
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(grads["standard"][1]).sum()) > 0


def test_conditional_flow_named_errors():
    flow, variables, x, y = _flow_and_variables(True)
    with pytest.raises(MissingContextError, match="conditional"):
        flow.apply(variables, x, method="log_prob")
    with pytest.raises(LabelRangeError, match=r"0…3.*\[4\]"):
        flow.apply(variables, x, jnp.array([0, 1, 2, 3, 4, 1]), method="log_prob")
    with pytest.raises(LabelRangeError):
        flow.apply(variables, x, jnp.array([0, 1, 2, 3, -1, 1]), method="log_prob")
    with pytest.raises(ContextShapeError, match="batch of 6"):
        flow.apply(variables, x, jnp.array([0, 1, 2]), method="log_prob")
    with pytest.raises(ContextShapeError, match=r"\(6, 4\)"):
        flow.apply(variables, x, jnp.ones((6, 3)), method="log_prob")
    with pytest.raises(MissingContextError):
        flow.apply(variables, jax.random.key(0), 2, method="sample")
    plain, plain_vars, _, _ = _flow_and_variables(False)
    with pytest.raises(UnexpectedContextError, match="unconditional"):
        plain.apply(plain_vars, x, y, method="log_prob")
    vector_flow = glow((4, 4, 2), context_features=2, **TINY)
    with pytest.raises(ContextShapeError, match="floating"):
        vector_flow.init(jax.random.key(0), x, jnp.zeros((6, 2), jnp.int32))


def test_conditional_layer_called_without_its_context_is_a_named_error():
    layer = AffineCoupling(hidden=8)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    c = jnp.ones((2, 3))
    variables = layer.init(jax.random.key(1), x, c)
    with pytest.raises(MissingContextError, match="without one"):
        layer.apply(variables, x, method="forward")
    with pytest.raises(ContextShapeError, match="3 rows"):
        layer.apply(variables, x, jnp.ones((3, 3)), method="forward")
    prior = Split()
    prior_vars = prior.init(jax.random.key(1), x, c)
    with pytest.raises(MissingContextError):
        prior.apply(prior_vars, x, method="inverse")


def test_conditional_flow_rejects_two_kinds_of_context():
    with pytest.raises(ValueError, match="not both"):
        glow((8, 8, 1), num_classes=3, context_features=2, **TINY)
    with pytest.raises(ValueError, match="num_classes"):
        glow((8, 8, 1), num_classes=0, **TINY)


def test_conditional_training_pipeline_with_the_auxiliary_classifier():
    """Labelled batches through the real loop (digits), the classification loss, and the evaluation
    a class-conditional model gets: bits/dim given the label, marginal bits/dim, Bayes accuracy."""
    from jaxflows.train import TrainConfig, evaluate, train

    config = TrainConfig(
        dataset="digits",
        model={"levels": 1, "depth": 1, "hidden": 8, "num_classes": 10, "classifier": True},
        batch_size=16,
        init_batch_size=64,
        warmup_steps=2,
        num_steps=6,
        log_every=3,
        eval_every=0,
        eval_batch_size=128,
        learning_rate=1e-2,
        class_loss_weight=1.0,
    )
    result = train(config, None, progress=False)
    assert [row["step"] for row in result.history] == [3, 6]
    assert all(np.isfinite(row["class_loss_bits"]) for row in result.history)
    head = result.state.params["bijector"]["level1"]["prior"]["classifier"]["kernel"]
    assert float(jnp.abs(head).sum()) > 0  # zero-initialised, trained by the class loss only
    scores = evaluate(result.experiment, result.state)
    assert 0.0 <= scores["bayes_accuracy"] <= 1.0
    bound = math.log2(10) / (8 * 8)  # marginal ≤ conditional + log2(1 / min p(c)) / D, roughly
    assert scores["marginal_bits_per_dim"] <= scores["flow_bits_per_dim"] + 2 * bound
    assert np.isfinite(scores["conditional_bits_per_dim"])


def test_conditional_config_checks_the_classifier_and_the_labels():
    from jaxflows.train import TrainConfig
    from jaxflows.train.errors import ConfigError
    from jaxflows.train.experiment import setup

    with pytest.raises(ConfigError, match="class_loss_weight"):
        TrainConfig(model={"levels": 1, "depth": 1, "hidden": 8}, class_loss_weight=0.1)
    with pytest.raises(ValueError, match="num_classes=3 but dataset 'digits' has 10 classes"):
        setup(TrainConfig(model={"levels": 1, "depth": 1, "hidden": 8, "num_classes": 3}))
    with pytest.raises(ValueError, match="classifier=True needs num_classes"):
        glow((8, 8, 1), classifier=True, **TINY)


def test_label_dropout_conditions_dropped_examples_on_the_mean_class():
    from jaxflows.core.objective import example_keys
    from jaxflows.train.steps import drop_labels

    pixels, labels = jnp.zeros((4000, 2)), jnp.arange(4000) % 10
    keys = example_keys(jax.random.key(0), jnp.arange(4000))
    kept_pixels, weights = drop_labels((pixels, labels), keys, 0.25, 10)
    uniform = np.all(np.asarray(weights) == 0.1, axis=1)
    one_hot = np.asarray(weights) == np.asarray(jax.nn.one_hot(labels, 10))
    assert kept_pixels is pixels and np.all(one_hot[~uniform]) and abs(uniform.mean() - 0.25) < 0.03
    np.testing.assert_array_equal(weights, drop_labels((pixels, labels), keys, 0.25, 10)[1])  # per key
    assert not np.any(np.all(np.asarray(drop_labels((pixels, labels), keys, 0.0, 10)[1]) == 0.1, axis=1))


def test_label_dropout_trains_the_mean_class_pass_and_is_checked():
    from jaxflows.train import TrainConfig, train
    from jaxflows.train.errors import ConfigError

    model = {"levels": 1, "depth": 1, "hidden": 8, "num_classes": 10}
    config = TrainConfig(
        dataset="digits", model=model, batch_size=16, init_batch_size=64, warmup_steps=2, num_steps=3,
        log_every=3, eval_every=0, learning_rate=1e-2,
    )  # fmt: skip
    plain = train(config, None, progress=False).history[-1]["loss"]
    dropped = train(config.replace(label_dropout=0.5), None, progress=False).history[-1]["loss"]
    assert np.isfinite(dropped) and dropped != plain
    with pytest.raises(ConfigError, match="label_dropout"):
        TrainConfig(model={"levels": 1, "depth": 1, "hidden": 8}, label_dropout=0.1)
    with pytest.raises(ConfigError, match="label_dropout"):
        TrainConfig(model=model, label_dropout=1.0)
