"""Size and cost of a backbone: parameters and multiply-accumulates at its input size."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from facekd.models.base import BACKBONES, backbone_cfg, build_backbone


def forward_once(model: nn.Module, watch: Iterable[tuple[nn.Module, Callable[..., object]]]) -> None:
    """Runs one zero image at the model's input size (``model.cfg.input_size``) through
    ``model`` in eval mode without gradients, calling ``fn(module, inputs, output)`` after
    each watched module's forward; the training mode and the hooks are restored after.
    What ``fn`` returns is dropped (a forward hook's value would replace the output)."""

    def hook(fn):
        def call(module, inputs, output):
            fn(module, inputs, output)

        return call

    hooks = [m.register_forward_hook(hook(fn)) for m, fn in watch]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *model.cfg.input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


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
        "doc": BACKBONES.doc(name),
    }
