"""Transform records a model carries (``model.transforms``): how to rebuild it from its
registered backbone (:mod:`facekd.models.transforms` replays them). Apart from the
replaying module so that a transform's own code (pruning) can record itself without
importing the module that imports it."""

from __future__ import annotations

from torch import nn


def records(model: nn.Module) -> list[dict]:
    """The transform records a model carries (empty for a plain registered backbone)."""
    return [dict(r) for r in getattr(model, "transforms", [])]


def with_record(model: nn.Module, record: dict) -> nn.Module:
    """Appends ``record`` to the records ``model`` carries; returns ``model``."""
    model.transforms = [*records(model), dict(record)]
    return model
