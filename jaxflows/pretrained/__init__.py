"""Trained flows that ship with jaxflows: `load(name) -> (flow, variables)`, `available()`."""

from jaxflows.pretrained.cards import ModelCard, UnknownModelError, available, build, card, load, save
from jaxflows.pretrained.format import ChecksumError, WeightsFileError

__all__ = [
    "ChecksumError",
    "ModelCard",
    "UnknownModelError",
    "WeightsFileError",
    "available",
    "build",
    "card",
    "load",
    "save",
]
