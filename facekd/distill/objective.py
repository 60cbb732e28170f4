"""The module ``facekd distill`` trains: the student (backbone + head, and an adaptation
layer for embedding terms when widths differ) against a frozen teacher.

``L = Σ_terms`` with the teacher's terms scaled per sample by μ when teacher weighting is
on: ``L = λ_hard·L_hard + μ·(λ_soft·L_soft + λ_feature·L_feature(norm))`` (SPEC 3).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from facekd.distill.losses import Outputs, build_terms, needs_teacher, teacher_weights, uses
from facekd.errors import FacekdError
from facekd.models.heads import SoftmaxHead
from facekd.train.loop import full_precision


def orthonormal_lift(teacher_dim: int, student_dim: int) -> torch.Tensor:
    """A fixed (student_dim, teacher_dim) matrix with orthonormal columns (the same for
    every run): ``t @ Q.T`` puts a teacher embedding into the student's width with its
    norm and every cosine unchanged."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(student_dim, teacher_dim, generator=g))
    return q.contiguous()


class LiftedTeacher:
    """A teacher whose embedding reaches the student lifted into the student's width by
    fixed orthonormal columns (``distill.adapter: lift``): cosines and norms are those
    of the teacher, and nothing is learned on either side."""

    def __init__(self, source: Callable[[torch.Tensor, torch.Tensor | None], Outputs], teacher_dim: int,
                 student_dim: int) -> None:
        self.source, self.q = source, orthonormal_lift(teacher_dim, student_dim)

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None) -> Outputs:
        out = self.source(x, index)
        q = self.q.to(out.embedding.device)
        return replace(out, embedding=out.embedding.float() @ q.T)


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
    from facekd.distill.teacher import center_outputs, crop_adapter, fit_classifier, load_teacher, teacher_embeddings
    from facekd.models.heads import build_head
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

    need_logits = uses(terms, "logits") or d.teacher_weighting
    augmenting = _augments(cfg.data.augment)
    if cfg.teacher.members:
        teacher, cached = _ensemble_teacher(cfg, data, device, say)
        mode = "cache"
    else:
        teacher = load_teacher(cfg.teacher, data.identities, device)
        own_crops = bool(cfg.teacher.crops)
        mode = d.teacher_mode if d.teacher_mode != "auto" else ("online" if augmenting and not own_crops else "cache")
        if mode == "online":
            _check_online(teacher, own_crops, backbone.cfg.pre, cfg.model.backbone)
            if teacher.center:
                raise FacekdError(f"teacher {teacher.name}: centred outputs (teacher.center) need cached outputs; "
                                  "use distill.teacher_mode=cache, or teacher.center=false")
        if not own_crops:
            try:  # 112x112 and 112x96 crops convert into each other; other pairs cannot
                adapt = crop_adapter(data.template, teacher.template, (0 - backbone.cfg.pre.mean) / backbone.cfg.pre.std)
            except FacekdError:
                raise FacekdError(
                    f"teacher {teacher.name} wants {teacher.template} crops and the student {data.template}; "
                    "give it its own crops of the same photos: teacher.crops (eval/teacher_crops.py, then facekd pack)"
                ) from None
        cached = None
        if mode == "cache" or (need_logits and teacher.head is None):
            cached = teacher_embeddings(teacher, teacher_inputs(cfg.teacher, teacher.template, data), say=say)
            if teacher.center:
                cached = center_outputs(cached, teacher.name, say)
    if mode == "cache" and augmenting:
        say("distill: note: cached teacher outputs are of un-augmented crops while the student sees augmented ones")

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
    width = _width_note(dim, backbone.cfg.embedding_dim, d.adapter) if uses(terms, "embedding") else ""
    say(f"distill: teacher {teacher.name} ({mode}); terms " + ", ".join(_describe(t) for t in terms)
        + (f"; teacher weighting k={d.k}, MIN={d.min_ce}" if d.teacher_weighting else "") + width)
    if uses(terms, "embedding") and d.adapter == "lift" and dim < backbone.cfg.embedding_dim:
        source, dim = LiftedTeacher(source, dim, backbone.cfg.embedding_dim), backbone.cfg.embedding_dim
    return DistillObjective(backbone, head, terms, source, dim, (d.k, d.min_ce) if d.teacher_weighting else None)


def _check_online(teacher, own_crops: bool, student_pre, student: str) -> None:
    """Refuses a teacher that cannot run on the student's augmented batches."""
    if own_crops:
        raise FacekdError(f"teacher {teacher.name} reads its own crops (teacher.crops): use distill.teacher_mode=cache")
    if teacher.backbone is None:
        raise FacekdError(f"teacher {teacher.name} has no PyTorch model: use distill.teacher_mode=cache (no augmentation)")
    if (teacher.mean, teacher.std) != (student_pre.mean, student_pre.std):
        raise FacekdError(f"teacher {teacher.name} normalises pixels differently from {student}")


def _width_note(dim: int, student_dim: int, adapter: str) -> str:
    """How a ``dim``-d teacher embedding meets the student's (nothing when they match)."""
    if dim == student_dim:
        return ""
    if adapter == "lift" and dim < student_dim:
        return f"; teacher embedding {dim}-d lifted to {student_dim}-d (fixed orthonormal)"
    return f"; learned {student_dim}->{dim} adapter on the student" + (
        " (a wider teacher cannot be lifted)" if adapter == "lift" else "")


class _TeacherView:
    """The training set as a teacher with its own crops sees it: the same samples,
    labels and order, each image read from the teacher's crops of the same photo."""

    def __init__(self, data, crops) -> None:
        self._data = data
        self._load = crops.loader(data)
        self.labels, self.identities, self.template = data.labels, data.identities, crops.template
        self.info = {**data.info, "sources": [*data.info.get("sources", []), f"teacher crops {crops.fingerprint()}"]}

    def __len__(self) -> int:
        return len(self._data)

    def describe(self, i: int) -> str:
        return self._data.describe(i)

    def image(self, i: int):
        return self._load(i)


def teacher_inputs(tcfg, template: str, data):
    """What a teacher embeds: the student's crops, or its own (``teacher.crops``)."""
    if not tcfg.crops:
        return data
    from facekd.distill.teacher_crops import TeacherCrops
    from facekd.train.data import resolve_path

    return _TeacherView(data, TeacherCrops(resolve_path(tcfg.crops, None), template))


def _ensemble_teacher(cfg, data, device, say):
    """Every member's cached embeddings of its own crops, L2-normalised and concatenated."""
    from facekd.distill.config import TeacherCfg
    from facekd.distill.ensemble import combine
    from facekd.distill.teacher import Teacher, center_outputs, load_teacher, teacher_embeddings

    parts, names = [], []
    for m in cfg.teacher.members:
        mcfg = TeacherCfg(model=m.model, weights=m.weights, crops=m.crops, center=m.center)
        t = load_teacher(mcfg, data.identities, device)
        if not m.crops and t.template != data.template:
            raise FacekdError(f"ensemble member {t.name} wants {t.template} crops, the student has {data.template}: "
                              "set the member's crops (a pack of its own crops of the same photos)")
        emb = teacher_embeddings(t, teacher_inputs(mcfg, t.template, data), say=say)
        if t.center:  # each member before it is normalised and joined
            emb = center_outputs(emb, t.name, say)
        parts.append(emb.float().numpy())
        names.append(t.name)
    cached = torch.from_numpy(combine(parts)).to(torch.float16)
    name = "ensemble(" + " + ".join(names) + ")"
    return Teacher(name, name, data.template, 0.0, 1.0, None, None), cached


def _augments(a) -> bool:
    return a.flip > 0 or a.affine_p > 0 or a.color_p > 0 or a.gray_p > 0 or a.blur_p > 0


def _probe_dim(teacher, data, device) -> int:
    import numpy as np

    return int(teacher.embedder(np.stack([data.image(0), data.image(0)])).shape[1])


def _describe(term: nn.Module) -> str:
    extras = {k: v for k, v in vars(term).items() if not k.startswith("_") and k not in ("training", "weight")}
    args = ", ".join(f"{k}={v}" for k, v in extras.items())
    return f"{term.weight:g}·{type(term).__name__}" + (f"({args})" if args else "")
