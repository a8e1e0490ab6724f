"""Variables that do not fit the model they are applied to.

Flax reads only the variables a module asks for, so on its own it would run variables from another
model (a deeper Glow, one with more levels, a stray entry) silently: extra entries ignored, a
`Repeat` scanning over however many stacked steps it is given. `Flow.apply` therefore compares the
variables' paths and shapes with those `Flow.init` creates (computed once per flow, abstractly,
with `jax.eval_shape`; under `jit` the comparison runs at trace time only), and `Repeat` checks
the depth of its stack. Missing entries are left to Flax, which names them when they are read.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxflows.core.errors import InvalidArgumentError, JaxflowsError

Path = tuple[str, ...]
Shapes = dict[Path, tuple[int, ...]]
Specs = dict[Path, jax.ShapeDtypeStruct]  # path -> shape and dtype of every variable init creates
_SHOWN = 5  # paths listed per problem


class VariablesMismatchError(JaxflowsError, ValueError):
    """Variables whose paths or shapes differ from the ones the model creates."""


class UnusedVariablesError(VariablesMismatchError):
    """Variables the model never reads: extra entries, or more stacked steps than a `Repeat` has."""


class MissingCollectionError(VariablesMismatchError):
    """Variables without one of the collections `init` creates (e.g. `constants`)."""


def _leaf_shape(leaf: Any) -> tuple[int, ...]:
    shape = getattr(leaf, "shape", None)
    return tuple(np.shape(leaf) if shape is None else shape)


def _leaf_dtype(leaf: Any) -> np.dtype:
    dtype = getattr(leaf, "dtype", None)
    return np.dtype(np.result_type(leaf) if dtype is None else dtype)


def flat_shapes(variables: Any) -> Shapes:
    """Path (collection, module names…, variable name) -> shape of every leaf of a variables dict."""
    return {path: _leaf_shape(leaf) for path, leaf in traverse_util.flatten_dict(variables).items()}


def _listed(paths: list[str]) -> str:
    more = f", … ({len(paths) - _SHOWN} more)" if len(paths) > _SHOWN else ""
    return ", ".join(paths[:_SHOWN]) + more


def abstract_init(init: Callable[[Any], Any], example: jax.ShapeDtypeStruct) -> Specs:
    """Shapes and dtypes of `init(example)`'s variables, traced in a fresh thread: Flax method
    interceptors, module contexts and JAX traces are thread-local, so none of the caller's (e.g. an
    enclosing `flax.linen.intercept_methods`, as `jaxflows.analysis` uses) sees or alters this trace."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return dict(traverse_util.flatten_dict(pool.submit(jax.eval_shape, init, example).result()))


def variable_specs(module, example_input: Any = None) -> Specs:
    """Path -> shape and dtype of every variable `module.init` creates, computed abstractly (no FLOPs).

    A module that knows its own variables (a `Flow`: its `event_shape` fixes them) provides them as
    `module.variable_specs()`, and `example_input` is ignored. Other modules are initialised on
    `example_input`'s shape and dtype.
    """
    own = getattr(module, "variable_specs", None)
    if own is not None:
        return own()
    if example_input is None:
        raise InvalidArgumentError(
            f"{type(module).__name__}: check_variables needs an example input (not a Flow)"
        )
    example = jax.ShapeDtypeStruct(jnp.shape(example_input), jnp.result_type(example_input))
    return abstract_init(lambda x: module.init(jax.random.key(0), x), example)


def _kind(dtype) -> str:
    return "integer" if jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_) else "float"


def compare_variables(expected: Specs, variables: Any, owner: str) -> None:
    """Raise if `variables` lack a collection `expected` has, hold paths it lacks, other shapes, or
    floats where the model keeps integers (or the reverse); missing paths are left to Flax."""
    given_specs = dict(traverse_util.flatten_dict(variables))
    missing = sorted({p[0] for p in expected} - {p[0] for p in given_specs})
    if missing and given_specs:
        have = sorted({p[0] for p in given_specs})
        raise MissingCollectionError(
            f"{owner}: variables have the collection(s) {have} but not {missing}, which init also "
            'creates ("constants" holds non-trained arrays such as the LU permutation); pass every '
            "collection init returned, e.g. {**variables, 'params': new_params}"
        )
    retyped = [
        f"{'/'.join(p)} is {_leaf_dtype(given_specs[p])} where the model has {np.dtype(expected[p].dtype)}"
        for p in given_specs
        if p in expected and _kind(_leaf_dtype(given_specs[p])) != _kind(expected[p].dtype)
    ]
    if retyped:
        raise VariablesMismatchError(
            f"{owner}: variables do not fit the model: {len(retyped)} variable(s) of another kind of dtype: "
            f"{_listed(retyped)} (integer constants are not trained: keep them out of optimisers and noise)"
        )
    given = {p: _leaf_shape(leaf) for p, leaf in given_specs.items()}
    expected = {p: tuple(spec.shape) for p, spec in expected.items()}
    unused = ["/".join(p) for p in given if p not in expected]
    mismatched = [p for p in given if p in expected and given[p] != expected[p]]
    problems = []
    if unused:
        problems.append(f"{len(unused)} variable(s) the model does not have: {_listed(unused)}")
    longer = False
    if mismatched:
        shapes = [f"{'/'.join(p)} has shape {given[p]} where the model has {expected[p]}" for p in mismatched]
        problems.append(f"{len(mismatched)} variable(s) of another shape: {_listed(shapes)}")
        # Only the leading axis differs, by the same amount everywhere: a `Repeat` stack of another depth.
        leading_only = lambda p: given[p] and expected[p] and given[p][1:] == expected[p][1:]
        depths = {(given[p][0], expected[p][0]) if leading_only(p) else None for p in mismatched}
        if len(depths) == 1 and None not in depths:
            ((have, want),) = depths
            longer = have > want
            kind = "deeper" if longer else "shallower"
            problems.append(
                f"{have} stacked steps where the model's Repeat has {want} "
                f"(only the leading axis differs): variables from a {kind} model?"
            )
    if problems:
        error = UnusedVariablesError if unused or longer else VariablesMismatchError
        raise error(f"{owner}: variables do not fit the model: " + "; ".join(problems))


def check_variables(module, variables: Any, example_input: Any = None) -> None:
    """Raise `UnusedVariablesError` if `variables` hold entries `module` never reads (extra paths,
    or more stacked steps than a `Repeat` has), `MissingCollectionError` if a collection init
    creates is absent, `VariablesMismatchError` for other shapes or a float where the model keeps an
    integer.

    `Flow.apply` runs this itself; call it to check variables before use, or for other modules
    (which need `example_input`, an array or `jax.ShapeDtypeStruct` that `module.init` accepts).
    """
    compare_variables(variable_specs(module, example_input), variables, type(module).__name__)
