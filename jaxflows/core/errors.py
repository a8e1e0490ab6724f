"""The root of every error jaxflows raises by name.

`except jaxflows.JaxflowsError` catches them all; each also subclasses the built-in it refines
(`ValueError` for bad inputs and configs, `RuntimeError` for a run that stopped), so
`except ValueError` keeps working.
"""


class JaxflowsError(Exception):
    """Base class of jaxflows' named errors."""
