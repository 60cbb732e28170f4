"""The detection loss terms of SPEC 4a, named and composable (``DET_TERMS``).

A run's objective is a weighted sum of terms, configured like the embedding terms::

    terms: [{name: hard}, {name: weighted_soft_ce, weight: 0.5}, {name: bounded_reg, weight: 0.5},
            {name: hint, weight: 0.5}]

Every term reads one :class:`DetBatch` and returns a sum over cells divided by the number
of positive cells (``n_pos``), so weights compare across terms.

- ``hard``: the student against the labels y (a teacher's final detections where no
  ground truth exists): binary CE of face class and objectness on every cell (×
  ``cls_weight``, Chen's μ when combined with ``weighted_soft_ce``), smooth-L1 of box and
  landmarks on positive cells.
- ``weighted_soft_ce`` (Chen et al.): −Σ_c w_c·P_t(c)·log P_s(c) over {background, face}
  on class and objectness, P at temperature ``tau``; w_background 1.5, w_face 1.
- ``bounded_reg`` (Chen et al.): on positive cells ‖R_s − y‖² where ‖R_s − y‖² + m >
  ‖R_t − y‖², else 0 (the teacher's regression bounds the student's, it is not a target);
  boxes and landmarks.
- ``hint`` (Chen et al.): ‖A(V) − Z‖² (or L1) between YuNet's stride-8 neck Z and the
  student's, V, through a 1x1 adaptation conv A (trained with the student).
- ``objectness_scaled`` (Mehta & Ozturk): λ_D·[f_obj(o^T, ô) + o^T·f_cl(p^T, p̂) +
  o^T·f_bb(b^T, b̂) (+ landmarks)]: the teacher's class, box and landmarks are learned
  only where the teacher sees a face.

``fm_nms`` (Mehta & Ozturk) is a switch on the teacher's maps, not a term: before any term
reads them, in every 3x3 neighbourhood of cells of a stride only the highest objectness
is kept, the others' set to zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from facekd.detect.teacher import HINT_CHANNELS
from facekd.errors import FacekdError
from facekd.registry import Registry

Maps = dict[str, list[torch.Tensor]]


@dataclass
class DetBatch:
    """What the terms read.

    Attributes:
        student: The student's maps (logits, regressions), per stride (B, C, h, w).
        guided: The student's stride-8 neck output (the hint's guided layer V).
        pos, box_t, kps_t, kps_known: The labels per stride (``facekd.align.grid.assign``).
        teacher: YuNet's maps on the same frames (None when no term needs them).
        hint: YuNet's stride-8 neck (Z), or None.
    """

    student: Maps
    guided: torch.Tensor
    pos: list[torch.Tensor]
    box_t: list[torch.Tensor]
    kps_t: list[torch.Tensor]
    kps_known: list[torch.Tensor]
    teacher: Maps | None = None
    hint: torch.Tensor | None = None

    @property
    def n_pos(self) -> torch.Tensor:
        return torch.clamp(sum(p.sum() for p in self.pos).float(), min=1.0)

    def need_teacher(self, term: str) -> Maps:
        if self.teacher is None:
            raise FacekdError(f"detection term {term!r} needs the teacher's maps (teacher: yunet)")
        return self.teacher


def _sl1(a: torch.Tensor, b: torch.Tensor, beta: float) -> torch.Tensor:
    return F.smooth_l1_loss(a, b, reduction="none", beta=beta)


class Term(nn.Module):
    needs_teacher = False
    needs_hint = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight


DET_TERMS: Registry[Term] = Registry("detection loss term")


@DET_TERMS.register("hard")
class Hard(Term):
    def __init__(self, weight: float = 1.0, cls_weight: float = 1.0, box_weight: float = 1.0,
                 kps_weight: float = 1.0, beta: float = 0.05) -> None:
        super().__init__(weight)
        self.cls_weight, self.box_weight, self.kps_weight, self.beta = cls_weight, box_weight, kps_weight, beta

    def forward(self, b: DetBatch) -> torch.Tensor:
        total = b.student["cls"][0].new_zeros(())
        for i, pos in enumerate(b.pos):
            y = pos.float().unsqueeze(1)
            ce = (F.binary_cross_entropy_with_logits(b.student["cls"][i], y, reduction="sum")
                  + F.binary_cross_entropy_with_logits(b.student["obj"][i], y, reduction="sum"))
            m = pos.unsqueeze(1)
            box = (_sl1(b.student["bbox"][i], b.box_t[i], self.beta) * m).sum()
            km = (pos & b.kps_known[i]).unsqueeze(1)
            kps = (_sl1(b.student["kps"][i], b.kps_t[i], self.beta) * km).sum()
            total = total + self.cls_weight * ce + self.box_weight * box + self.kps_weight * kps
        return total / b.n_pos


def _binary_soft_ce(z_s: torch.Tensor, z_t: torch.Tensor, tau: float, w_bg: float, w_face: float) -> torch.Tensor:
    p_t = torch.sigmoid(z_t / tau)
    log_p = F.logsigmoid(z_s / tau)
    log_q = F.logsigmoid(-z_s / tau)
    return -(w_face * p_t * log_p + w_bg * (1 - p_t) * log_q).sum()


@DET_TERMS.register("weighted_soft_ce")
class WeightedSoftCE(Term):
    needs_teacher = True

    def __init__(self, weight: float = 1.0, w_background: float = 1.5, w_face: float = 1.0, tau: float = 1.0) -> None:
        super().__init__(weight)
        if tau <= 0:
            raise FacekdError(f"weighted_soft_ce: tau must be > 0, not {tau}")
        self.w_bg, self.w_face, self.tau = w_background, w_face, tau

    def forward(self, b: DetBatch) -> torch.Tensor:
        t = b.need_teacher("weighted_soft_ce")
        total = sum(_binary_soft_ce(b.student[k][i], t[k][i], self.tau, self.w_bg, self.w_face)
                    for k in ("cls", "obj") for i in range(len(b.pos)))
        return total / b.n_pos


@DET_TERMS.register("bounded_reg")
class BoundedReg(Term):
    needs_teacher = True

    def __init__(self, weight: float = 1.0, margin: float = 0.0) -> None:
        super().__init__(weight)
        if margin < 0:
            raise FacekdError(f"bounded_reg: the margin m must be >= 0, not {margin}")
        self.margin = margin

    def _bound(self, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        d_s = ((s - y) ** 2).sum(1)
        d_t = ((t - y) ** 2).sum(1)
        active = (d_s + self.margin > d_t) & mask
        return (d_s * active).sum()

    def forward(self, b: DetBatch) -> torch.Tensor:
        t = b.need_teacher("bounded_reg")
        total = b.student["bbox"][0].new_zeros(())
        for i, pos in enumerate(b.pos):
            total = total + self._bound(b.student["bbox"][i], t["bbox"][i], b.box_t[i], pos)
            total = total + self._bound(b.student["kps"][i], t["kps"][i], b.kps_t[i], pos & b.kps_known[i])
        return total / b.n_pos


@DET_TERMS.register("hint")
class Hint(Term):
    needs_hint = True

    def __init__(self, weight: float = 1.0, norm: str = "l2", student_channels: int = 0) -> None:
        super().__init__(weight)
        if norm not in ("l1", "l2"):
            raise FacekdError(f"hint: norm is 'l2' or 'l1', not {norm!r}")
        self.norm = norm
        self.adapt = nn.Conv2d(student_channels, HINT_CHANNELS, 1)

    def forward(self, b: DetBatch) -> torch.Tensor:
        if b.hint is None:
            raise FacekdError("detection term 'hint' needs the teacher's hint tensor (teacher: yunet)")
        d = self.adapt(b.guided) - b.hint
        return (d.abs() if self.norm == "l1" else d * d).mean()


@DET_TERMS.register("objectness_scaled")
class ObjectnessScaled(Term):
    needs_teacher = True

    def __init__(self, weight: float = 1.0, landmarks: bool = True, beta: float = 0.05) -> None:
        super().__init__(weight)
        self.landmarks, self.beta = landmarks, beta

    def forward(self, b: DetBatch) -> torch.Tensor:
        t = b.need_teacher("objectness_scaled")
        total = b.student["obj"][0].new_zeros(())
        for i in range(len(b.pos)):
            o_t = torch.sigmoid(t["obj"][i])
            total = total + F.binary_cross_entropy_with_logits(b.student["obj"][i], o_t, reduction="sum")
            total = total + (o_t * F.binary_cross_entropy_with_logits(
                b.student["cls"][i], torch.sigmoid(t["cls"][i]), reduction="none")).sum()
            total = total + (o_t * _sl1(b.student["bbox"][i], t["bbox"][i], self.beta)).sum()
            if self.landmarks:
                total = total + (o_t * _sl1(b.student["kps"][i], t["kps"][i], self.beta)).sum()
        return total / b.n_pos


def fm_nms(maps: Maps, k: int = 3) -> Maps:
    """Feature-map NMS (Mehta & Ozturk): in every k x k neighbourhood of cells of a
    stride, the objectness of all but the highest is set to zero (logit -30)."""
    out = dict(maps)
    obj = []
    for o in maps["obj"]:
        peak = F.max_pool2d(o, k, stride=1, padding=k // 2)
        obj.append(torch.where(o >= peak, o, torch.full_like(o, -30.0)))
    out["obj"] = obj
    return out


class DetectionObjective(nn.Module):
    """The weighted sum of the configured terms.

    Args:
        terms: (name, weight, arguments) per term.
        student_channels: The student's neck width (the hint's adaptation layer input).
        use_fm_nms: Apply :func:`fm_nms` to the teacher's maps first.
    """

    def __init__(self, terms: list[tuple[str, float, dict]], student_channels: int, use_fm_nms: bool = False) -> None:
        super().__init__()
        if not terms:
            raise FacekdError("a detection objective needs at least one term (e.g. {name: hard})")
        built = []
        for name, weight, args in terms:
            factory = DET_TERMS.get(name)
            if name == "hint":
                args = {**args, "student_channels": student_channels}
            try:
                built.append(factory(weight=weight, **args))
            except TypeError as exc:
                raise FacekdError(f"detection term {name!r}: {exc}") from None
        self.terms = nn.ModuleList(built)
        self.names = [n for n, _, _ in terms]
        self.use_fm_nms = use_fm_nms

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher or t.needs_hint for t in self.terms)

    def forward(self, batch: DetBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.use_fm_nms and batch.teacher is not None:
            batch.teacher = fm_nms(batch.teacher)
        parts = {}
        total = None
        for name, term in zip(self.names, self.terms):
            v = term(batch) * term.weight
            parts[name] = float(v.detach())
            total = v if total is None else total + v
        return total, parts
