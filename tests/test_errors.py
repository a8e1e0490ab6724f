"""Every error class jaxflows defines is a JaxflowsError and still the built-in it refines."""

import importlib
import inspect
import pkgutil

import jaxflows
from jaxflows import JaxflowsError
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
