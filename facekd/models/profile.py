"""Size and cost of a backbone: parameters and multiply-accumulates at its input size."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from facekd.models.base import BACKBONES, backbone_cfg, build_backbone


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass on one image (torch's FLOP counter / 2)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, *input_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def summarize(name: str) -> dict:
    """One row of ``facekd models``: name, params, MACs, input size, embedding size, template."""
    cfg = backbone_cfg(name)
    model = build_backbone(name)
    return {
        "name": name,
        "params": count_params(model),
        "macs": count_macs(model, cfg.input_size),
        "input_size": list(cfg.input_size),
        "embedding_dim": cfg.embedding_dim,
        "template": cfg.pre.template,
        "doc": " ".join((BACKBONES.get(name).__doc__ or "").split()),
    }
