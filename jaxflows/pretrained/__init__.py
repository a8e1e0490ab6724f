"""Save and load any flow a registered builder makes (`save(path, flow, variables)`,
`load(path_or_name) -> (flow, variables)`, `build`), and the trained flows jaxflows ships
(`available()`)."""

from jaxflows.pretrained.cards import ModelCard, UnknownModelError, available, build, card, load, save
from jaxflows.pretrained.format import ChecksumError, WeightsFileError
from jaxflows.pretrained.recipes import UnregisteredFlowError

__all__ = [
    "ChecksumError",
    "ModelCard",
    "UnknownModelError",
    "UnregisteredFlowError",
    "WeightsFileError",
    "available",
    "build",
    "card",
    "load",
    "save",
]
