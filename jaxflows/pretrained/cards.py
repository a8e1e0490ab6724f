"""Model cards: save and load any flow a registered builder makes, and the flows jaxflows ships
(`jaxflows/pretrained/weights/`).

A model is two files: `NAME.npz` (the variables of every collection, `jaxflows.pretrained.format`)
and `NAME.json`, its card: how to rebuild the flow (`architecture`: the builder's registered name
and keyword arguments, the event shape, the pipeline arguments; `jaxflows.pretrained.recipes`), how
it was trained, what it scores (`evaluation`), its parameter count and the weights' SHA-256, which
`load` checks before reading them. The card's own SHA-256 is kept outside it, in the folder's
`SHA256SUMS` (the `sha256sum` format; `save` writes it, `sha256sum -c SHA256SUMS` checks it): a card
edited after it was saved (a held-out score changed by hand) is refused when read, and every shipped
card must be listed there.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

import jaxflows.pretrained.format as weights_format
import jaxflows.pretrained.recipes as recipes
from jaxflows.core import Flow, check_variables
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.models import MODELS
from jaxflows.pretrained.recipes import UNSET, UnregisteredFlowError

WEIGHTS_DIR = Path(__file__).parent / "weights"
CHECKSUMS = "SHA256SUMS"


class UnknownModelError(InvalidArgumentError):
    """No shipped model has this name (and it is not a path to a model card)."""


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a saved model is, how it was made and what it scores.

    `architecture`: {"model": {"name": a registered builder, **its keyword arguments},
    "event_shape": [...], "pipeline": data_range / network policy / dequantizer, "bins": levels of
    discrete data or None} (`jaxflows.pretrained.recipes`; a format-1 card's Glow-only form is
    converted when read). `training`: command, commit, date, machine, config. `evaluation`: held-out
    scores and how they were measured.
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
    def model(self) -> dict[str, Any]:
        """{"name": the builder, **its keyword arguments} (TrainConfig.model's form)."""
        return recipes.from_json(self.architecture["model"])

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.architecture["event_shape"])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The event shape (the name format-1 cards gave it)."""
        return self.event_shape

    @property
    def bins(self) -> int | None:
        """The number of levels of discrete data (256 for 8-bit images); None for continuous data."""
        bins = self.architecture.get("bins")
        return None if bins is None else int(bins)

    @property
    def weights_path(self) -> Path:
        folder = self.path.parent if self.path is not None else WEIGHTS_DIR
        return folder / self.weights

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        return json.dumps(fields, indent=2, sort_keys=False) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """The card at `path`, checked against its folder's `SHA256SUMS` (`ChecksumError` if it was
        edited; required for shipped cards); a format-1 card's architecture is converted to format 2."""
        path = Path(path)
        text = path.read_bytes()
        _check_card(path, text)
        fields = json.loads(text)
        version = fields.get("format_version")
        if version not in weights_format.READABLE_VERSIONS:
            raise weights_format.WeightsFileError(
                f"{path}: format version {version!r}; this jaxflows reads versions "
                f"{list(weights_format.READABLE_VERSIONS)} (upgrade jaxflows)"
            )
        fields["architecture"] = recipes.upgrade(fields["architecture"])
        fields["format_version"] = weights_format.FORMAT_VERSION
        return cls(**fields, path=path)


def read_checksums(folder: Path) -> dict[str, str]:
    """{file name: SHA-256} from `folder/SHA256SUMS` (empty when there is none)."""
    sums = folder / CHECKSUMS
    if not sums.exists():
        return {}
    entries = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name:
            entries[name.lstrip("*")] = digest
    return entries


def record_checksums(folder: Path, digests: Mapping[str, str]) -> None:
    """Add or replace `digests` ({file name: SHA-256}) in `folder/SHA256SUMS`, sorted by name."""
    entries = {**read_checksums(folder), **digests}
    (folder / CHECKSUMS).write_text("".join(f"{entries[n]}  {n}\n" for n in sorted(entries)))


def _check_card(path: Path, text: bytes) -> None:
    folder = path.resolve().parent
    expected = read_checksums(folder).get(path.name)
    shipped = folder == WEIGHTS_DIR.resolve()
    if expected is None and not shipped:
        return  # a card saved before SHA256SUMS existed, or copied without it
    found = hashlib.sha256(text).hexdigest()
    if expected is None:
        raise weights_format.ChecksumError(
            f"{path}: a shipped model card not listed in {folder / CHECKSUMS}; its claims cannot be "
            "checked (reinstall jaxflows, or export it with experiments/export_pretrained.py)"
        )
    if found != expected:
        raise weights_format.ChecksumError(
            f"{path}: SHA-256 {found} differs from {expected} in {folder / CHECKSUMS}: the card was edited "
            "after it was saved, so its held-out scores and training record are not the ones measured. "
            "Restore it (reinstall jaxflows for a shipped model) or save the model again"
        )


def parameter_count(variables: Mapping[str, Any]) -> int:
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


def build(
    source: ModelCard | Mapping[str, Any] | str | Path,
    *,
    event_shape: tuple[int, ...] | int | None = None,
    network_dtype: DTypeLike | None = UNSET,
    network_precision: str = UNSET,
    data_range: tuple[float, float] | str | None = UNSET,
    dequantizer: Any = UNSET,
) -> Flow:
    """The (untrained) flow of a card (a `ModelCard`, a shipped model's name or a card's path), of a
    card's `architecture`, or of a model dict {"name": a registered builder, **kwargs} (TrainConfig.
    model's form: no name means "glow") with `event_shape`, built through the model registry
    (`jaxflows.models.build_model`).

    The pipeline arguments, when given, replace the card's (or the builder's defaults):
    `network_dtype` / `network_precision` (None: the networks follow the maps' dtype),
    `data_range`, `dequantizer` (a `VariationalDequantizer` or its keyword arguments). The flow
    remembers how it was built, so `save(path, flow, variables)` needs no `model=`.
    """
    given = {
        "network_dtype": network_dtype,
        "network_precision": network_precision,
        "data_range": data_range,
        "dequantizer": dequantizer,
    }
    overrides = {k: v for k, v in given.items() if v is not UNSET}
    if isinstance(source, ModelCard):
        return recipes.build_architecture(source.architecture, **overrides)
    if isinstance(source, (str, Path)):
        return recipes.build_architecture(card(source).architecture, **overrides)
    if isinstance(source, Mapping) and ("model" in source or "builder" in source):
        return recipes.build_architecture(source, **overrides)
    if isinstance(source, Mapping):
        if event_shape is None:
            raise InvalidArgumentError(f"build({dict(source)!r}): a model dict needs event_shape=")
        return recipes.build_architecture(recipes.make_architecture(source, event_shape, overrides, None))
    raise InvalidArgumentError(
        "build expects a ModelCard, a model's name or card path, a card's architecture, or a model dict "
        f"{{'name': ..., **kwargs}} with event_shape; got {source!r}"
    )


def load(
    name: str | Path, *, network_dtype: DTypeLike | None = UNSET, network_precision: str = UNSET
) -> tuple[Flow, dict[str, Any]]:
    """(flow, variables) of a shipped model or of the card at a path, weights checked against the
    card's SHA-256 (`ChecksumError` if they differ) and against the flow's variable shapes.

    `network_dtype` / `network_precision` replace the card's network policy (e.g.
    network_precision="default" for TF32 matmuls on NVIDIA GPUs, network_dtype=jnp.bfloat16); the
    variables are restored as saved whatever the policy."""
    model = card(name)
    variables = weights_format.read(model.weights_path, expected_sha256=model.sha256)
    flow = build(model, network_dtype=network_dtype, network_precision=network_precision)
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    check_variables(flow, variables)
    return flow, variables


def _card_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise InvalidArgumentError(
            f"save: {path} is a folder; give the card's path, e.g. {path / 'my_model'} (writes my_model.json "
            "and my_model.npz there)"
        )
    return path if path.suffix == ".json" else path.with_name(path.name + ".json")


def _unregistered(flow: Flow) -> UnregisteredFlowError:
    return UnregisteredFlowError(
        f"save: nothing says which registered builder made this flow ({type(flow.bijector).__name__} ...), "
        "so load could not rebuild it by name. Pass model={'name': <builder>, **the keyword arguments that "
        f"built it}} (registered builders: {sorted(MODELS)}), or build it with "
        "jaxflows.pretrained.build({'name': ..., ...}, event_shape=...). A flow assembled by hand "
        "(Flow(Chain([...]), ...)) needs a builder of its own: write my_flow(event_shape, **kwargs) -> "
        "Flow, register_model('my_flow', my_flow) (jaxflows.models), and save with "
        "model={'name': 'my_flow', ...} (the module that registers it must be imported before load)"
    )


def _architecture(
    flow: Flow | None,
    model: Mapping[str, Any] | None,
    event_shape: tuple[int, ...] | int | None,
    pipeline: dict[str, Any],
    bins: int | None,
) -> dict[str, Any]:
    """The architecture `save` stores: from `model=`, else the recipe `flow` remembers; the
    pipeline arguments not given are read off the flow."""
    if model is None:
        if flow is None:
            raise InvalidArgumentError("save: give the flow, or model={'name': ..., ...} and event_shape=")
        remembered = recipes.recipe_of(flow)
        if remembered is None:
            raise _unregistered(flow)
        if not pipeline and bins is None:
            return remembered
        model, event_shape = recipes.from_json(remembered["model"]), remembered["event_shape"]
        pipeline = {**recipes.pipeline_from_json(remembered["pipeline"]), **pipeline}
        bins = remembered.get("bins") if bins is None else bins
    if event_shape is None:
        if flow is None:
            raise InvalidArgumentError("save: with model= and no flow, give event_shape= (one example's)")
        event_shape = flow.event_shape
    if flow is not None and isinstance(model, Mapping) and model.get("name", "glow") in MODELS:
        taken = recipes.pipeline_arguments(model.get("name", "glow"))
        shown = {k: v for k, v in recipes.pipeline_of(flow).items() if k in taken}
        pipeline = {**shown, **pipeline}
    return recipes.make_architecture(model, event_shape, pipeline, bins)


def save(
    path: str | Path,
    flow_or_model: Flow | Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
    *,
    model: Mapping[str, Any] | None = None,
    event_shape: tuple[int, ...] | int | None = None,
    description: str = "",
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    bins: int | None = None,
    data_range: tuple[float, float] | str | None = UNSET,
    network_dtype: DTypeLike | None = UNSET,
    network_precision: str = UNSET,
    dequantizer: Any = UNSET,
) -> ModelCard:
    """Write a flow's `variables` (every collection: "params", "constants", "spectral_norm", ...) and
    its card to `path` (`dir/NAME` or `dir/NAME.json`: writes `NAME.json` and `NAME.npz`), so that
    `load(path)` rebuilds the flow through the model registry and restores the variables bitwise.

        from jaxflows import pretrained

        model = {"name": "coupling_flow", "depth": 4, "hidden": 32}
        flow = pretrained.build(model, event_shape=(2,))  # remembers `model`
        variables, history = jaxflows.train.fit(flow, x, steps=2000, batch_size=256, key=key)
        pretrained.save("models/moons", flow, variables, description="two moons")
        # a flow from coupling_flow(2, depth=4, hidden=32) itself: save(..., model=model)
        flow, variables = pretrained.load("models/moons.json")  # in any later process

    Args:
      path: the card's path; the weights go beside it under the same stem.
      flow_or_model: the trained `Flow`, or a model dict {"name": a registered builder, **kwargs}
        (then give `event_shape`).
      variables: the flow's variables.
      model: {"name": ..., **kwargs}: the registered builder and keyword arguments that built the
        flow (TrainConfig.model's form). Needed unless the flow came from
        `jaxflows.pretrained.build`/`load`; `save` rebuilds the flow from it and checks that the two
        are equal, naming the first difference. A flow built by hand is an `UnregisteredFlowError`
        that says how to give it a builder (`jaxflows.models.register_model`).
      event_shape: one example's shape (default: the flow's).
      description, training, evaluation: the card's texts (training: command, commit, config, ...).
      bins: the number of levels of discrete data (256 for 8-bit images); None for continuous data.
      data_range, network_dtype, network_precision, dequantizer: the pipeline arguments to store
        (default: the flow's; network_dtype=None lets the networks follow the maps' dtype).

    Returns:
      The card written (with the weights' SHA-256, parameter count and `path`).
    """
    if variables is None:
        looks_like_variables = isinstance(flow_or_model, Mapping) and "params" in flow_or_model
        hint = "; the second argument looks like variables: save(path, flow, variables)"
        raise InvalidArgumentError(
            "save: variables= is required (the flow's trained variables)"
            + (hint if looks_like_variables else "")
        )
    flow = flow_or_model if isinstance(flow_or_model, Flow) else None
    if isinstance(flow_or_model, Mapping):
        if model is not None:
            raise InvalidArgumentError("save: give the model dict once (positionally or as model=)")
        model = flow_or_model
    elif flow_or_model is not None and flow is None:
        raise InvalidArgumentError(
            f"save: expected a Flow or a model dict {{'name': ...}}, got {type(flow_or_model).__name__}"
        )
    given = {"data_range": data_range, "network_dtype": network_dtype, "network_precision": network_precision}
    pipeline = {k: v for k, v in {**given, "dequantizer": dequantizer}.items() if v is not UNSET}
    architecture = _architecture(flow, model, event_shape, pipeline, bins)
    rebuilt = recipes.build_architecture(architecture)
    if flow is not None:
        difference = recipes.first_difference(rebuilt, flow)
        if difference is not None:
            raise UnregisteredFlowError(
                f"save: model={architecture['model']} on event shape {architecture['event_shape']} with "
                f"{architecture['pipeline']} builds a different flow than the one given ({difference}); "
                "pass the keyword arguments (and data_range/network_dtype/network_precision) that built it"
            )
    variables = jax.tree_util.tree_map(jnp.asarray, dict(variables))
    check_variables(rebuilt, variables)
    card_path = _card_path(path)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    weights = card_path.with_suffix(".npz").name
    digest = weights_format.write(card_path.parent / weights, variables)
    written = ModelCard(
        name=card_path.stem,
        description=description,
        architecture=architecture,
        training=dict(training) if training is not None else {"date": datetime.date.today().isoformat()},
        evaluation=dict(evaluation or {}),
        parameter_count=parameter_count(variables),
        weights=weights,
        sha256=digest,
    )
    text = written.to_json().encode()
    card_path.write_bytes(text)
    record_checksums(card_path.parent, {card_path.name: hashlib.sha256(text).hexdigest(), weights: digest})
    return dataclasses.replace(written, path=card_path)
