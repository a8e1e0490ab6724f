"""Model cards and loading of the flows jaxflows ships (`jaxflows/pretrained/weights/`).

A model is two files: `NAME.npz` (the variables, `jaxflows.pretrained.format`) and `NAME.json`, its
card: how to rebuild the flow (`architecture`), how it was trained (command, commit, date, machine,
config), what it scores (`evaluation`), its parameter count and the weights' SHA-256, which `load`
checks before reading them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import jaxflows.pretrained.format as weights_format
from jaxflows.core import Flow, check_variables
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.models import VariationalDequantizer, glow

WEIGHTS_DIR = Path(__file__).parent / "weights"


class UnknownModelError(InvalidArgumentError):
    """No shipped model has this name (and it is not a path to a model card)."""


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a shipped model is, how it was made and what it scores.

    `architecture`: {"builder": "glow", "image_shape": [h, w, c], "kwargs": glow's keyword
    arguments, "dequantizer": VariationalDequantizer's keyword arguments or None, "bins": K}.
    `training`: command, commit, date, machine, config. `evaluation`: held-out bits/dim and how
    they were measured.
    """

    name: str
    description: str
    architecture: dict[str, Any]
    training: dict[str, Any]
    evaluation: dict[str, Any]
    parameter_count: int
    weights: str
    sha256: str
    format_version: int = weights_format.FORMAT_VERSION
    path: Path | None = dataclasses.field(default=None, compare=False)  # the card file, once read

    @property
    def bins(self) -> int:
        return int(self.architecture.get("bins", 256))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.architecture["image_shape"])

    @property
    def weights_path(self) -> Path:
        folder = self.path.parent if self.path is not None else WEIGHTS_DIR
        return folder / self.weights

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        return json.dumps(fields, indent=2, sort_keys=False) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        fields = json.loads(path.read_text())
        version = fields.get("format_version")
        if version != weights_format.FORMAT_VERSION:
            raise weights_format.WeightsFileError(
                f"{path}: format version {version!r}; this jaxflows reads version "
                f"{weights_format.FORMAT_VERSION} (upgrade jaxflows)"
            )
        return cls(**fields, path=path)


def build(architecture: dict[str, Any]) -> Flow:
    """The (untrained) flow an `architecture` entry describes."""
    if architecture.get("builder") != "glow":
        raise InvalidArgumentError(f"unknown builder {architecture.get('builder')!r}; expected 'glow'")
    kwargs = dict(architecture["kwargs"])
    if kwargs.get("network_dtype") is not None:
        kwargs["network_dtype"] = jnp.dtype(kwargs["network_dtype"])
    policy = {k: kwargs[k] for k in ("network_dtype", "network_precision") if k in kwargs}
    deq = architecture.get("dequantizer")
    dequantizer = None if deq is None else VariationalDequantizer(**deq, **policy)
    return glow(tuple(architecture["image_shape"]), **kwargs, dequantizer=dequantizer)


def parameter_count(variables: dict[str, Any]) -> int:
    return sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(variables.get("params", {})))


def available() -> dict[str, ModelCard]:
    """The shipped models' cards by name."""
    return {path.stem: ModelCard.read(path) for path in sorted(WEIGHTS_DIR.glob("*.json"))}


def card(name: str | Path) -> ModelCard:
    """A shipped model's card, or the card at a path (a `.json` file written by `save`)."""
    path = Path(name)
    if path.suffix == ".json" and path.exists():
        return ModelCard.read(path)
    shipped = WEIGHTS_DIR / f"{name}.json"
    if not shipped.exists():
        names = sorted(p.stem for p in WEIGHTS_DIR.glob("*.json"))
        raise UnknownModelError(f"no pretrained model {str(name)!r}; available: {names}")
    return ModelCard.read(shipped)


def load(name: str | Path) -> tuple[Flow, dict[str, Any]]:
    """(flow, variables) of a shipped model (or of the card at a path), weights checked against
    the card's SHA-256 (`ChecksumError` if they differ) and against the flow's variable shapes."""
    model = card(name)
    variables = weights_format.read(model.weights_path, expected_sha256=model.sha256)
    flow = build(model.architecture)
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    check_variables(flow, variables)
    return flow, variables


def save(directory: str | Path, model: ModelCard, variables: dict[str, Any]) -> ModelCard:
    """Write `variables` and `model`'s card (with the weights' SHA-256 and parameter count filled in)
    to `directory` as `NAME.npz` and `NAME.json`; returns the card written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    check_variables(build(model.architecture), variables)
    weights = f"{model.name}.npz"
    digest = weights_format.write(directory / weights, variables)
    written = dataclasses.replace(
        model, weights=weights, sha256=digest, parameter_count=parameter_count(variables), path=None
    )
    (directory / f"{model.name}.json").write_text(written.to_json())
    return dataclasses.replace(written, path=directory / f"{model.name}.json")
