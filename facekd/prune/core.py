"""One structured pruning step on a backbone, through Torch-Pruning.

The embedding layer's outputs are never pruned (the embedding keeps its size); every
other conv / linear output channel may be, with the channels coupled to it (batch norm,
PReLU, the next layers' inputs, residual partners) removed alongside by Torch-Pruning's
dependency graph. The step appends its record to ``model.transforms`` so that a
checkpoint of the result rebuilds it (:mod:`facekd.models.transforms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch_pruning as tp
from torch import nn

from facekd.errors import FacekdError
from facekd.models.profile import forward_once
from facekd.models.pruned import example_input, plain_history
from facekd.models.records import with_record
from facekd.prune.importance import IMPORTANCES, LossFn

# Registered backbones Torch-Pruning cannot prune correctly, and why (checked by
# tests/test_prune.py: each still fails, every other backbone prunes and exports).
REFUSED: dict[str, str] = {
    "shufflenet_v2": (
        "its channel shuffle (a view/transpose that interleaves the channels of two branches) "
        "has no index mapping in Torch-Pruning's dependency graph, which fails on it "
        "(ZeroDivisionError while grouping)"
    ),
}


def check_supported(name: str) -> None:
    """Raises, with the reason, for a backbone that :data:`REFUSED` lists."""
    if name in REFUSED:
        raise FacekdError(f"cannot prune {name}: {REFUSED[name]}")


def output_layer(model: nn.Module) -> nn.Module:
    """The last conv or linear layer a forward pass runs: the embedding layer."""
    seen: list[nn.Module] = []
    forward_once(model, [(m, lambda mod, i, o: seen.append(mod)) for m in model.modules()
                         if isinstance(m, (nn.Conv2d, nn.Linear))])
    if not seen:
        raise FacekdError(f"{model.cfg.name}: no conv or linear layer to keep as the embedding layer")
    return seen[-1]


@dataclass(frozen=True)
class StepPlan:
    """How much one step removes.

    Attributes:
        ratio: Fraction of the current channels to remove (per layer, or of all layers
            together with ``global_pruning``).
        global_pruning: Rank channels across layers (one threshold) instead of per layer.
        layer_ratios: Per-module overrides (module path -> fraction).
        max_layer_ratio: With global pruning, no layer loses more than this fraction.
        round_to: Keep channel counts multiples of this (None: any).
    """

    ratio: float
    global_pruning: bool = False
    layer_ratios: dict[str, float] = field(default_factory=dict)
    max_layer_ratio: float = 0.9
    round_to: int | None = None


def step_ratio(total: float, step: int, steps: int) -> float:
    """Fraction of the *current* channels step ``step`` (1-based) removes so that after
    it ``total * step / steps`` of the original ones are gone."""
    before, after = 1 - total * (step - 1) / steps, 1 - total * step / steps
    return 1 - after / before


def prune_once(
    model: nn.Module,
    importance: str,
    plan: StepPlan,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (),
    loss: LossFn | None = None,
) -> nn.Module:
    """Removes the least important channels of ``model`` in place; returns it.

    Args:
        importance: A name in :data:`IMPORTANCES`.
        batches: (images, labels) for criteria that need a loss (``taylor``).
        loss: ``(model, images, labels) -> loss`` for those criteria.
    """
    check_supported(model.cfg.name)
    crit = IMPORTANCES.build(importance)
    if crit.needs_loss and loss is None:
        raise FacekdError(f"importance {importance} needs a loss on labelled batches")
    keep = output_layer(model)
    was = model.training
    scorer = crit.scorer(model, batches, loss)
    modules = dict(model.named_modules())
    unknown = sorted(set(plan.layer_ratios) - set(modules))
    if unknown:
        raise FacekdError(f"prune.layer_ratios: {', '.join(unknown)} not modules of {model.cfg.name}")
    model.eval()
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example_input(model),
            importance=scorer,
            global_pruning=plan.global_pruning,
            pruning_ratio=plan.ratio,
            pruning_ratio_dict={modules[k]: v for k, v in plan.layer_ratios.items()} or None,
            max_pruning_ratio=plan.max_layer_ratio,
            ignored_layers=[keep],
            round_to=plan.round_to,
        )
        pruner.step()
    finally:
        model.train(was)
    history = plain_history(pruner.pruning_history())
    return with_record(model, {"name": "prune", "history": history, "input_size": list(model.cfg.input_size)})
