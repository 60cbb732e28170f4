"""Filter importance criteria (``prune.importance``): which channels to remove.

- ``taylor`` (Molchanov et al., ICLR 2017): the first-order Taylor estimate of the loss
  change when a feature map is removed, ``Θ(z_k) = |1/M Σ_m a_m · ∂C/∂a_m|`` over the M
  positions of feature map k, averaged over the examples of a few training batches and
  L2-normalised per layer. The activations are the inputs of the layers that read a
  channel (after its nonlinearity); a channel that several layers read (residual
  additions) gets the mean over them.
- ``l1`` (the filter selection of Singh et al., WACV 2019; Li et al. 2017): the L1 norm
  of the weights of every layer a channel touches (Torch-Pruning's group magnitude,
  mean-normalised per group).
- ``l1_next`` (Singh et al., WACV 2019: filters selected from the sparsity statistics of
  two consecutive layers): ``s_k = mean|W_l[k]| + mean|W_{l+1}[:, k]|``, the mean
  absolute weight of filter k over the layers whose outputs channel k is (the filter,
  and the depthwise conv that follows it) plus that of the weights of the next layers
  that read channel k. Conv and linear weights only, so that after sparsity induction
  (:mod:`facekd.prune.sparsity`, an L1 penalty on those same weights) a filter the
  penalty drove to zero, or whose outputs the next layer stopped reading, ranks last.
- ``random``: the control; an importance must beat it to mean anything.

A criterion builds a Torch-Pruning ``Importance`` for a model; ``needs_loss`` says
whether it must see batches and a loss first (data on the criterion, not a name test).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from facekd.registry import Registry

IMPORTANCES: Registry["Criterion"] = Registry("pruning importance")

# (model, images, labels) -> scalar loss whose gradients rank the channels.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class Criterion:
    """Builds the Torch-Pruning importance of one pruning step."""

    needs_loss = False

    def scorer(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (), loss: LossFn | None = None):
        raise NotImplementedError


@IMPORTANCES.register("l1")
class L1(Criterion):
    """L1 norm of the filters (group mean over the coupled layers)."""

    def scorer(self, model, batches=(), loss=None):
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer="mean")


def _is_depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels


class OwnNextL1(tp.importance.Importance):
    """``mean|W_l[k]| + mean|W_{l+1}[:, k]|`` per channel k of a Torch-Pruning group.

    "Own" layers are those that lose output channel k (conv, linear, depthwise conv);
    "next" layers those that lose input channel k (conv and linear, depthwise convs
    excluded: their input channel is their own output channel). Each term is the mean
    over its layers of the mean absolute weight of the slice; a term with no layer is 0.
    """

    OWN = (function.prune_conv_out_channels, function.prune_linear_out_channels,
           function.prune_depthwise_conv_out_channels)
    NEXT = (function.prune_conv_in_channels, function.prune_linear_in_channels)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        n = len(group[0].root_idxs)
        sums = {"own": torch.zeros(n), "next": torch.zeros(n)}
        counts = {"own": torch.zeros(n), "next": torch.zeros(n)}
        for i, (dep, idxs) in enumerate(group):
            layer, fn, root_idxs = dep.target.module, dep.handler, group[i].root_idxs
            if any(r is None for r in root_idxs):
                continue
            if fn in self.OWN:
                kind, w = "own", layer.weight.detach()[torch.as_tensor(idxs)]
            elif fn in self.NEXT and not _is_depthwise(layer) and getattr(layer, "groups", 1) == 1:
                kind, w = "next", layer.weight.detach().transpose(0, 1)[torch.as_tensor(idxs)]
            else:
                continue
            root = torch.as_tensor(root_idxs)
            sums[kind].scatter_add_(0, root, w.abs().flatten(1).mean(1).float().cpu())
            counts[kind].scatter_add_(0, root, torch.ones(len(root)))
        return sum(sums[k] / counts[k].clamp(min=1) for k in sums)


@IMPORTANCES.register("l1_next")
class L1Next(Criterion):
    """Singh et al. (2019): a filter's own L1 plus the next layer's weights on its output."""

    def scorer(self, model, batches=(), loss=None):
        return OwnNextL1()


@IMPORTANCES.register("random")
class Random(Criterion):
    """Uniformly random ranks (the control)."""

    def scorer(self, model, batches=(), loss=None):
        return tp.importance.RandomImportance()


class ActivationTaylor(tp.importance.Importance):
    """Torch-Pruning importance from per-layer input-channel scores (see :func:`taylor_scores`)."""

    def __init__(self, scores: dict[nn.Module, torch.Tensor]) -> None:
        self.scores = scores

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        n = len(group[0].root_idxs)
        total, layers = torch.zeros(n), 0
        for i, (dep, idxs) in enumerate(group):
            layer, fn, root_idxs = dep.target.module, dep.handler, group[i].root_idxs
            if fn not in (function.prune_conv_in_channels, function.prune_linear_in_channels) or layer not in self.scores:
                continue
            if any(r is None for r in root_idxs):
                continue
            root = torch.as_tensor(root_idxs)
            imp = self.scores[layer][torch.as_tensor(idxs)].float()
            # A flattened map feeds a linear layer with several inputs per channel: mean them.
            s = torch.zeros(n).scatter_add_(0, root, imp)
            c = torch.zeros(n).scatter_add_(0, root, torch.ones_like(imp))
            total += s / c.clamp(min=1)
            layers += 1
        return total / layers if layers else None


def taylor_scores(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss: LossFn) -> dict[nn.Module, torch.Tensor]:
    """Molchanov's criterion per input channel of every conv and linear layer.

    For a conv input ``a`` (N, C, H, W) with gradient ``g``: ``|mean_hw(a·g)|`` per
    example and channel, averaged over examples and batches; for a linear input
    ``|a·g|`` per feature. Each layer's vector is then divided by its L2 norm.
    """
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def on_forward(module, inputs, output):
        a = inputs[0]
        if not a.requires_grad:
            return

        def on_grad(g, module=module, a=a.detach()):
            prod = (a * g).float()
            per = prod.mean(dim=(2, 3)).abs() if prod.dim() == 4 else prod.abs()
            sums[module] = sums.get(module, 0) + per.sum(0)
            counts[module] = counts.get(module, 0) + per.shape[0]

        a.register_hook(on_grad)

    hooks = [m.register_forward_hook(on_forward) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.enable_grad():
            for x, y in batches:
                model.zero_grad(set_to_none=True)
                loss(model, x, y).backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    out = {}
    for m, s in sums.items():
        mean = s / counts[m]
        out[m] = mean / mean.norm().clamp(min=1e-12)
    return out


@IMPORTANCES.register("taylor")
class Taylor(Criterion):
    """Molchanov et al. (2017): |mean(activation x gradient)| per feature map."""

    needs_loss = True

    def scorer(self, model, batches=(), loss=None):
        if loss is None:
            raise ValueError("the taylor importance needs a loss")
        return ActivationTaylor(taylor_scores(model, batches, loss))
