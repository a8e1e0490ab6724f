"""Every error class jaxflows defines is a JaxflowsError and still the built-in it refines."""

import ast
import importlib
import inspect
import pathlib
import pkgutil

import jax
import jax.numpy as jnp
import pytest

import jaxflows
from jaxflows import InputDtypeError, InvalidArgumentError, InvalidInputError, JaxflowsError, ShapeError
from jaxflows.core import ContextError
from jaxflows.train import CheckpointError, ConfigError


def _defined_errors():
    for info in pkgutil.walk_packages(jaxflows.__path__, "jaxflows."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                yield value


def test_every_error_class_is_a_jaxflows_error():
    errors = list(_defined_errors())
    assert len(errors) >= 17  # the training, data, variables and context families
    for error in errors:
        assert issubclass(error, JaxflowsError), error.__qualname__


def test_named_errors_keep_their_builtin_bases():
    assert issubclass(ConfigError, ValueError) and issubclass(ContextError, ValueError)
    assert issubclass(CheckpointError, RuntimeError)


BUILTIN_ERRORS = {"ValueError", "TypeError", "RuntimeError"}


def _bare_raises(source: str) -> list[int]:
    """Lines of `source` that raise ValueError/TypeError/RuntimeError themselves (not a subclass)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id in BUILTIN_ERRORS:
                lines.append(node.lineno)
    return lines


def test_the_library_raises_only_named_errors():
    package = pathlib.Path(jaxflows.__file__).parent
    found = {
        f"{path.relative_to(package)}:{line}"
        for path in package.rglob("*.py")
        for line in _bare_raises(path.read_text())
    }
    assert not found, f"bare built-in raises (use a JaxflowsError subclass): {sorted(found)}"


def test_the_bare_raise_finder_sees_calls_and_names():
    source = "def f():\n    raise ValueError('x')\n\ndef g():\n    raise TypeError\n\n"
    source += "def h():\n    raise KeyError(1)\n"
    assert _bare_raises(source) == [2, 5]


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (ShapeError, ValueError),
        (InvalidArgumentError, ValueError),
        (InvalidInputError, ValueError),
        (InputDtypeError, TypeError),
    ],
)
def test_input_errors_are_catchable_as_their_builtins(error, builtin):
    assert issubclass(error, JaxflowsError) and issubclass(error, builtin)


def test_a_layer_reports_a_bad_shape_by_name():
    from jaxflows.bijectors import Squeeze

    with pytest.raises(ShapeError, match="Squeeze"):
        Squeeze().init(jax.random.key(0), jnp.zeros((1, 3, 4, 1)))
