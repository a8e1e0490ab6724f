"""The root of every error jaxflows raises by name.

`except jaxflows.JaxflowsError` catches them all; each also subclasses the built-in it refines
(`ValueError` for bad inputs and configs, `RuntimeError` for a run that stopped), so
`except ValueError` keeps working.
"""


class JaxflowsError(Exception):
    """Base class of jaxflows' named errors."""


class InvalidArgumentError(JaxflowsError, ValueError):
    """A layer, model or function was given a setting it does not accept (a count, a name, a mode)."""


class ShapeError(JaxflowsError, ValueError):
    """An array's shape does not fit: wrong rank, channels that cannot split, an image that cannot
    squeeze, a kernel larger than the image."""


class InvalidInputError(JaxflowsError, ValueError):
    """An array's values are outside what the function takes: NaN, infinity, out-of-range or
    non-integer pixels."""


class InputDtypeError(JaxflowsError, TypeError):
    """An array has a dtype the function does not take (e.g. integer input to a bijector)."""


class MissingRngError(JaxflowsError, ValueError):
    """A layer needs an rng stream the caller did not pass to `apply` (e.g. the "log_det" stream
    of a stochastic log-det estimate)."""


class FixedPointError(JaxflowsError, RuntimeError):
    """An iterative inverse (a fixed-point iteration) did not reach its tolerance within its
    iteration cap."""
