"""Optimizers and per-step learning-rate schedules, each a small registry."""

from __future__ import annotations

import math

import torch
from torch import nn

from facekd.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULES: Registry = Registry("schedule")


def param_groups(modules: list[nn.Module], weight_decay: float, lr: float, prelu_lr_mult: float = 1.0) -> list[dict]:
    """Weight decay on conv and linear weights only: biases, norm layers and PReLU
    slopes (all 1-d) get none; decaying PReLU slopes pushes them to plain ReLU.

    With ``prelu_lr_mult`` other than 1 the PReLU slopes form a third group at
    ``lr * prelu_lr_mult``: a slope gets one gradient summed over a whole map, on a
    different scale from a conv weight's, and at a recovery's small rate barely moves.
    (At 1 there are two groups, as older checkpoints' optimizer states hold.)"""
    slopes = set()
    if prelu_lr_mult != 1.0:
        slopes = {id(p) for m in modules for sub in m.modules() if isinstance(sub, nn.PReLU) for p in sub.parameters()}
    decay, no_decay, prelu = [], [], []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                (prelu if id(p) in slopes else decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr}, {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    if slopes:
        groups.append({"params": prelu, "weight_decay": 0.0, "lr": lr * prelu_lr_mult})
    return groups


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], cfg) -> torch.optim.Optimizer:
    """SGD with momentum (the papers' recipe)."""
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], cfg) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


class _Warmup:
    """Linear warm-up over ``warmup`` steps, then ``after(progress)`` with progress 0..1
    over the remaining steps. A plain object, so LambdaLR saves it in checkpoints."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup = max(1, total), max(0, min(warmup, total - 1))

    def progress(self, step: int) -> float:
        return min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return self.after(self.progress(step))

    def after(self, t: float) -> float:
        raise NotImplementedError


@SCHEDULES.register("cosine")
class WarmupCosine(_Warmup):
    """Warm-up, then cosine decay from 1 to ``min_ratio``."""

    def __init__(self, total: int, warmup: int, cfg) -> None:
        super().__init__(total, warmup)
        self.min_ratio = cfg.min_lr_ratio

    def after(self, t: float) -> float:
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULES.register("step")
class WarmupStep(_Warmup):
    """Warm-up, then the rate times ``gamma`` at each milestone (fractions of training)."""

    def __init__(self, total: int, warmup: int, cfg) -> None:
        super().__init__(total, warmup)
        self.milestones, self.gamma = [int(m * total) for m in cfg.milestones], cfg.gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return self.gamma ** sum(step >= m for m in self.milestones)


def build_optimizer(modules: list[nn.Module], cfg) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` (an :class:`~facekd.train.config.OptimCfg`) over ``modules``."""
    return OPTIMIZERS.get(cfg.name)(param_groups(modules, cfg.weight_decay, cfg.lr, cfg.prelu_lr_mult), cfg)


def build_schedule(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int, epochs: int):
    """A per-step LambdaLR for ``cfg`` (a :class:`~facekd.train.config.ScheduleCfg`)."""
    total = steps_per_epoch * epochs
    fn = SCHEDULES.get(cfg.name)(total, round(cfg.warmup_epochs * steps_per_epoch), cfg)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
