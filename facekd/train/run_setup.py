"""What a run's epoch loop works with (:class:`Setup`), built once per run by
:func:`build_setup` (for ``facekd.train.loop.fit``) or :func:`standalone_setup` (for the
eval/ benchmarks)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from facekd.models import backbone_cfg
from facekd.train.checkpoint import restore_run
from facekd.train.config import TrainConfig
from facekd.train.data import Shard, steps_per_epoch
from facekd.train.distributed import DistInfo
from facekd.train.loaders import LOADERS, LoaderCtx, choose_loader
from facekd.train.optim import build_optimizer, build_schedule
from facekd.train.run_log import RunLog
from facekd.train.speed import SpeedPlan, plan_speed, trained_with


@dataclass(kw_only=True)
class Setup:
    """Everything the epoch loop needs, built once by :func:`facekd.train.loop.fit`
    (by keyword only: nineteen fields are not to be told apart by position)."""

    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    objective: nn.Module  # the module that steps (maybe DDP-wrapped)
    plain: nn.Module  # the same module unwrapped (for checkpoints and evaluation)
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader: object
    n_crops: int
    steps_per_epoch: int
    log: RunLog
    metrics: dict = field(default_factory=dict)
    identities: list[str] = field(default_factory=list)  # label -> name, saved with the model
    precision: str = "fp32"  # resolved (facekd.train.speed.plan_speed): fp32 | bf16 | fp16
    channels_last: bool = False
    start_epoch: int = 0  # epochs done before this run (a resumed checkpoint's)
    start_step: int = 0  # optimizer steps done before this run


def standalone_setup(cfg: TrainConfig, module: nn.Module, data, device: torch.device, loader: str | None,
                     workers: int, plan: SpeedPlan | None = None) -> Setup:
    """A one-process :class:`Setup` for timing ``train_one_epoch`` outside ``fit``
    (the eval/ benchmarks): the same optimizer, schedule, loaders and ``plan`` (precision,
    layout, compile; default: fp32, contiguous, eager); no files written."""
    plan = plan or SpeedPlan("fp32", False, False)
    module = apply_plan(module.to(device), plan)
    optimizer = build_optimizer([module], cfg.optim)
    schedule = build_schedule(optimizer, cfg.schedule, steps_per_epoch=10_000, epochs=1)
    bcfg = backbone_cfg(cfg.model.backbone)
    feed = None
    if loader:
        feed = LOADERS.get(loader)(LoaderCtx(data, cfg.data.augment, bcfg.pre.mean, bcfg.pre.std, device, workers, 0))
    return Setup(cfg=cfg, dist=DistInfo(), device=device, objective=module, plain=module, optimizer=optimizer,
                 schedule=schedule, scaler=torch.amp.GradScaler(device.type, enabled=plan.precision == "fp16"),
                 loader=feed, n_crops=len(data), steps_per_epoch=0, log=RunLog(Path("."), enabled=False),
                 precision=plan.precision, channels_last=plan.channels_last)


def apply_plan(objective: nn.Module, plan: SpeedPlan) -> nn.Module:
    """Puts ``objective`` in the plan's memory layout and compiles its backbone's forward
    (in place, so checkpoints keep their keys; ``facekd.train.loop.evaluate_lfw`` drops
    it on its copy)."""
    if plan.channels_last:
        objective = objective.to(memory_format=torch.channels_last)
    if plan.compile:
        objective.backbone.forward = torch.compile(objective.backbone.forward)
    return objective


def build_setup(cfg: TrainConfig, run_dir: Path, dist: DistInfo, device: torch.device, data, plain: nn.Module,
                ckpt: dict | None, bcfg, say: Callable[[str], None]) -> tuple[Setup, str]:
    """Speed plan, optimizer, schedule, the state ``ckpt`` holds, loader and log around
    ``plain`` (the objective, on ``device``).

    Returns:
        The setup, and the loader and speed choices for the run's first line.
    """
    steps = steps_per_epoch(len(data), cfg.train.batch_size, Shard(dist.rank, dist.world_size))
    todo = steps * (cfg.train.epochs - (ckpt["epoch"] if ckpt is not None else 0))
    # Ranks must agree, so a distributed run does not time the choices.
    plan = plan_speed(cfg.train, plain, device, bcfg.input_size, len(data.identities), todo, may_time=not dist.enabled)
    optimizer = build_optimizer([plain], cfg.optim)
    schedule = build_schedule(optimizer, cfg.schedule, steps, cfg.train.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=plan.precision == "fp16")

    start_epoch, step, metrics = 0, 0, {}
    if ckpt is not None:
        start_epoch, step, metrics = restore_run(ckpt, cfg, plain, optimizer, schedule, scaler, say)
    objective: nn.Module = plain
    apply_plan(plain, plan)  # in place: the optimizer's parameters stay the same tensors
    if dist.enabled:
        objective = nn.parallel.DistributedDataParallel(plain, device_ids=[device] if device.type == "cuda" else None)
    loader, chosen = _make_loader(cfg, data, device, bcfg)
    # What this run actually computes with, for its checkpoint and results record (a
    # resumed run: this machine's, which trains the epochs still to do).
    metrics = {**metrics, "trained_with": asdict(trained_with(plan, chosen.name, device))}
    setup = Setup(
        cfg=cfg, dist=dist, device=device, objective=objective, plain=plain, optimizer=optimizer,
        schedule=schedule, scaler=scaler, loader=loader, n_crops=len(data), steps_per_epoch=steps,
        log=RunLog(run_dir, enabled=dist.is_main), metrics=metrics, identities=data.identities,
        precision=plan.precision, channels_last=plan.channels_last, start_epoch=start_epoch, start_step=step,
    )
    return setup, f"loader {chosen.name} ({chosen.reason}); {plan.describe()}"


def _make_loader(cfg: TrainConfig, data, device: torch.device, bcfg):
    """The batch loader ``data.loader`` names (``auto``: the one that suits ``device``)
    and the choice with its reason."""
    workers = cfg.data.workers if cfg.data.workers is not None else max(1, (torch.multiprocessing.cpu_count() or 2) - 1)
    chosen = choose_loader(cfg.data.loader, data, device)
    ctx = LoaderCtx(data, cfg.data.augment, bcfg.pre.mean, bcfg.pre.std, device, workers, cfg.train.seed)
    return LOADERS.get(chosen.name)(ctx), chosen
