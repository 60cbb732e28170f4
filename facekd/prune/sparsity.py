"""Sparsity induction, the first stage of Singh et al.'s multi-layer pruning (WACV 2019).

Before filters are selected, the model trains with its task loss plus an L1 penalty on
the filters of a chosen set of conv layers::

    L = L_task + λ · Σ_l Σ_k ‖W_l[k]‖₁

where ``W_l[k]`` is output filter k of layer l. The penalty is on the conv weights, not
on batch-norm scales (network slimming's choice), for three reasons: it is the quantity
Singh et al. sparsify; the ``l1_next`` importance (:mod:`facekd.prune.importance`) ranks
filters by these same weights (a filter's own and the next layer's connected ones), so
what the penalty drives to zero is what the selection removes first; and not every
prunable conv has a batch norm of its own (the 1x1 convs of the detectors' and
MobileFaceNet's depthwise-separable units feed a depthwise conv first).

In ``facekd prune`` (``prune.sparsity``) the task loss is the recovery objective
(``distill``: by default FeatureNorm against the unpruned source), and the phase is a
``facekd.train.loop.fit`` run in ``RUN/sparsity/`` with its checkpoints and ``--resume``.
:func:`sparsity_penalty` alone serves any other training loop (the detectors').
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from facekd.config import to_dict
from facekd.errors import FacekdError
from facekd.prune.config import PruneConfig
from facekd.prune.core import output_layer
from facekd.train.checkpoint import CHECKPOINT, backbone_from_checkpoint, load_checkpoint, model_checkpoint, save_checkpoint
from facekd.train.loop import fit

SPARSITY_DIR = "sparsity"
START = "source.pt"  # the model the phase starts from, as fit's objective loads it

# (cfg, data, device, say) -> objective with a ``backbone`` (facekd.train.loop.fit's make_objective)
MakeObjective = Callable[..., nn.Module]


def chosen_layers(model: nn.Module, layers: Sequence[str | nn.Module] = (), exclude: Iterable[nn.Module] = (),
                  where: str = "sparsity layers") -> list[nn.Conv2d]:
    """The conv layers a penalty covers.

    Args:
        layers: Module paths of ``model`` (a conv, or a block: every conv inside it) or
            modules; empty: every conv of ``model``.
        exclude: Convs never covered (an embedding layer, a detector's heads).
        where: How an error names the setting (``prune.sparsity.layers``).

    Raises:
        FacekdError: a path that is not a module of ``model``, or no conv at all.
    """
    named = dict(model.named_modules())
    unknown = [p for p in layers if isinstance(p, str) and p not in named]
    if unknown:
        raise FacekdError(f"{where}: {', '.join(unknown)} not a module of {type(model).__name__} "
                          f"(top-level modules: {', '.join(n for n in named if n and '.' not in n)})")
    roots = [named[p] if isinstance(p, str) else p for p in layers] or [model]
    skip = set(map(id, exclude))
    out, seen = [], set()
    for root in roots:
        for m in root.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in skip and id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    if not out:
        raise FacekdError(f"{where}: no conv layer to penalise under {list(layers) or 'the model'}")
    return out


def sparsity_penalty(model: nn.Module, layers: Sequence[str | nn.Module] = ()) -> torch.Tensor:
    """``Σ_l Σ_k ‖W_l[k]‖₁`` over the conv layers :func:`chosen_layers` picks (unweighted:
    the caller multiplies by λ). Differentiable; on the weights' device."""
    return torch.stack([m.weight.abs().sum() for m in chosen_layers(model, layers)]).sum()


class WithSparsity(nn.Module):
    """A training objective plus ``weight · sparsity_penalty`` as the named term
    ``sparsity``. It holds the objective's submodules under the same names, so its state
    dict (and so a checkpoint of it) has the same keys as the objective's own."""

    def __init__(self, objective: nn.Module, layers: list[nn.Module], weight: float) -> None:
        super().__init__()
        for name, child in objective.named_children():
            self.add_module(name, child)
        for name, p in objective.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in objective.named_buffers(recurse=False):
            self.register_buffer(name, b)
        object.__setattr__(self, "objective", objective)  # its children are ours: not registered twice
        self.layers, self.weight = list(layers), weight

    def train(self, mode: bool = True) -> "WithSparsity":
        self.objective.train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        terms = dict(self.objective(x, y, index))
        terms["sparsity"] = self.weight * sparsity_penalty(self, self.layers)
        return terms


def with_sparsity(make: MakeObjective, layers: Sequence[str], weight: float) -> MakeObjective:
    """``make`` (a ``fit`` objective factory) with the penalty on its backbone's
    ``layers`` (empty: every conv but the embedding layer) added."""

    def build(cfg, data, device, say):
        objective = make(cfg, data, device, say)
        net = objective.backbone
        convs = chosen_layers(net, layers, exclude=[output_layer(net)], where="prune.sparsity.layers")
        say(f"sparsity: {weight:g} x the filters' L1 norms of {len(convs)} conv layer(s)")
        return WithSparsity(objective, convs, weight)

    return build


@dataclass
class SparsityRow:
    """The sparsity phase of a ``facekd prune`` run (a row of ``prune.json``).

    Attributes:
        l1_before, l1_after: The unweighted penalty of the chosen layers on the source,
            and after the phase.
        lfw_after: LFW accuracy (%) after the phase (None: not evaluated).
        checkpoint: The sparse model the first pruning step starts from.
    """

    weight: float
    epochs: int
    layers: list[str]
    l1_before: float
    l1_after: float | None = None
    lfw_after: float | None = None
    checkpoint: str = ""


def _penalty_of(net: nn.Module, layers: Sequence[str]) -> float:
    with torch.no_grad():
        convs = chosen_layers(net, layers, exclude=[output_layer(net)], where="prune.sparsity.layers")
        return float(sparsity_penalty(net, convs))


def induce_sparsity(cfg: PruneConfig, source: nn.Module, run_dir: Path, objective_for: Callable[[Path], MakeObjective],
                    say: Callable[[str], None] = print) -> SparsityRow:
    """Trains ``source`` for ``prune.sparsity.epochs`` with the penalty into
    ``run_dir/sparsity`` (resuming what is there); returns its row.

    Args:
        objective_for: The objective factory that trains the model saved at a path
            (``facekd prune``'s recovery objective, teacher built once).
    """
    s = cfg.prune.sparsity
    if s is None:
        raise FacekdError("prune.sparsity is not set")
    phase = Path(run_dir) / SPARSITY_DIR
    start, last = phase / START, phase / CHECKPOINT
    row = SparsityRow(s.weight, s.epochs, list(s.layers), _penalty_of(source, s.layers))
    if not start.is_file():
        phase.mkdir(parents=True, exist_ok=True)
        save_checkpoint(start, model_checkpoint(source, cfg.model.backbone, cfg.model.backbone_args, config=to_dict(cfg)))
    if last.is_file() and load_checkpoint(last).get("epoch", 0) >= s.epochs:
        metrics = load_checkpoint(last).get("metrics", {})
    else:
        sub = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=s.epochs))
        # Always resume: a kill before the phase's first checkpoint leaves only its log,
        # which a fresh fit would refuse as another run's (no checkpoint: it starts afresh).
        metrics = fit(sub, phase, resume=True, say=say,
                      make_objective=with_sparsity(objective_for(start), s.layers, s.weight))
    sparse = backbone_from_checkpoint(load_checkpoint(last), last)
    row.l1_after, row.lfw_after, row.checkpoint = _penalty_of(sparse, s.layers), metrics.get("lfw_acc"), str(last)
    return row
