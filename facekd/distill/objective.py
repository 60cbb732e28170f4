"""The module ``facekd distill`` trains: the student (backbone + head, and an adaptation
layer for embedding terms when widths differ) against a frozen teacher that is built
once (:mod:`facekd.distill.teacher_sources`) and passed in.

``L = Σ_terms`` with the teacher's terms scaled per sample by μ when teacher weighting is
on: ``L = λ_hard·L_hard + μ·(λ_soft·L_soft + λ_feature·L_feature(norm))`` (SPEC 3).

:func:`build_objective` is the one builder: ``facekd distill`` calls it through
:func:`make_distill_objective`, ``facekd prune`` with each pruned backbone as the student;
``facekd multiexit`` meets the teacher with the same :func:`match_width`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from facekd.distill.config import DistillCfg
from facekd.distill.features import FeatureTap, feature_layers
from facekd.distill.losses import Outputs, build_terms, needs_teacher, teacher_weights, uses
from facekd.distill.teacher_sources import TEACHER_VIEWS, Teacher, teacher_for
from facekd.errors import FacekdError
from facekd.models import build_backbone
from facekd.models.heads import SoftmaxHead, build_head
from facekd.train.loop import full_precision


class DistillObjective(nn.Module):
    """Student + terms; the teacher is held outside the module tree (never saved in the
    student's checkpoint, never optimised, never switched to train mode).

    Args:
        teacher: Gives the teacher's outputs of a batch (None: no term follows one).
        adapt_to: The teacher's embedding width when the student's embedding must be
            mapped to it by a learned layer (FitNets; only the embedding terms see its
            output); None: no such layer.
        weighting: (k, MIN) of teacher weighting, or None.
        mixup: Beta concentration of the mixup blend in training (0: none); the student
            and the (online) teacher see the same blended batch.
        tap: Keeps the student's inner-layer outputs for terms that read them (the
            teacher's own tap gives the teacher's); None: no term does.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, terms: list[nn.Module], *,
                 teacher: Teacher | None = None, adapt_to: int | None = None,
                 weighting: tuple[float, float] | None = None, mixup: float = 0.0,
                 tap: FeatureTap | None = None) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.terms = nn.ModuleList(terms)
        self.adapter = nn.Linear(backbone.cfg.embedding_dim, adapt_to, bias=False) if adapt_to else None
        object.__setattr__(self, "teacher", teacher)  # outside the module tree
        self.weighting = weighting
        self.mixup = mixup
        object.__setattr__(self, "tap", tap)  # hooks, not state

    def forward(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.mixup and self.training:
            x = mixup_batch(x, self.mixup)
        emb = self.backbone(x)
        features = self.tap.take() if self.tap is not None else None
        teacher = self.teacher(x, index) if self.teacher is not None else Outputs(emb.new_zeros(0))
        with full_precision(x):
            emb = emb.float()
            margin_logits = self.head(emb, y)
            logits = margin_logits if isinstance(self.head, SoftmaxHead) else self.head(emb)
            s_emb = self.adapter(emb) if self.adapter is not None else emb
            student = Outputs(s_emb, logits, margin_logits, features=features)
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


def mixup_batch(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Each image of ``x`` blended with another of the batch (a random permutation):
    ``lam * x + (1 - lam) * x[perm]``, ``lam`` drawn per image from Beta(alpha, alpha)
    with torch's generator (so a seeded run repeats)."""
    n = x.shape[0]
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    lam = beta.sample((n,)).to(x.device, x.dtype).view(n, *([1] * (x.dim() - 1)))
    perm = torch.randperm(n, device=x.device)
    return lam * x + (1 - lam) * x.index_select(0, perm)


def check_mixup(distill: DistillCfg, terms: list[nn.Module], teacher: Teacher | None) -> None:
    """Mixup asks for label-free terms and a teacher that sees the blend.

    Raises:
        FacekdError: a term reads labels, teacher weighting is on (it reads them too), or
            the teacher's outputs are cached (of the un-blended crops).
    """
    labelled = [t.name for t in terms if "labels" in t.needs]
    if labelled:
        raise FacekdError(f"distill.mixup={distill.mixup:g}: a blend of two faces has no label, and term(s) "
                          f"{', '.join(labelled)} read labels; use label-free terms (featurenorm, feature, soft)")
    if distill.teacher_weighting:
        raise FacekdError(f"distill.mixup={distill.mixup:g}: teacher weighting reads labels; set "
                          "distill.teacher_weighting=false")
    if teacher is None or teacher.mode != "online":
        raise FacekdError(f"distill.mixup={distill.mixup:g}: the teacher must see the blend; set "
                          "distill.teacher_mode=online (cached outputs are of the un-blended crops)")


def match_width(teacher: Teacher | None, student_dim: int, terms: list[nn.Module],
                adapter: str) -> tuple[Teacher | None, int | None]:
    """How the teacher's embedding meets a student embedding of ``student_dim``.

    Returns:
        The teacher (a ``lifted`` view of it when ``adapter`` is "lift" and it is
        narrower), and the width a learned layer must map the student's embedding to
        (None: none is needed).
    """
    if teacher is None or not uses(terms, "embedding") or teacher.embedding_dim == student_dim:
        return teacher, None
    if adapter == "lift" and teacher.embedding_dim < student_dim:
        return TEACHER_VIEWS.build("lifted", teacher=teacher, width=student_dim), None
    return teacher, teacher.embedding_dim


def build_objective(backbone: nn.Module, head: nn.Module, teacher: Teacher | None, distill: DistillCfg,
                    say: Callable[[str], None] = print) -> DistillObjective:
    """The student (``backbone`` + ``head``) against ``teacher`` with ``distill``'s terms.

    Raises:
        FacekdError: no terms, terms that follow a teacher without one, or mixup where
            it cannot be honoured (:func:`check_mixup`).
    """
    terms = build_terms(distill.terms)
    if not terms:
        raise FacekdError("distill.terms is empty")
    teaching = needs_teacher(terms) or distill.teacher_weighting
    if teaching and teacher is None:
        raise FacekdError("distill.terms follow a teacher (or teacher_weighting is on) and no teacher was given")
    if distill.mixup:
        check_mixup(distill, terms, teacher if teaching else None)
    if not teaching:
        say("distill: no term follows a teacher; training from labels and designed targets only")
        return DistillObjective(backbone, head, terms)
    tap = None
    if uses(terms, "features"):
        layers = feature_layers(backbone, next(t.layers for t in terms if "teacher_features" in t.needs))
        tap = FeatureTap(backbone, layers)  # the student's first: a name it lacks leaves no hook on the teacher
        teacher = TEACHER_VIEWS.build("tapped", teacher=teacher, layers=layers)
        say(f"distill: matching {len(layers)} inner layers ({layers[0]} ... {layers[-1]}) to the teacher's")
    student_dim = backbone.cfg.embedding_dim
    shown, adapt_to = match_width(teacher, student_dim, terms, distill.adapter)
    width = _width_note(teacher.embedding_dim, student_dim, distill.adapter) if uses(terms, "embedding") else ""
    say(f"distill: teacher {teacher.name} ({teacher.mode}); terms " + ", ".join(_describe(t) for t in terms)
        + (f"; teacher weighting k={distill.k}, MIN={distill.min_ce}" if distill.teacher_weighting else "") + width)
    weighting = (distill.k, distill.min_ce) if distill.teacher_weighting else None
    if distill.mixup:
        say(f"distill: mixup, blend weights from Beta({distill.mixup:g}, {distill.mixup:g}); the teacher sees each blend")
    return DistillObjective(backbone, head, terms, teacher=shown, adapt_to=adapt_to, weighting=weighting,
                            mixup=distill.mixup, tap=tap)


def make_distill_objective(cfg, data, device: torch.device, say: Callable[[str], None] = print) -> DistillObjective:
    """``fit``'s ``make_objective`` for a :class:`~facekd.distill.config.DistillConfig`:
    builds the student, then the teacher (once, from its registered source), and hands
    both to :func:`build_objective`."""
    if not cfg.distill.terms:
        raise FacekdError("distill.terms is empty")
    backbone = build_backbone(cfg.model.backbone, **cfg.model.backbone_args)
    head = build_head(cfg.model.head, backbone.cfg.embedding_dim, len(data.identities), **cfg.model.head_args)
    return build_objective(backbone, head, teacher_for(cfg, data, device, say), cfg.distill, say)


def _width_note(dim: int, student_dim: int, adapter: str) -> str:
    """How a ``dim``-d teacher embedding meets the student's (nothing when they match)."""
    if dim == student_dim:
        return ""
    if adapter == "lift" and dim < student_dim:
        return f"; teacher embedding {dim}-d lifted to {student_dim}-d (fixed orthonormal)"
    return f"; learned {student_dim}->{dim} adapter on the student" + (
        " (a wider teacher cannot be lifted)" if adapter == "lift" else "")


def _describe(term: nn.Module) -> str:
    extras = {k: v for k, v in vars(term).items()
              if not k.startswith("_") and k not in ("training", "weight") and v != ()}
    args = ", ".join(f"{k}={v}" for k, v in extras.items())
    return f"{term.weight:g}·{type(term).__name__}" + (f"({args})" if args else "")
