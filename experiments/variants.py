"""What a paper comparison is made of: its rows (`Variant`) and their trained runs (`Run`). Shared by
`experiments.compare` (which trains them) and `experiments.report` (which tabulates and plots
them), so neither imports the other."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxflows.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of a comparison: a name and the changes to the base config (`model` is merged)."""

    name: str
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    group: str = ""  # for plots with several series (e.g. the coupling); defaults to name
    x: Any = None  # the x value within a group (e.g. the learning rate)

    def apply(self, base: TrainConfig) -> TrainConfig:
        return base.replace(model={**base.model, **self.model}, **self.config)


@dataclasses.dataclass
class Run:
    """One trained (variant, seed) and its metrics (held-out bits/dim, seconds per epoch, ...)."""

    variant: Variant
    seed: int
    metrics: dict[str, float]
