"""Rebuilding a pruned model: Torch-Pruning's history replayed on the registered backbone.

Here, beside the other model transforms, rather than in :mod:`facekd.prune`: loading a
pruned checkpoint needs only this, and the models package does not import the pruning
package that imports it. Torch-Pruning is the optional extra ``prune``.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from facekd.models.records import with_record


def example_input(model: nn.Module, input_size: list[int] | tuple[int, int] | None = None) -> torch.Tensor:
    """A zero image batch of one at the model's input size (what the graph is traced with)."""
    size = tuple(input_size) if input_size else tuple(model.cfg.input_size)
    return torch.zeros(1, 3, *size)


def dependency_graph(model: nn.Module, input_size=None) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``, traced in eval mode (batch norm on
    a batch of one)."""
    was = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input(model, input_size))
    finally:
        model.train(was)


def plain_history(history) -> list[list]:
    """Torch-Pruning's history as weights-only-loadable lists: [module, out?, [indices]]."""
    return [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in history]


def replay_history(model: nn.Module, history: list, input_size=None) -> nn.Module:
    """Applies a recorded pruning (module name, out-channel pruning?, indices) in place;
    the result has the recorded widths (its weights are then loaded from the checkpoint)."""
    dg = dependency_graph(model, input_size)
    dg.load_pruning_history([(name, bool(out), list(idxs)) for name, out, idxs in history])
    return with_record(model, {"name": "prune", "history": plain_history(history), "input_size": list(example_input(model, input_size).shape[2:])})
