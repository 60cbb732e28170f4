"""``facekd train``: a plain loop in the shape of torchvision's reference scripts.

``fit(cfg, run_dir)`` sets up (distributed group, data, model, optimizer), then runs
``train_one_epoch`` and ``evaluate_lfw`` per epoch and saves ``checkpoints/last.pt``
after each. ``resume=True`` continues from that checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from facekd.config import save_config
from facekd.errors import FacekdError
from facekd.evaluation.embed import TorchEmbedder
from facekd.evaluation.pairs import evaluate_pairs
from facekd.models import backbone_cfg, build_backbone
from facekd.models.heads import CenterLoss, build_head
from facekd.progress import progress_bar
from facekd.train.checkpoint import CHECKPOINT, check_same_model, prepare_run_dir, save_run
from facekd.train.config import TrainConfig
from facekd.train.data import Shard, build_train_set, epoch_batches, resolve_path
from facekd.train.distributed import DistInfo, barrier, init_distributed, mean_across, shutdown
from facekd.train.run_setup import Setup, build_setup
from facekd.train.speed import autocast_dtype

INFO_PREFIX = "info_"  # objective outputs logged but not added to the loss (e.g. mean μ)


class LabelObjective(nn.Module):
    """Backbone + classifier head (+ center loss): images and labels -> named loss terms."""

    def __init__(self, backbone: nn.Module, head: nn.Module, center: nn.Module | None = None, center_weight: float = 0.0):
        super().__init__()
        self.backbone, self.head, self.center = backbone, head, center
        self.center_weight = center_weight

    def forward(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        emb = self.backbone(x)
        with full_precision(x):  # margins on bf16 cosines would be off by ~0.004
            emb = emb.float()
            terms = {"cls": F.cross_entropy(self.head(emb, y), y)}
            if self.center is not None:
                terms["center"] = self.center_weight * self.center(emb, y)
        return terms


def full_precision(x: torch.Tensor):
    """Leaves autocast for the enclosed ops (classifier heads and losses run in fp32)."""
    return torch.autocast(x.device.type, enabled=False)


def build_objective(cfg: TrainConfig, num_classes: int) -> LabelObjective:
    """The backbone, head and center loss ``cfg.model`` names, for ``num_classes`` identities."""
    backbone = build_backbone(cfg.model.backbone, **cfg.model.backbone_args)
    dim = backbone.cfg.embedding_dim
    head = build_head(cfg.model.head, dim, num_classes, **cfg.model.head_args)
    center = CenterLoss(dim, num_classes) if cfg.model.center_loss > 0 else None
    return LabelObjective(backbone, head, center, cfg.model.center_loss)


def _autocast(setup: Setup):
    dtype = autocast_dtype(setup.precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(setup.device.type, dtype=dtype)


def train_one_epoch(setup: Setup, epoch: int, step: int, batches: Iterator, progress: Callable | None = None) -> tuple[int, dict]:
    """One pass over this process's batches; returns the step reached and epoch stats."""
    cfg = setup.cfg.train
    setup.objective.train()
    channels_last = setup.channels_last
    window: dict[str, torch.Tensor] = {}
    epoch_sum: dict[str, torch.Tensor] = {}
    n_window = n_epoch = 0
    t_window = t_epoch = time.perf_counter()
    local_batch = cfg.batch_size // setup.dist.world_size
    for x, y, index in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(setup):
            terms = setup.objective(x, y, index)
        loss = sum(v for k, v in terms.items() if not k.startswith(INFO_PREFIX))
        setup.optimizer.zero_grad(set_to_none=True)
        setup.scaler.scale(loss).backward()
        if cfg.grad_clip:
            setup.scaler.unscale_(setup.optimizer)
            nn.utils.clip_grad_norm_(setup.plain.parameters(), cfg.grad_clip)
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
        setup.schedule.step()
        step += 1
        n_window += 1
        n_epoch += 1
        for k, v in {"loss": loss, **terms}.items():
            v = v.detach().float()
            window[k] = window.get(k, 0) + v
            epoch_sum[k] = epoch_sum.get(k, 0) + v
        if progress:
            progress(n_epoch)
        if step % cfg.log_every == 0:
            names = list(window)
            vals = mean_across(torch.stack([window[k] for k in names]) / n_window, setup.dist).tolist()
            now = time.perf_counter()
            rec = {"kind": "train", "epoch": epoch, "step": step, **dict(zip(names, vals))}
            rec["lr"] = setup.optimizer.param_groups[0]["lr"]
            rec["images_per_s"] = n_window * local_batch * setup.dist.world_size / max(now - t_window, 1e-9)
            setup.log.write(rec)
            window, n_window, t_window = {}, 0, now
    names = list(epoch_sum)
    if not names:
        raise FacekdError(f"epoch {epoch}: no batches (fewer crops than one batch per process?)")
    # .tolist() waits for the device, so the time below includes the last steps' work.
    vals = mean_across(torch.stack([epoch_sum[k] for k in names]) / n_epoch, setup.dist).tolist()
    seconds = time.perf_counter() - t_epoch
    stats = {
        **dict(zip(names, vals)),
        "seconds": seconds,
        "images_per_s": n_epoch * local_batch * setup.dist.world_size / max(seconds, 1e-9),
    }
    return step, stats


def evaluate_lfw(backbone: nn.Module, cfg: TrainConfig, device: torch.device) -> dict:
    """LFW verification of the current backbone (a copy in eval mode)."""
    net = copy.deepcopy(backbone)
    # A compiled forward (run_setup.apply_plan) is a function bound to the original module,
    # which deepcopy shares: without this the copy would run the training model in train mode.
    net.__dict__.pop("forward", None)
    net.cfg = backbone.cfg
    emb = TorchEmbedder(net, backbone.cfg.pre, name=backbone.cfg.name, device=str(device))
    ev = evaluate_pairs(
        emb, resolve_path(cfg.eval.lfw, cfg.data.root), flip=cfg.eval.flip, pairs_per_fold=cfg.eval.pairs_per_fold,
        detector=cfg.data.detector,  # an unaligned LFW folder is cut as the training photos were
    )
    r = ev.result
    return {
        "lfw_acc": 100 * r.accuracy,
        "lfw_std": 100 * r.std,
        "lfw_auc": r.auc,
        "lfw_eer": 100 * r.eer,
        "lfw_pairs": r.pairs,
        "eval_seconds": ev.seconds,
    }


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FacekdError(f"train.device is {name!r} but this machine has no CUDA device")
    return dev


def fit(
    cfg: TrainConfig,
    run_dir: Path | str,
    resume: bool = False,
    say: Callable[[str], None] = print,
    make_objective: Callable | None = None,
) -> dict:
    """Trains ``cfg`` into ``run_dir``; returns the final metrics.

    Launched by ``torchrun``, each process joins the group and takes its share of every
    global batch; only rank 0 writes files.

    Args:
        make_objective: ``(cfg, data, device, say) -> nn.Module`` with a ``backbone``
            attribute, returning named loss terms from ``(images, labels, indices)``;
            default: :class:`LabelObjective` (backbone + head from labels). Distillation
            passes its own.
    """
    run_dir = Path(run_dir)
    device = _device(cfg.train.device)
    dist = init_distributed(device.type)
    try:
        device = _join_process(cfg, dist, device)
        if not dist.is_main:
            say = lambda msg: None  # noqa: E731
        ckpt = _open_run(cfg, run_dir, resume)
        bcfg = backbone_cfg(cfg.model.backbone)
        data = _gather_train_set(cfg, dist, bcfg.pre.template)
        plain = _objective_rank0_first(cfg, data, device, dist, say, make_objective)
        setup, choices = build_setup(cfg, run_dir, dist, device, data, plain, ckpt, bcfg, say)
        if dist.is_main:
            save_config(cfg, run_dir / "config.yaml")
            if ckpt is not None:
                dropped = setup.log.truncate_after(setup.start_step)
                say(f"resuming {run_dir} after epoch {setup.start_epoch} (step {setup.start_step}); "
                    f"dropped {dropped} log lines past it")
        say(_run_line(setup, data, choices))
        metrics = _train_epochs(setup, len(data), run_dir, say)
        setup.log.close()
        barrier(dist)
        return metrics
    finally:
        shutdown(dist)


def _join_process(cfg: TrainConfig, dist: DistInfo, device: torch.device) -> torch.device:
    """This process's device (its own GPU in a distributed run), with ``train.threads`` set."""
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return device


def _open_run(cfg: TrainConfig, run_dir: Path, resume: bool) -> dict | None:
    """The checkpoint to resume from (None: a fresh run), once it is known to train the
    same model and LFW for ``eval.lfw`` is there."""
    ckpt = prepare_run_dir(run_dir, resume)
    if ckpt is not None:
        check_same_model(cfg, ckpt, run_dir / CHECKPOINT)
    if cfg.eval.every and cfg.eval.lfw:
        lfw = resolve_path(cfg.eval.lfw, cfg.data.root)
        if not lfw.exists():
            raise FacekdError(f"{lfw}: LFW for eval.lfw not found (set eval.lfw, set FACEKD_DATA to a folder "
                                  "holding lfw/, or eval.every=0 to skip)")
    return ckpt


def _gather_train_set(cfg: TrainConfig, dist: DistInfo, template: str):
    """The training set; rank 0 aligns unaligned folders first, the others then find the
    crops cached."""
    data = None
    if dist.is_main:
        data = build_train_set(cfg.data, template, align_progress=progress_bar("align training photos", interactive_only=True))
    barrier(dist)
    if data is None:
        data = build_train_set(cfg.data, template)
    return data


def _objective_rank0_first(cfg: TrainConfig, data, device: torch.device, dist: DistInfo,
                           say: Callable[[str], None], make_objective: Callable | None) -> nn.Module:
    """The seeded training objective on ``device`` (``make_objective``: see :func:`fit`)."""

    def objective() -> nn.Module:
        torch.manual_seed(cfg.train.seed)
        if make_objective is None:
            return build_objective(cfg, len(data.identities))
        return make_objective(cfg, data, device, say)

    # Rank 0 first: a distillation objective may compute and cache teacher outputs,
    # which the other ranks then read instead of computing them again.
    plain = objective() if dist.is_main else None
    barrier(dist)
    return (plain if plain is not None else objective()).to(device)


def _run_line(setup: Setup, data, choices: str) -> str:
    """The run's first line: model, data, steps, device, loader and speed choices."""
    cfg, dist = setup.cfg, setup.dist
    params = sum(p.numel() for p in setup.plain.backbone.parameters())
    return (
        f"{cfg.model.backbone} ({params / 1e6:.2f} M params) + {cfg.model.head} head on {len(data)} crops of "
        f"{len(data.identities)} identities ({data.fallbacks_dropped} fallback crops left out); "
        f"{setup.steps_per_epoch} steps/epoch of {cfg.train.batch_size}; device {setup.device}"
        + (f" x{dist.world_size} processes" if dist.enabled else "")
        + f"; {choices}"
    )


def _train_epochs(setup: Setup, n_crops: int, run_dir: Path, say: Callable[[str], None]) -> dict:
    """The epochs after ``setup.start_epoch``: train, evaluate when due, log, checkpoint.

    Returns:
        The metrics after the last epoch (those restored when no epoch was left).
    """
    cfg, dist = setup.cfg, setup.dist
    shard = Shard(dist.rank, dist.world_size)
    step, metrics = setup.start_step, setup.metrics
    for epoch in range(setup.start_epoch + 1, cfg.train.epochs + 1):
        batches = epoch_batches(n_crops, cfg.train.batch_size, cfg.train.seed, epoch, shard)
        bar = None
        if dist.is_main:  # on terminals only: logs get one line per epoch instead
            draw = progress_bar(f"epoch {epoch}/{cfg.train.epochs}", unit="step", interactive_only=True, leave=False)
            bar = lambda n, _total=len(batches): draw(n, _total)  # noqa: E731
        step, stats = train_one_epoch(setup, epoch, step, setup.loader.epoch(batches, epoch), progress=bar)
        record = {"kind": "epoch", "epoch": epoch, "step": step, **stats}
        if cfg.eval.every and cfg.eval.lfw and (epoch % cfg.eval.every == 0 or epoch == cfg.train.epochs):
            if dist.is_main:
                record.update(evaluate_lfw(setup.plain.backbone, cfg, setup.device))
            barrier(dist)
        setup.log.write(record, prefix="epoch")
        metrics = {**metrics, **{k: v for k, v in record.items() if k != "kind"}}
        if "lfw_acc" in record:
            metrics["best_lfw_acc"] = max(record["lfw_acc"], metrics.get("best_lfw_acc", -1.0))
        setup.metrics = metrics
        if dist.is_main:
            save_run(setup, run_dir, epoch, step, best="lfw_acc" in record and record["lfw_acc"] >= metrics["best_lfw_acc"])
        say(_epoch_line(record))
    return metrics


def _epoch_line(r: dict) -> str:
    line = f"epoch {r['epoch']}: loss {r['loss']:.4f}, {r['images_per_s']:.0f} images/s, {r['seconds']:.1f} s"
    if "lfw_acc" in r:
        line += f"; LFW {r['lfw_acc']:.2f} ± {r['lfw_std']:.2f} % ({r['lfw_pairs']} pairs)"
    return line
