"""The module ``facekd distill`` trains: the student (backbone + head, and an adaptation
layer for embedding terms when widths differ) against a frozen teacher.

``L = Σ_terms`` with the teacher's terms scaled per sample by μ when teacher weighting is
on: ``L = λ_hard·L_hard + μ·(λ_soft·L_soft + λ_feature·L_feature(norm))`` (SPEC 3).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from facekd.distill.losses import Outputs, build_terms, needs_teacher, teacher_weights, uses
from facekd.errors import FacekdError
from facekd.heads import SoftmaxHead
from facekd.train.loop import full_precision


class CachedTeacher:
    """Teacher outputs looked up by crop index: cached embeddings, logits from the
    teacher's (small) classifier head on the fly."""

    def __init__(self, embeddings: torch.Tensor, head: nn.Module | None) -> None:
        self.embeddings, self.head = embeddings, head

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> Outputs:
        if index is None:
            raise FacekdError("cached teacher outputs need crop indices from the loader")
        emb = self.embeddings.index_select(0, index).float()
        with torch.no_grad():
            logits = self.head(emb) if self.head is not None else None
        return Outputs(emb, logits)


class OnlineTeacher:
    """The teacher run on the same (augmented) batch as the student, without gradient;
    ``adapt`` converts the student's crops to the teacher's template if they differ."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None, adapt: Callable = lambda x: x) -> None:
        self.backbone, self.head, self.adapt = backbone, head, adapt

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None) -> Outputs:
        with torch.no_grad():
            emb = self.backbone(self.adapt(x)).float()
            logits = self.head(emb) if self.head is not None else None
        return Outputs(emb, logits)


class DistillObjective(nn.Module):
    """Student + terms; the teacher is held outside the module tree (never saved in the
    student's checkpoint, never optimised, never switched to train mode)."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        terms: list[nn.Module],
        teacher: Callable[[torch.Tensor, torch.Tensor | None], Outputs] | None,
        teacher_dim: int | None,
        weighting: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.terms = nn.ModuleList(terms)
        student_dim = backbone.cfg.embedding_dim
        self.adapter = None
        if uses(terms, "embedding") and teacher_dim and teacher_dim != student_dim:
            # FitNets-style adaptation layer: only the embedding terms see its output.
            self.adapter = nn.Linear(student_dim, teacher_dim, bias=False)
        object.__setattr__(self, "_teacher", teacher)
        self.weighting = weighting  # (k, MIN) or None

    def forward(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        emb = self.backbone(x)
        teacher = self._teacher(x, index) if self._teacher is not None else Outputs(emb.new_zeros(0))
        with full_precision(x):
            emb = emb.float()
            margin_logits = self.head(emb, y)
            logits = margin_logits if isinstance(self.head, SoftmaxHead) else self.head(emb)
            s_emb = self.adapter(emb) if self.adapter is not None else emb
            student = Outputs(s_emb, logits, margin_logits)
            return self._terms(student, teacher, y)

    def _terms(self, student: Outputs, teacher: Outputs, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.weighting is not None:
            k, min_ce = self.weighting
            teacher.weight = teacher_weights(teacher.logits, student.logits, y, k=k, min_ce=min_ce)
        out: dict[str, torch.Tensor] = {}
        for term in self.terms:
            out.update(term(student, teacher, y))
        if teacher.weight is not None:
            out["info_mu"] = teacher.weight.mean().detach()  # logged, not added to the loss
        return out


def make_distill_objective(cfg, data, device: torch.device, say: Callable[[str], None] = print) -> DistillObjective:
    """Builds the student, loads the teacher, computes or reuses its cached outputs, and
    fits it a classifier if the terms need logits it lacks (the ``make_objective`` hook
    of :func:`facekd.train.loop.fit`)."""
    from facekd.distill.teacher import fit_classifier, load_teacher, teacher_embeddings
    from facekd.heads import build_head
    from facekd.models import build_backbone

    d = cfg.distill
    terms = build_terms(d.terms)
    if not terms:
        raise FacekdError("distill.terms is empty")
    backbone = build_backbone(cfg.model.backbone, **cfg.model.backbone_args)
    head = build_head(cfg.model.head, backbone.cfg.embedding_dim, len(data.identities), **cfg.model.head_args)
    if not needs_teacher(terms) and not d.teacher_weighting:
        say("distill: no term follows a teacher; training from labels and designed targets only")
        return DistillObjective(backbone, head, terms, None, None)

    from facekd.distill.teacher import crop_adapter

    teacher = load_teacher(cfg.teacher, data.identities, device)
    try:  # 112x112 and 112x96 crops convert into each other; other pairs cannot
        adapt = crop_adapter(data.template, teacher.template, (0 - backbone.cfg.mean) / backbone.cfg.std)
    except FacekdError:
        raise FacekdError(
            f"teacher {teacher.name} wants {teacher.template} crops and the student {data.template}; "
            "they do not convert into each other"
        ) from None
    if (teacher.mean, teacher.std) != (backbone.cfg.mean, backbone.cfg.std) and teacher.backbone is not None:
        raise FacekdError(f"teacher {teacher.name} normalises pixels differently from {cfg.model.backbone}")
    need_logits = uses(terms, "logits") or d.teacher_weighting
    augmenting = _augments(cfg.data.augment)
    mode = d.teacher_mode if d.teacher_mode != "auto" else ("online" if augmenting else "cache")
    if mode == "online" and teacher.backbone is None:
        raise FacekdError(f"teacher {teacher.name} is an ONNX model: use distill.teacher_mode=cache (no augmentation)")
    if mode == "cache" and augmenting:
        say("distill: note: cached teacher outputs are of un-augmented crops while the student sees augmented ones")

    cached = None
    if mode == "cache" or (need_logits and teacher.head is None):
        cached = teacher_embeddings(teacher, data, say=say)
    if need_logits and teacher.head is None:
        teacher.head, acc = fit_classifier(
            cached, torch.from_numpy(data.labels), cfg.teacher.classifier, cfg.teacher.classifier_args,
            cfg.teacher.classifier_epochs, device, seed=cfg.train.seed,
        )
        say(f"distill: fitted a {cfg.teacher.classifier} classifier on the teacher's frozen embeddings "
            f"({len(data.identities)} identities, {acc:.1f}% top-1 on the training crops)")
    dim = (cached.shape[1] if cached is not None else None) or _probe_dim(teacher, data, device)
    if mode == "cache":
        source = CachedTeacher(cached.to(device), teacher.head)
    else:
        source = OnlineTeacher(teacher.backbone, teacher.head, adapt)
    say(f"distill: teacher {teacher.name} ({mode}); terms " + ", ".join(_describe(t) for t in terms)
        + (f"; teacher weighting k={d.k}, MIN={d.min_ce}" if d.teacher_weighting else ""))
    return DistillObjective(backbone, head, terms, source, dim, (d.k, d.min_ce) if d.teacher_weighting else None)


def _augments(a) -> bool:
    return a.flip > 0 or a.affine_p > 0 or a.color_p > 0 or a.gray_p > 0 or a.blur_p > 0


def _probe_dim(teacher, data, device) -> int:
    import numpy as np

    return int(teacher.embedder(np.stack([data.image(0), data.image(0)])).shape[1])


def _describe(term: nn.Module) -> str:
    extras = {k: v for k, v in vars(term).items() if not k.startswith("_") and k not in ("training", "weight")}
    args = ", ".join(f"{k}={v}" for k, v in extras.items())
    return f"{term.weight:g}·{type(term).__name__}" + (f"({args})" if args else "")
