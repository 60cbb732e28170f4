"""What turns a registered backbone into a model whose layers differ from it.

A pruned model (:mod:`facekd.prune`) has other layer widths than its registered
backbone; a multi-exit model (:mod:`facekd.models.exits`) has exit heads around it. A
checkpoint stores neither as code: it stores the registered name and arguments plus a
list of *transform records*, plain dicts (``{"name": "prune", ...}``,
``{"name": "exits", ...}``) that :func:`apply_transforms` replays, in order, on the
freshly built backbone before its weights are loaded (``facekd.train.checkpoint``).

A transformed model carries its records in ``model.transforms``; each transform appends
its own, so saving the model saves how to rebuild it.
"""

from __future__ import annotations

from torch import nn

from facekd.errors import FacekdError
from facekd.models.exits import MultiExit
from facekd.models.records import records, with_record
from facekd.models.surgery import apply_surgery, replay_surgery
from facekd.registry import Registry

MODEL_TRANSFORMS: Registry[nn.Module] = Registry("model transform")
__all__ = ["MODEL_TRANSFORMS", "apply_transforms", "records", "with_record"]


def apply_transforms(model: nn.Module, recs: list[dict] | None) -> nn.Module:
    """Replays ``recs`` on ``model`` (a freshly built registered backbone), in order."""
    for rec in recs or []:
        rec = dict(rec)
        name = rec.pop("name", None)
        if name is None:
            raise FacekdError(f"transform record {rec} has no name (one of {', '.join(MODEL_TRANSFORMS.names())})")
        model = MODEL_TRANSFORMS.get(name)(model, **rec)
    return model


@MODEL_TRANSFORMS.register("prune")
def _replay_pruning(model: nn.Module, history: list, input_size: list[int] | None = None) -> nn.Module:
    """Structured pruning recorded by Torch-Pruning (``[module, out_channels?, indices]``)."""
    try:  # imports torch_pruning, the optional extra `prune`: only pruned models need it
        from facekd.models.pruned import replay_history
    except ModuleNotFoundError as exc:
        if exc.name != "torch_pruning":
            raise
        raise FacekdError("a pruned model needs Torch-Pruning: pip install 'facekd[prune]' (or torch-pruning)") from None
    return replay_history(model, history, input_size)


@MODEL_TRANSFORMS.register("exits")
def _attach_exits(model: nn.Module, exits: list[dict]) -> nn.Module:
    """Early exits attached by configuration (:class:`facekd.models.exits.MultiExit`)."""
    return MultiExit(model, exits)


@MODEL_TRANSFORMS.register("surgery")
def _replay_surgery(model: nn.Module, ops: list[str], replaced: dict[str, str] | None = None) -> nn.Module:
    """Activation surgery (:mod:`facekd.models.surgery`): the recorded modules put in
    place (a record without them, written by hand, applies the surgeries anew)."""
    return apply_surgery(model, ops) if replaced is None else replay_surgery(model, ops, replaced)
