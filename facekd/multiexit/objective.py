"""The module ``facekd multiexit`` trains: a multi-exit backbone, one classifier head per
exit, the per-exit terms and the distillation between exits.

``L = Σ_m Σ_terms term(exit m) + λ·(1/M)·Σ_{m<M} (1/|T(m)|)·Σ_{t∈T(m)} τ²·KL(p_t^τ ‖ p_m^τ)``
with ``T(m)`` the exits after m, the teachers' outputs detached, and τ raised linearly
from ``tau_start`` to ``tau_end`` over the run (Phuong & Lampert, ICCV 2019, eq. 2-3).
Every term is logged per exit: ``exit1_hard``, ``exit1_exit_kl``, ...
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from facekd.distill.losses import DISTILL_LOSSES, Outputs, build_terms, needs_teacher, uses
from facekd.distill.objective import match_width
from facekd.distill.teacher_sources import Teacher, teacher_for
from facekd.errors import FacekdError
from facekd.models.heads import SoftmaxHead, build_head
from facekd.models import build_backbone
from facekd.models.exits import MultiExit
from facekd.train.data import Shard, steps_per_epoch
from facekd.train.loop import full_precision


class MultiExitObjective(nn.Module):
    """Exits + heads + terms; an external teacher (if any) is held outside the module tree.

    Args:
        backbone: The multi-exit model.
        heads: One classifier head per exit (earliest first).
        terms: Distillation terms applied at every exit (``hard``, and teacher terms).
        inter: The ``exit_kl`` term, or None to train the exits independently.
        tau: (start, end) temperature of ``inter``, over ``total_steps`` steps.
        teacher: The external teacher (built once, :mod:`facekd.distill.teacher_sources`), or None.
        teacher_dim: The teacher's embedding width when each exit needs a learned layer to it.
    """

    def __init__(self, backbone: MultiExit, heads: list[nn.Module], terms: list[nn.Module], inter: nn.Module | None,
                 tau: tuple[float, float], total_steps: int, teacher: Teacher | None = None,
                 teacher_dim: int | None = None) -> None:
        super().__init__()
        if len(heads) != backbone.num_exits:
            raise FacekdError(f"{len(heads)} heads for {backbone.num_exits} exits")
        self.backbone, self.heads = backbone, nn.ModuleList(heads)
        self.terms = nn.ModuleList(terms)
        self.inter = inter
        self.tau, self.total_steps = tau, max(1, total_steps)
        dim = backbone.cfg.embedding_dim
        self.adapters = None
        if teacher is not None and teacher_dim and teacher_dim != dim:
            self.adapters = nn.ModuleList(nn.Linear(dim, teacher_dim, bias=False) for _ in heads)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))  # saved: τ resumes where it was
        object.__setattr__(self, "teacher", teacher)  # outside the module tree

    def temperature(self) -> float:
        """τ at the current step: linear from start to end over the run."""
        start, end = self.tau
        frac = min(1.0, float(self.steps_done) / self.total_steps)
        return start + (end - start) * frac

    def exit_outputs(self, embeddings: list[torch.Tensor], y: torch.Tensor) -> list[Outputs]:
        outs = []
        for k, (emb, head) in enumerate(zip(embeddings, self.heads)):
            emb = emb.float()
            margin = head(emb, y)
            logits = margin if isinstance(head, SoftmaxHead) else head(emb)
            shown = self.adapters[k](emb) if self.adapters is not None else emb
            outs.append(Outputs(shown, logits, margin))
        return outs

    def inter_exit(self, outs: list[Outputs], y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(1/M)·(1/|T(m)|)·Σ_{t>m} exit_kl(m ← t)`` per exit m < M (logged as ``exit{m}_exit_kl``)."""
        m_total = len(outs)
        terms = {}
        for m in range(m_total - 1):
            later = [Outputs(o.embedding.detach(), o.logits.detach()) for o in outs[m + 1:]]
            vals = [self.inter(outs[m], t, y)[self.inter.name] for t in later]
            terms[f"exit{m + 1}_{self.inter.name}"] = torch.stack(vals).mean() / m_total
        return terms

    def forward(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        embeddings = self.backbone.forward_all(x)
        teacher = self.teacher(x, index) if self.teacher is not None else Outputs(x.new_zeros(0))
        with full_precision(x):
            outs = self.exit_outputs(embeddings, y)
            terms: dict[str, torch.Tensor] = {}
            for k, out in enumerate(outs, 1):
                for term in self.terms:
                    for name, value in term(out, teacher, y).items():
                        terms[f"exit{k}_{name}"] = value
            if self.inter is not None:
                self.inter.tau = self.temperature()
                terms.update(self.inter_exit(outs, y))
                terms["info_tau"] = torch.tensor(self.inter.tau)
        if self.training:
            self.steps_done += 1
        return terms


def make_multiexit_objective(cfg, data, device: torch.device, say: Callable[[str], None] = print) -> MultiExitObjective:
    """``fit``'s ``make_objective`` for a :class:`~facekd.multiexit.config.MultiExitConfig`:
    the exits and their heads, then the teacher (built once, if a term follows one)."""
    e = cfg.exits
    terms = build_terms(cfg.distill.terms)
    if cfg.distill.teacher_weighting:
        raise FacekdError("distill.teacher_weighting: not supported with exits (the weight μ is per exit)")
    if cfg.distill.mixup:
        raise FacekdError("distill.mixup: not supported with exits (set distill.mixup=0)")
    if uses(terms, "features"):
        raise FacekdError("distill term blocks: not supported with exits (they match embeddings, not inner layers)")
    model = MultiExit(build_backbone(cfg.model.backbone, **cfg.model.backbone_args), e.points)
    dim = model.cfg.embedding_dim
    heads = [build_head(cfg.model.head, dim, len(data.identities), **cfg.model.head_args) for _ in range(model.num_exits)]
    teacher, teacher_dim = None, None
    if needs_teacher(terms):
        teacher, teacher_dim = match_width(teacher_for(cfg, data, device, say), dim, terms, cfg.distill.adapter)
        say(f"multiexit: teacher {teacher.name} ({teacher.mode}, {teacher.embedding_dim}-d"
            + (f", a learned {dim}->{teacher_dim} adapter per exit)" if teacher_dim else ")"))
    inter = DISTILL_LOSSES.build("exit_kl", weight=e.kl_weight, tau=e.tau_start) if e.kl_weight > 0 else None
    total = steps_per_epoch(len(data), cfg.train.batch_size, Shard()) * cfg.train.epochs
    say(f"multiexit: {model.num_exits} exits on {cfg.model.backbone} at " + ", ".join(model.points)
        + " + the output; " + (f"exit_kl x{e.kl_weight:g}, tau {e.tau_start:g} -> {e.tau_end:g}" if inter else "no inter-exit term"))
    return MultiExitObjective(model, heads, terms, inter, (e.tau_start, e.tau_end), total, teacher, teacher_dim)
