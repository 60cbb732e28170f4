"""``facekd prune``: iterative structured pruning, each step recovered by distillation.

With ``prune.sparsity`` the source first trains with an L1 penalty on its filters
(:mod:`facekd.prune.sparsity`, in ``RUN/sparsity/``, resumable), and step 1 prunes
that sparse model.

Step k of N removes filters (:func:`facekd.prune.core.prune_once`) so that ``ratio·k/N``
of the source model's filters are gone, saves the result before recovery
(``RUN/stepK/pruned.pt``, with its LFW), then recovers it with ``facekd distill``'s
objective and trainer (:func:`facekd.train.loop.fit` into ``RUN/stepK``: the same
checkpoints, ``--resume`` and logs). The teacher is the unpruned source model and the
default term FeatureNorm on the embedding, so the recovery needs no labels. The last
step's recovered model is copied to ``RUN/pruned.pt``; ``RUN/prune.json`` (this module
writes and reads it) holds one row per step: parameters, MACs and LFW before and after
recovery.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facekd.config import from_dict, to_dict
from facekd.distill.objective import build_objective
from facekd.distill.teacher_sources import Teacher, teacher_for
from facekd.distill.teacher import fit_classifier, load_teacher, teacher_embeddings
from facekd.evaluation.embed import to_input
from facekd.errors import FacekdError
from facekd.io_utils import atomic_write_json
from facekd.preprocessing import Preprocessing
from facekd.hub import resolve
from facekd.models.heads import build_head
from facekd.models.fakequant import attach_fake_quant
from facekd.models.profile import count_macs, count_params
from facekd.models.surgery import apply_surgery, parse_op
from facekd.prune.config import PruneConfig, QatCfg
from facekd.prune.core import StepPlan, check_supported, prune_once, step_ratio
from facekd.prune.importance import IMPORTANCES
from facekd.prune.sparsity import SparsityRow, chosen_layers, induce_sparsity
from facekd.train.checkpoint import (
    CHECKPOINT,
    backbone_from_checkpoint,
    head_from_checkpoint,
    load_checkpoint,
    model_checkpoint,
    save_checkpoint,
)
from facekd.train.config import ModelCfg
from facekd.train.data import build_train_set
from facekd.train.loop import evaluate_lfw, fit

RESULT = "prune.json"
PRUNED = "pruned.pt"


@dataclass
class StepRow:
    """One pruning step.

    Attributes:
        removed: Fraction of the source's filters removed after this step (the target).
        params, macs: Of the pruned model (MACs for one face).
        lfw_before, lfw_after: LFW accuracy (%) after pruning, and after recovery.
        checkpoint: The recovered model.
    """

    step: int
    removed: float
    params: int
    macs: int
    lfw_before: float | None = None
    lfw_after: float | None = None
    checkpoint: str = ""


@dataclass
class PruneResult:
    """What ``RUN/prune.json`` holds."""

    source: str
    importance: str
    ratio: float
    global_pruning: bool
    source_params: int
    source_macs: int
    source_lfw: float | None
    steps: list[StepRow] = field(default_factory=list)
    source_weights: str | None = None
    sparsity: SparsityRow | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PruneResult":
        sparsity = SparsityRow(**d["sparsity"]) if d.get("sparsity") else None
        return cls(**{**d, "steps": [StepRow(**s) for s in d.get("steps", [])], "sparsity": sparsity})


def read_result(run_dir: Path | str) -> PruneResult:
    """A run's ``prune.json``."""
    import json

    path = Path(run_dir) / RESULT
    if not path.is_file():
        raise FacekdError(f"{path}: not found (not a facekd prune run?)")
    return PruneResult.from_dict(json.loads(path.read_text()))


def resolve_config(cfg: PruneConfig) -> tuple[PruneConfig, nn.Module, dict | None]:
    """The config with the source's ``model`` section and, unless set, the source as
    teacher; the source model; its checkpoint (None for published weights)."""
    p = cfg.prune
    if not p.source:
        raise FacekdError("prune.source: name the trained model to prune (a facekd checkpoint, or a backbone + weights)")
    IMPORTANCES.get(p.importance)
    own_teacher = bool(cfg.teacher.model or cfg.teacher.members)
    if not (0 < p.ratio < 1 or (p.ratio == 0 and (p.surgery or own_teacher))) or p.steps < 1:
        raise FacekdError(f"prune.ratio must lie in (0, 1) (0 only with prune.surgery, or with a teacher other than "
                          f"the source: teacher.model) and prune.steps be >= 1 (got {p.ratio}, {p.steps})")
    for op in p.surgery:
        parse_op(op)  # an unknown name fails here, listing the known ones
    src = resolve(p.source, p.weights)
    net = src.require_backbone("pruning")
    ckpt = src.checkpoint
    name = ckpt["backbone"] if ckpt is not None else net.cfg.name
    check_supported(name)
    if p.sparsity is not None:  # an unknown layer path fails before any teacher is built
        chosen_layers(net, p.sparsity.layers, where="prune.sparsity.layers")
    if ckpt is not None:
        model = dict(ckpt.get("config", {}).get("model", {}))
        model.update(backbone=name, backbone_args=dict(ckpt.get("backbone_args", {})))
    else:
        model = {**to_dict(cfg.model), "backbone": name, "backbone_args": {}}
    teacher = cfg.teacher
    if not own_teacher:
        teacher = dataclasses.replace(cfg.teacher, model=p.source, weights=p.weights)
    cfg = dataclasses.replace(cfg, model=from_dict(ModelCfg, model, f"{p.source}: model"), teacher=teacher)
    return cfg, net.train(), ckpt


def _source_head(cfg: PruneConfig, ckpt: dict | None, data, dim: int, device: torch.device, say) -> nn.Module | None:
    """The source's classifier over the training identities: its checkpoint's, or one
    fitted on its frozen embeddings (only when the importance needs a loss)."""
    if ckpt is not None:
        head = head_from_checkpoint(ckpt, data.identities, dim)
        if head is not None:
            return head
    if not IMPORTANCES.build(cfg.prune.importance).needs_loss:
        return None
    teacher = load_teacher(dataclasses.replace(cfg.teacher, model=cfg.prune.source, weights=cfg.prune.weights),
                           data.identities, device)
    emb = teacher_embeddings(teacher, data, say=say)
    head, acc = fit_classifier(emb, torch.from_numpy(data.labels), cfg.model.head, dict(cfg.model.head_args),
                               cfg.teacher.classifier_epochs, device, seed=cfg.train.seed)
    say(f"prune: fitted a {cfg.model.head} classifier on the source's frozen embeddings for the taylor loss "
        f"({len(data.identities)} identities, {acc:.1f}% top-1 on the training crops)")
    return head


def _importance_batches(cfg: PruneConfig, data, pre: Preprocessing, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    bs, n = cfg.train.batch_size, cfg.prune.importance_batches
    rng = np.random.default_rng(cfg.train.seed + step)
    idx = rng.permutation(len(data))[: bs * n]
    out = []
    for start in range(0, len(idx) - bs + 1, bs):
        part = idx[start : start + bs]
        x = torch.from_numpy(to_input(np.stack([data.image(int(i)) for i in part]), pre))
        out.append((x, torch.from_numpy(data.labels[part].astype(np.int64))))
    return out


def _label_loss(head: nn.Module) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(model(x).float(), y), y)

    return loss


def _recovery(pruned: Path, head: nn.Module | None, teacher: Teacher | None, qat: QatCfg | None = None):
    """``fit``'s ``make_objective``: facekd distill's objective with the pruned model as
    the student (rounding as INT8 will with ``qat``) and the teacher built once for the
    whole run."""

    def make(cfg, data, device, say):
        backbone = backbone_from_checkpoint(load_checkpoint(pruned), pruned)
        if qat is not None:
            n = attach_fake_quant(backbone, qat.weight_bits, qat.momentum)
            say(f"quantisation-aware recovery: {n} layers round inputs (uint8) and weights ({qat.weight_bits}-bit)")
        student_head = build_head(cfg.model.head, backbone.cfg.embedding_dim, len(data.identities),
                                  **cfg.model.head_args)
        if head is not None:  # the source's classifier, for label terms
            student_head.load_state_dict(head.state_dict())
        return build_objective(backbone, student_head, teacher, cfg.distill, say)

    return make


def _lfw(net: nn.Module, cfg: PruneConfig, device: torch.device) -> float | None:
    if not (cfg.eval.every and cfg.eval.lfw):
        return None
    return float(evaluate_lfw(net, cfg, device)["lfw_acc"])


def run_prune(cfg: PruneConfig, run_dir: Path | str, resume: bool = False, say: Callable[[str], None] = print) -> PruneResult:
    """Prunes ``cfg.prune.source`` in ``cfg.prune.steps`` steps into ``run_dir``."""
    run_dir = Path(run_dir)
    if (run_dir / RESULT).is_file() and not resume:
        raise FacekdError(f"{run_dir}: already holds a pruning run; pass --resume to continue it, or choose another --out")
    cfg, source, src_ckpt = resolve_config(cfg)
    p = cfg.prune
    if p.qat is not None and cfg.train.compile == "auto":
        # Compiled, the rounding ran about 18x slower than eager on the development CPU.
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=False))
        say("quantisation-aware recovery runs eager (train.compile auto -> false)")
    device = torch.device(cfg.train.device if cfg.train.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    size = tuple(source.cfg.input_size)
    data = build_train_set(cfg.data, source.cfg.pre.template)
    head = _source_head(cfg, src_ckpt, data, source.cfg.embedding_dim, device, say)
    teacher = teacher_for(cfg, data, device, say) if cfg.train.epochs > 0 else None  # once, for every step
    if resume and (run_dir / RESULT).is_file():
        result = read_result(run_dir)
    else:
        result = PruneResult(p.source, p.importance, p.ratio, p.global_pruning, count_params(source),
                             count_macs(source, size), _lfw(source, cfg, device), source_weights=p.weights)
    run_dir.mkdir(parents=True, exist_ok=True)
    say(f"prune {p.source}: {cfg.model.backbone}, {result.source_params / 1e6:.2f} M params, "
        f"{result.source_macs / 1e6:.1f} MMAC" + (f", LFW {result.source_lfw:.2f} %" if result.source_lfw else "")
        + f"; {p.importance}, {100 * p.ratio:g}% of filters in {p.steps} step(s), "
        + ("global" if p.global_pruning else "per layer") + f"; recovery {cfg.train.epochs} epoch(s) per step")
    done = {r.step: r for r in result.steps}
    prev: Path | None = None
    if p.sparsity is not None:
        say(f"sparsity induction: {p.sparsity.epochs} epoch(s), L1 weight {p.sparsity.weight:g}, layers "
            + (", ".join(p.sparsity.layers) or "all convs but the embedding layer"))
        result.sparsity = induce_sparsity(cfg, source, run_dir, lambda path: _recovery(path, head, teacher), say)
        atomic_write_json(run_dir / RESULT, result.to_dict())
        say(f"sparsity: filters' L1 {result.sparsity.l1_before:.4g} -> {result.sparsity.l1_after:.4g}")
        prev = Path(result.sparsity.checkpoint)
    for k in range(1, p.steps + 1):
        step_dir = run_dir / f"step{k}"
        pruned_path = step_dir / PRUNED
        if not pruned_path.is_file():
            model = source if prev is None else backbone_from_checkpoint(load_checkpoint(prev), prev)
            plan = StepPlan(step_ratio(p.ratio, k, p.steps), p.global_pruning, dict(p.layer_ratios), p.max_layer_ratio, p.round_to)
            batches = _importance_batches(cfg, data, model.cfg.pre, k) if head is not None and IMPORTANCES.build(p.importance).needs_loss else []
            # The random control draws from torch's global generator: seeded per run seed and step,
            # so that a run repeats and seeds differ.
            torch.manual_seed(cfg.train.seed * 1_000 + k)
            if k == 1 and p.surgery:
                apply_surgery(model, list(p.surgery))
                say(f"surgery {', '.join(p.surgery)} on {p.source}")
            if plan.ratio > 0:
                prune_once(model, p.importance, plan, batches, _label_loss(head) if head is not None else None)
            row = StepRow(k, round(p.ratio * k / p.steps, 6), count_params(model), count_macs(model, size), _lfw(model, cfg, device))
            step_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(pruned_path, model_checkpoint(model, cfg.model.backbone, cfg.model.backbone_args,
                                                          config=to_dict(cfg), metrics=asdict(row)))
            done[k] = row
            say(f"step {k}/{p.steps}: {row.params / 1e6:.2f} M params, {row.macs / 1e6:.1f} MMAC"
                + (f", LFW {row.lfw_before:.2f} % before recovery" if row.lfw_before is not None else ""))
        row = done.get(k) or StepRow(**load_checkpoint(pruned_path)["metrics"])
        last = step_dir / CHECKPOINT
        if cfg.train.epochs > 0:
            finished = last.is_file() and load_checkpoint(last).get("epoch", 0) >= cfg.train.epochs
            if not finished:
                # resume: a kill before the step's first checkpoint leaves only its log, which a
                # fresh fit would refuse as another run's.
                metrics = fit(cfg, step_dir, resume=resume or last.is_file(), say=say,
                              make_objective=_recovery(pruned_path, head, teacher, p.qat))
            else:
                metrics = load_checkpoint(last).get("metrics", {})
            row.lfw_after = metrics.get("lfw_acc")
            prev = last
        else:
            prev = pruned_path
        row.checkpoint = str(prev)
        done[k] = row
        result.steps = [done[i] for i in sorted(done)]
        atomic_write_json(run_dir / RESULT, result.to_dict())
    final = load_checkpoint(prev)
    net = backbone_from_checkpoint(final, prev)
    save_checkpoint(run_dir / PRUNED, model_checkpoint(net, cfg.model.backbone, cfg.model.backbone_args,
                                                       config=to_dict(cfg), metrics=final.get("metrics", {}),
                                                       identities=final.get("identities", [])))
    return result
