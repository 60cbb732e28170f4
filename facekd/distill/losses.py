"""Distillation terms (Wang et al., ICIP 2018, and the methods around it: Hinton et al.
2015, Ba & Caruana 2014, Sau & Balasubramanian 2016, Yuan et al. 2020).

Each term is a registered ``nn.Module`` whose ``forward(student, teacher, target)``
returns named, weighted loss values; the objective sums them and the trainer logs each
by name (the registry name, or ``<name>_<part>`` for a term with several parts).

A term states what it reads as data, in ``needs`` (a subset of :data:`NEEDS`); the
objective reads that set to decide what to compute (teacher logits, the adapter to the
teacher's embedding width, labels), never a list of classes. Terms that follow the
teacher are scaled per sample by the teacher weight μ (``teacher.weight``) when teacher
weighting is on; terms that use labels only are never scaled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from facekd.config import at_least, fraction, from_dict, positive
from facekd.errors import FacekdError
from facekd.registry import Registry

DISTILL_LOSSES: Registry[nn.Module] = Registry("distillation term")

# What a term may read: the labels, the student's class logits (through its head), the
# teacher's class logits, the teacher's embedding, the outputs of named inner layers of
# both networks (``features``). The student's embedding is always there.
NEEDS = frozenset({"labels", "student_logits", "teacher_logits", "teacher_embedding", "teacher_features"})

# The lowest cross-entropy Caffe reports, the source's MIN for teacher weighting.
CAFFE_MIN_CE = -8.37665


@dataclass(frozen=True)
class TermCfg:
    """One distillation term: a name in :data:`~facekd.distill.losses.DISTILL_LOSSES`,
    its weight λ and the arguments that term takes (``{name: soft, weight: 1.0, tau: 4}``).
    An argument left out (None) takes the term's default; one the term does not take is
    an error naming it (:func:`facekd.distill.losses.build_terms`)."""

    name: str
    weight: float = field(default=1.0, metadata=at_least(0))
    tau: float | None = field(default=None, metadata=positive())  # soft, hinton, noisy_teacher, manual_teacher, exit_kl
    alpha: float | None = field(default=None, metadata=fraction())  # hinton
    sigma: float | None = field(default=None, metadata=at_least(0))  # noisy_teacher
    p: float | None = field(default=None, metadata=fraction())  # noisy_teacher
    a: float | None = None  # manual_teacher
    epsilon: float | None = field(default=None, metadata=fraction(high_open=True))  # label_smoothing
    layers: tuple[str, ...] | None = None  # blocks

    def args(self) -> dict:
        """The term's keyword arguments: the weight and every argument given."""
        return {k: v for k, v in vars(self).items() if k != "name" and v is not None}


@dataclass
class Outputs:
    """What a network gives a distillation term.

    Attributes:
        embedding: (N, D) embedding, not normalised.
        logits: (N, C) class logits without any margin (what soft labels come from).
        margin_logits: (N, C) logits with the head's margin on the target class (what the
            hard term trains with); the same as ``logits`` for a softmax head.
        weight: (N,) per-sample teacher weight μ, or None (all ones).
        features: Outputs of named inner layers (module name -> (N, ...) tensor), for
            terms that read ``teacher_features``; None when nothing asked for them.
    """

    embedding: torch.Tensor
    logits: torch.Tensor | None = None
    margin_logits: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    features: dict[str, torch.Tensor] | None = None


def teacher_weights(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    target: torch.Tensor,
    k: float = -0.5,
    min_ce: float = CAFFE_MIN_CE,
) -> torch.Tensor:
    """Per-sample teacher weight μ (Wang et al., ICIP 2018, section 3.2), without gradient.

    ``w = H(X_T, y) / (H(X_S, y) + k)``; ``α = k / MIN`` if ``w > 1`` else 0;
    ``μ = 1 − α·w`` clamped to [0, 1]. Where ``H(X_S, y) + k ≤ 0`` the ratio is
    undefined and μ = 1. A sample the teacher gets more wrong than the student (by more
    than the relaxation ``k``) gets less of the teacher's guidance.

    Args:
        teacher_logits, student_logits: (N, C) logits over the same classes.
        target: (N,) labels.
        k: Relaxation factor (the paper: −0.5).
        min_ce: MIN, the lowest cross-entropy (Caffe's −8.37665).
    """
    with torch.no_grad():
        h_t = F.cross_entropy(teacher_logits.float(), target, reduction="none")
        h_s = F.cross_entropy(student_logits.float(), target, reduction="none")
        denom = h_s + k
        valid = denom > 0
        w = torch.where(valid, h_t / torch.where(valid, denom, torch.ones_like(denom)), torch.zeros_like(h_t))
        alpha = torch.where(w > 1, torch.full_like(w, k / min_ce), torch.zeros_like(w))
        mu = (1 - alpha * w).clamp(0.0, 1.0)
        return torch.where(valid, mu, torch.ones_like(mu))


def _weighted_mean(per_sample: torch.Tensor, teacher: Outputs) -> torch.Tensor:
    if teacher.weight is None:
        return per_sample.mean()
    return (teacher.weight.to(per_sample.dtype) * per_sample).mean()


def soft_cross_entropy(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Per sample ``τ² · H(softmax(z_T/τ), softmax(z_S/τ))``."""
    p_t = F.softmax(teacher_logits.float() / tau, dim=1)
    return -(p_t * F.log_softmax(student_logits.float() / tau, dim=1)).sum(dim=1) * tau * tau


class _Term(nn.Module):
    """A term with a weight λ, a name in the logs (its registry name) and what it reads."""

    name = "term"
    needs: frozenset[str] = frozenset()

    @property
    def follows_teacher(self) -> bool:
        """Whether μ scales it: it reads something of the teacher's."""
        return any(n.startswith("teacher_") for n in self.needs)

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def per_sample(self, student: Outputs, teacher: Outputs, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: Outputs, teacher: Outputs, target: torch.Tensor) -> dict[str, torch.Tensor]:
        values = self.per_sample(student, teacher, target)
        mean = _weighted_mean(values, teacher) if self.follows_teacher else values.mean()
        return {self.name: self.weight * mean}


@DISTILL_LOSSES.register("hard")
class Hard(_Term):
    """``L_hard = H(X_S, y)``: the student's cross-entropy on the label, through its head
    (with the head's margin). Labels only: never scaled by μ."""

    name, needs = "hard", frozenset({"labels", "student_logits"})

    def per_sample(self, student, teacher, target):
        return F.cross_entropy(student.margin_logits.float(), target, reduction="none")


@DISTILL_LOSSES.register("soft")
class Soft(_Term):
    """``L_soft = τ²·H(X_T^τ, X_S^τ)`` with ``X^τ = softmax(Z/τ)`` (Wang et al.; Hinton et al.):
    cross-entropy between the teacher's and the student's softened class probabilities."""

    name, needs = "soft", frozenset({"student_logits", "teacher_logits"})

    def __init__(self, weight: float = 1.0, tau: float = 4.0) -> None:
        super().__init__(weight)
        self.tau = tau

    def per_sample(self, student, teacher, target):
        return soft_cross_entropy(teacher.logits, student.logits, self.tau)


@DISTILL_LOSSES.register("feature")
class Feature(_Term):
    """Hint learning on the embedding: ``L_feature = ||F_S − F_T||²`` (squared L2 per sample;
    the student's embedding passes through the objective's adaptation layer when the
    widths differ). The paper found it hurts next to the other terms."""

    name, needs = "feature", frozenset({"teacher_embedding"})

    def per_sample(self, student, teacher, target):
        return (student.embedding.float() - teacher.embedding.float()).pow(2).sum(dim=1)


@DISTILL_LOSSES.register("featurenorm")
class FeatureNorm(_Term):
    """``L_featurenorm = ||F_S/|F_S| − F_T/|F_T|||² = 2 − 2·cos(F_S, F_T)``: hint learning
    made consistent with cosine verification (Wang et al., section 3.1)."""

    name, needs = "featurenorm", frozenset({"teacher_embedding"})

    def per_sample(self, student, teacher, target):
        s = F.normalize(student.embedding.float(), dim=1)
        t = F.normalize(teacher.embedding.float(), dim=1)
        return (s - t).pow(2).sum(dim=1)


@DISTILL_LOSSES.register("blocks")
class BlockMatch(_Term):
    """Block-wise matching for a student of the teacher's own architecture (after a
    surgery or pruning that keeps the named layers' output shapes): per sample, the mean
    over ``layers`` of ``||B_S − B_T||² / mean(B_T²)``, each layer's squared error relative
    to the teacher's mean square over the batch, so that every layer counts alike (FitNets'
    hints at every block; the block reconstruction of post-training quantisation, BRECQ).

    Args:
        layers: Module names in both networks (``blocks.0``, ...); empty: every child of
            the student's ``blocks`` (:func:`facekd.distill.features.feature_layers`).
    """

    name, needs = "blocks", frozenset({"teacher_features"})

    def __init__(self, weight: float = 1.0, layers: tuple[str, ...] = ()) -> None:
        super().__init__(weight)
        self.layers = tuple(layers)

    def per_sample(self, student, teacher, target):
        if not student.features or not teacher.features:
            raise FacekdError("distill term blocks: no inner-layer outputs reached it (the objective taps them)")
        total = 0.0
        for name in student.features:
            s, t = student.features[name].float(), teacher.features[name].float()
            if s.shape != t.shape:
                raise FacekdError(f"distill term blocks: layer {name} gives {tuple(s.shape[1:])} in the student and "
                                  f"{tuple(t.shape[1:])} in the teacher; name layers whose outputs keep their shape")
            scale = t.pow(2).mean().clamp_min(1e-12)
            total = total + (s - t).pow(2).flatten(1).mean(dim=1) / scale
        return total / len(student.features)


@DISTILL_LOSSES.register("hinton")
class HintonKD(_Term):
    """Hinton et al. (2015): ``(1 − α)·H(y, p_S) + α·τ²·H(p_T^τ, p_S^τ)`` with α = 0.5 and
    τ of 2–5. Logged as two terms, ``hinton_hard`` and ``hinton_soft``."""

    name, needs = "hinton", frozenset({"labels", "student_logits", "teacher_logits"})

    def __init__(self, weight: float = 1.0, tau: float = 4.0, alpha: float = 0.5) -> None:
        super().__init__(weight)
        self.tau, self.alpha = tau, alpha

    def forward(self, student, teacher, target):
        hard = F.cross_entropy(student.margin_logits.float(), target)
        soft = _weighted_mean(soft_cross_entropy(teacher.logits, student.logits, self.tau), teacher)
        return {"hinton_hard": self.weight * (1 - self.alpha) * hard, "hinton_soft": self.weight * self.alpha * soft}


@DISTILL_LOSSES.register("logit_regression")
class LogitRegression(_Term):
    """Ba & Caruana (2014): the student regresses the teacher's logits,
    ``½·mean_c (z_S − z_T)²`` per sample."""

    name, needs = "logit_regression", frozenset({"student_logits", "teacher_logits"})

    def per_sample(self, student, teacher, target):
        return 0.5 * (student.logits.float() - teacher.logits.float()).pow(2).mean(dim=1)


@DISTILL_LOSSES.register("noisy_teacher")
class NoisyTeacher(Soft):
    """Sau & Balasubramanian (2016): soft targets from teacher logits with Gaussian noise
    added, ``z_T + σ·|z_T|_mean·ε`` with probability ``p`` per sample, as a regulariser."""

    name = "noisy_teacher"

    def __init__(self, weight: float = 1.0, tau: float = 4.0, sigma: float = 0.1, p: float = 0.5) -> None:
        super().__init__(weight, tau)
        self.sigma, self.p = sigma, p

    def per_sample(self, student, teacher, target):
        z = teacher.logits.float()
        if self.training:
            scale = z.abs().mean(dim=1, keepdim=True)
            on = (torch.rand(z.shape[0], 1, device=z.device) < self.p).float()
            z = z + on * self.sigma * scale * torch.randn_like(z)
        return soft_cross_entropy(z, student.logits, self.tau)


@DISTILL_LOSSES.register("manual_teacher")
class ManualTeacher(_Term):
    """Tf-KD with a manually designed teacher (Yuan et al., CVPR 2020): the teacher's
    distribution is ``a`` on the true class and ``(1 − a)/(K − 1)`` elsewhere (a = 0.99
    in the public code); the term is ``τ²·KL(p^d_τ ‖ p_S^τ)`` with ``p^d_τ`` the softmax of
    ``log p^d / τ``. Needs no teacher network."""

    name, needs = "manual_teacher", frozenset({"labels", "student_logits"})

    def __init__(self, weight: float = 1.0, a: float = 0.99, tau: float = 20.0) -> None:
        super().__init__(weight)
        self.a, self.tau = a, tau

    def per_sample(self, student, teacher, target):
        k = student.logits.shape[1]
        p = torch.full_like(student.logits, (1 - self.a) / (k - 1), dtype=torch.float32)
        p.scatter_(1, target[:, None], self.a)
        p_tau = F.softmax(p.log() / self.tau, dim=1)
        log_s = F.log_softmax(student.logits.float() / self.tau, dim=1)
        return (p_tau * (p_tau.log() - log_s)).sum(dim=1) * self.tau * self.tau


@DISTILL_LOSSES.register("label_smoothing")
class LabelSmoothing(_Term):
    """Label smoothing (Szegedy et al.; Tf-KD's "virtual teacher" reading of it):
    cross-entropy against ``1 − ε`` on the label and ``ε/(K − 1)`` elsewhere."""

    name, needs = "label_smoothing", frozenset({"labels", "student_logits"})

    def __init__(self, weight: float = 1.0, epsilon: float = 0.1) -> None:
        super().__init__(weight)
        self.epsilon = epsilon

    def per_sample(self, student, teacher, target):
        logits = student.margin_logits.float()
        k = logits.shape[1]
        q = torch.full_like(logits, self.epsilon / (k - 1))
        q.scatter_(1, target[:, None], 1 - self.epsilon)
        return -(q * F.log_softmax(logits, dim=1)).sum(dim=1)


@DISTILL_LOSSES.register("exit_kl")
class ExitKL(_Term):
    """Distillation between the exits of a multi-exit network (Phuong & Lampert, ICCV
    2019): an earlier exit (the student) learns the soft outputs of a later exit (the
    teacher, detached: a constant for this term),
    ``τ²·KL(p_T^τ ‖ p_S^τ) = τ²·Σ_c p_T^τ(c)·(log p_T^τ(c) − log p_S^τ(c))`` with
    ``p^τ = softmax(z/τ)``. The multi-exit objective (:mod:`facekd.multiexit`) pairs
    every exit with each later one and raises τ during training."""

    name, needs = "exit_kl", frozenset({"student_logits", "teacher_logits"})

    def __init__(self, weight: float = 1.0, tau: float = 1.0) -> None:
        super().__init__(weight)
        self.tau = tau

    def per_sample(self, student, teacher, target):
        log_t = F.log_softmax(teacher.logits.detach().float() / self.tau, dim=1)
        log_s = F.log_softmax(student.logits.float() / self.tau, dim=1)
        return (log_t.exp() * (log_t - log_s)).sum(dim=1) * self.tau * self.tau


def needs_teacher(terms: list[nn.Module]) -> bool:
    """Whether any term reads the teacher's outputs."""
    return any(t.follows_teacher for t in terms)


def uses(terms: list[nn.Module], what: str) -> bool:
    """Whether any term reads the teacher's ``logits``, ``embedding`` or ``features`` (its ``needs``)."""
    return any(f"teacher_{what}" in t.needs for t in terms)


def build_terms(specs: list) -> list[nn.Module]:
    """Terms from config entries: :class:`~facekd.distill.config.TermCfg` records, or
    their mappings ``{name: soft, weight: 1.0, tau: 4}`` (read as such, unknown keys
    refused)."""
    out = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, TermCfg):
            if not isinstance(spec, dict) or "name" not in spec:
                raise FacekdError(f"distill.terms entry {spec} has no name (one of {', '.join(DISTILL_LOSSES.names())})")
            spec = from_dict(TermCfg, spec, f"distill.terms[{i}] ({spec['name']})")
        try:
            out.append(DISTILL_LOSSES.build(spec.name, **spec.args()))
        except TypeError as exc:
            raise FacekdError(f"distill.terms {spec.name}: {exc}") from None
    return out
