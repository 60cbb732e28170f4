"""The teacher a distillation objective holds: built once from a registered source and
passed in (torchdistill's ``get_distillation_box(teacher_model, student_model, ...)``).

A :class:`Teacher` gives the objective :class:`~facekd.distill.losses.Outputs` for a
batch (``teacher(images, crop_indices)``) and says what it is: ``name``,
``embedding_dim``, ``template`` (the crop geometry of its inputs), ``mode`` (``cache``:
outputs looked up by crop index; ``online``: run on each augmented batch), ``cache_key``
and ``head`` (its classifier over the student's identities, if any).

Sources (:data:`TEACHER_SOURCES`, chosen by ``teacher.source``):

- ``model``: anything the model hub resolves: a facekd checkpoint, a registered backbone
  with weights, an ``.onnx`` embedder, an external embedder such as ``dlib_resnet``;
- ``exported``: the outputs file ``eval/export_teacher_outputs.py`` wrote where the
  teacher runs (``teacher.outputs``), for a machine without the teacher;
- ``ensemble``: several teachers' L2-normalised embeddings, concatenated.

Views of another teacher (:data:`TEACHER_VIEWS`): ``centred`` (the training set's mean
output subtracted), ``lifted`` (a narrower embedding put into the student's width by
fixed orthonormal columns) and ``tapped`` (an online teacher that also gives the outputs
of named inner layers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn

from facekd.distill.config import DistillConfig, TeacherCfg
from facekd.distill.ensemble import combine
from facekd.distill.features import FeatureTap
from facekd.distill.losses import Outputs, build_terms, needs_teacher, uses
from facekd.distill.teacher import (
    center_outputs,
    crop_adapter,
    fit_classifier,
    load_teacher,
    read_exported,
    teacher_embeddings,
)
from facekd.distill.teacher_crops import teacher_inputs
from facekd.errors import FacekdError
from facekd.models import backbone_cfg
from facekd.registry import Registry

Say = Callable[[str], None]
Mode = Literal["cache", "online"]


class Teacher:
    """A frozen teacher as an objective sees it: ``teacher(x, index) -> Outputs``.

    Attributes:
        name: What to call it in logs.
        embedding_dim: The width of the embeddings it gives.
        template: The crop geometry of its inputs.
        mode: "cache" (outputs looked up by crop index) or "online" (run on the batch).
        cache_key: Identifies its outputs on disk ("" when it runs online).
        head: Its classifier over the student's identities (None: it gives no logits).
    """

    name: str
    embedding_dim: int
    template: str
    mode: Mode
    cache_key: str = ""
    head: nn.Module | None = None

    def outputs(self, x: torch.Tensor | None, index: torch.Tensor | None) -> Outputs:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor | None, index: torch.Tensor | None) -> Outputs:
        return self.outputs(x, index)


class CachedTeacher(Teacher):
    """Teacher outputs looked up by crop index: cached embeddings, logits from the
    teacher's (small) classifier head on the fly."""

    mode = "cache"

    def __init__(self, name: str, embeddings: torch.Tensor, head: nn.Module | None, *, template: str,
                 cache_key: str = "") -> None:
        self.name, self.embeddings, self.head = name, embeddings, head
        self.template, self.cache_key = template, cache_key
        self.embedding_dim = int(embeddings.shape[1])

    def outputs(self, x: torch.Tensor | None, index: torch.Tensor | None) -> Outputs:
        if index is None:
            raise FacekdError("cached teacher outputs need crop indices from the loader")
        emb = self.embeddings.index_select(0, index.to(self.embeddings.device)).float()
        with torch.no_grad():
            logits = self.head(emb) if self.head is not None else None
        return Outputs(emb, logits)

    def to(self, device: torch.device) -> "CachedTeacher":
        return CachedTeacher(self.name, self.embeddings.to(device), self.head, template=self.template,
                             cache_key=self.cache_key)


class OnlineTeacher(Teacher):
    """The teacher run on the same (augmented) batch as the student, without gradient;
    ``adapt`` converts the student's crops to the teacher's template if they differ."""

    mode = "online"

    def __init__(self, name: str, backbone: nn.Module, head: nn.Module | None, *, template: str, embedding_dim: int,
                 adapt: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> None:
        self.name, self.backbone, self.head, self.adapt = name, backbone, head, adapt
        self.template, self.embedding_dim = template, embedding_dim

    def outputs(self, x: torch.Tensor | None, index: torch.Tensor | None) -> Outputs:
        with torch.no_grad():
            emb = self.backbone(self.adapt(x)).float()
            logits = self.head(emb) if self.head is not None else None
        return Outputs(emb, logits)


def orthonormal_lift(teacher_dim: int, student_dim: int) -> torch.Tensor:
    """A fixed (student_dim, teacher_dim) matrix with orthonormal columns (the same for
    every run): ``t @ Q.T`` puts a teacher embedding into the student's width with its
    norm and every cosine unchanged."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(student_dim, teacher_dim, generator=g))
    return q.contiguous()


class LiftedTeacher(Teacher):
    """A teacher whose embedding reaches the student lifted into the student's width by
    fixed orthonormal columns (``distill.adapter: lift``): cosines and norms are those
    of the teacher, and nothing is learned on either side.

    Args:
        source: The teacher (or any ``(x, index) -> Outputs``) to lift.
        teacher_dim, student_dim: Its width and the student's.
    """

    def __init__(self, source: Callable[[torch.Tensor | None, torch.Tensor | None], Outputs], teacher_dim: int,
                 student_dim: int) -> None:
        self.source, self.q = source, orthonormal_lift(teacher_dim, student_dim)
        self.embedding_dim = student_dim
        for attr in ("name", "template", "mode", "cache_key", "head"):
            if hasattr(source, attr):
                setattr(self, attr, getattr(source, attr))

    def outputs(self, x: torch.Tensor | None, index: torch.Tensor | None) -> Outputs:
        out = self.source(x, index)
        q = self.q.to(out.embedding.device)
        return replace(out, embedding=out.embedding.float() @ q.T)


class TappedTeacher(Teacher):
    """An online teacher whose outputs also carry its named inner layers' outputs of the
    batch (:class:`~facekd.distill.features.FeatureTap` on its network)."""

    def __init__(self, source: OnlineTeacher, layers: tuple[str, ...]) -> None:
        self.source, self.tap = source, FeatureTap(source.backbone, layers)
        for attr in ("name", "template", "mode", "cache_key", "head", "embedding_dim"):
            setattr(self, attr, getattr(source, attr))

    def outputs(self, x: torch.Tensor | None, index: torch.Tensor | None) -> Outputs:
        out = self.source(x, index)
        return replace(out, features=self.tap.take())


TEACHER_VIEWS: Registry[Teacher] = Registry("teacher view")


@TEACHER_VIEWS.register("centred")
def centred(teacher: CachedTeacher, say: Say = print) -> CachedTeacher:
    """``teacher`` with the training set's mean embedding subtracted from its cached
    outputs (:func:`~facekd.distill.teacher.center_outputs`); cached teachers only."""
    if not isinstance(teacher, CachedTeacher):
        raise FacekdError(f"teacher {teacher.name}: centred outputs (teacher.center) need cached outputs; "
                          "use distill.teacher_mode=cache, or teacher.center=false")
    return CachedTeacher(teacher.name, center_outputs(teacher.embeddings, teacher.name, say), teacher.head,
                         template=teacher.template, cache_key=teacher.cache_key)


@TEACHER_VIEWS.register("lifted")
def lifted(teacher: Teacher, width: int) -> LiftedTeacher:
    """``teacher``'s embedding lifted into ``width`` dimensions (a wider one as it is)."""
    if teacher.embedding_dim > width:
        raise FacekdError(f"teacher {teacher.name}: a {teacher.embedding_dim}-d embedding cannot be lifted "
                          f"to {width}-d (use distill.adapter=learned)")
    return LiftedTeacher(teacher, teacher.embedding_dim, width)


@TEACHER_VIEWS.register("tapped")
def tapped(teacher: Teacher, layers: tuple[str, ...]) -> TappedTeacher:
    """``teacher`` run online with the outputs of its ``layers`` kept for the terms."""
    if not isinstance(teacher, OnlineTeacher):
        raise FacekdError(f"teacher {teacher.name}: the blocks term reads the teacher's inner layers, which "
                          "cached outputs do not hold; set distill.teacher_mode=online")
    return TappedTeacher(teacher, layers)


@dataclass(frozen=True)
class TeacherNeeds:
    """What the student's side asks of a teacher (from the distillation config).

    Attributes:
        mode: ``distill.teacher_mode``: auto, cache or online.
        augmenting: Whether the student's batches are augmented (auto: online then).
        logits: Whether a term or teacher weighting reads the teacher's class logits
            (a teacher without a classifier gets one fitted on its frozen embeddings).
        student: The student's backbone name, its crops' template and normalisation.
        seed: Seeds the fitted classifier.
    """

    mode: Literal["auto", "cache", "online"]
    augmenting: bool
    logits: bool
    student: str
    template: str
    mean: float
    std: float
    seed: int = 0


TEACHER_SOURCES: Registry[Teacher] = Registry("teacher source")


def _with_head(teacher: Teacher, embeddings: torch.Tensor, cfg: TeacherCfg, data, needs: TeacherNeeds,
               device: torch.device, say: Say) -> nn.Module | None:
    """The teacher's head, or one fitted on ``embeddings`` when logits are needed."""
    if teacher.head is not None or not needs.logits:
        return teacher.head
    head, acc = fit_classifier(embeddings, torch.from_numpy(data.labels), cfg.classifier, cfg.classifier_args,
                               cfg.classifier_epochs, device, seed=needs.seed)
    say(f"distill: fitted a {cfg.classifier} classifier on the teacher's frozen embeddings "
        f"({len(data.identities)} identities, {acc:.1f}% top-1 on the training crops)")
    return head


def _fitted(teacher: CachedTeacher, cfg: TeacherCfg, data, needs: TeacherNeeds, device: torch.device,
            say: Say) -> CachedTeacher:
    """A cached teacher with its classifier (fitted if needed), its outputs on ``device``."""
    teacher.head = _with_head(teacher, teacher.embeddings, cfg, data, needs, device, say)
    return teacher.to(device)


@TEACHER_SOURCES.register("model")
def model_teacher(cfg: TeacherCfg, data, needs: TeacherNeeds, device: torch.device, say: Say = print) -> Teacher:
    """A model the hub resolves (checkpoint, backbone + weights, ``.onnx``, ``dlib_resnet``),
    teaching through cached outputs or online on each batch (``needs.mode``)."""
    t = load_teacher(cfg, data.identities, device)
    own_crops = bool(cfg.crops)
    mode = needs.mode if needs.mode != "auto" else ("online" if needs.augmenting and not own_crops else "cache")
    if mode == "online":
        _check_online(t, own_crops, needs)
    adapt = lambda x: x  # noqa: E731
    if not own_crops:
        try:  # 112x112 and 112x96 crops convert into each other; other pairs cannot
            adapt = crop_adapter(data.template, t.template, (0 - needs.mean) / needs.std)
        except FacekdError:
            raise FacekdError(
                f"teacher {t.name} wants {t.template} crops and the student {data.template}; "
                "give it its own crops of the same photos: teacher.crops (eval/teacher_crops.py, then facekd pack)"
            ) from None
    cached = None
    if mode == "cache" or (needs.logits and t.head is None):
        cached = teacher_embeddings(t, teacher_inputs(cfg.crops, t.template, data), say=say)
    if mode == "online":
        if cached is None:
            head, dim = t.head, int(t.embedder(np.stack([data.image(0), data.image(0)])).shape[1])
        else:
            head, dim = _with_head(t, cached, cfg, data, needs, device, say), int(cached.shape[1])
        return OnlineTeacher(t.name, t.backbone, head, template=t.template, adapt=adapt, embedding_dim=dim)
    teacher = CachedTeacher(t.name, cached, t.head, template=t.template, cache_key=t.key)
    if t.center:
        teacher = TEACHER_VIEWS.build("centred", teacher=teacher, say=say)
    return _fitted(teacher, cfg, data, needs, device, say)


def _check_online(t, own_crops: bool, needs: TeacherNeeds) -> None:
    """Refuses a teacher that cannot run on the student's augmented batches."""
    if own_crops:
        raise FacekdError(f"teacher {t.name} reads its own crops (teacher.crops): use distill.teacher_mode=cache")
    if t.backbone is None:
        raise FacekdError(f"teacher {t.name} has no PyTorch model: use distill.teacher_mode=cache (no augmentation)")
    if (t.mean, t.std) != (needs.mean, needs.std):
        raise FacekdError(f"teacher {t.name} normalises pixels differently from {needs.student}")
    if t.center:
        raise FacekdError(f"teacher {t.name}: centred outputs (teacher.center) need cached outputs; "
                          "use distill.teacher_mode=cache, or teacher.center=false")


@TEACHER_SOURCES.register("exported")
def exported_teacher(cfg: TeacherCfg, data, needs: TeacherNeeds, device: torch.device, say: Say = print) -> Teacher:
    """The teacher's outputs read from ``cfg.outputs`` (``eval/export_teacher_outputs.py``'s
    file), checked against the training set's crop count and labels; cached outputs only.
    ``teacher.center`` None takes what the exported teacher uses."""
    if not cfg.outputs:
        raise FacekdError("teacher.source exported: set teacher.outputs to the file eval/export_teacher_outputs.py wrote")
    if needs.mode == "online":
        raise FacekdError(f"{cfg.outputs}: exported teacher outputs are cached outputs; use distill.teacher_mode=cache")
    ex = read_exported(cfg.outputs)
    if len(ex.labels) != len(data) or not torch.equal(torch.from_numpy(data.labels), ex.labels):
        raise FacekdError(f"{cfg.outputs}: exported for {len(ex.labels)} crops with other labels; this training set has "
                          f"{len(data)} (export again from this config's data)")
    say(f"teacher outputs: exported file {cfg.outputs} {tuple(ex.embeddings.shape)}")
    teacher = CachedTeacher(ex.teacher, ex.embeddings, None, template=ex.template, cache_key=ex.key)
    if ex.center if cfg.center is None else cfg.center:
        teacher = TEACHER_VIEWS.build("centred", teacher=teacher, say=say)
    return _fitted(teacher, cfg, data, needs, device, say)


@TEACHER_SOURCES.register("ensemble")
def ensemble_teacher(cfg: TeacherCfg, data, needs: TeacherNeeds, device: torch.device, say: Say = print) -> Teacher:
    """Every member's cached embeddings of its own crops (each centred first if it
    centres), L2-normalised and concatenated (:mod:`facekd.distill.ensemble`)."""
    if not cfg.members:
        raise FacekdError("teacher.source ensemble: list the members (teacher.members)")
    parts, names = [], []
    for m in cfg.members:
        mcfg = TeacherCfg(model=m.model, weights=m.weights, crops=m.crops, center=m.center)
        t = load_teacher(mcfg, data.identities, device)
        if not m.crops and t.template != data.template:
            raise FacekdError(f"ensemble member {t.name} wants {t.template} crops, the student has {data.template}: "
                              "set the member's crops (a pack of its own crops of the same photos)")
        emb = teacher_embeddings(t, teacher_inputs(mcfg.crops, t.template, data), say=say)
        if t.center:  # each member before it is normalised and joined
            emb = center_outputs(emb, t.name, say)
        parts.append(emb.float().numpy())
        names.append(t.name)
    name = "ensemble(" + " + ".join(names) + ")"
    teacher = CachedTeacher(name, torch.from_numpy(combine(parts)).to(torch.float16), None, template=data.template)
    return _fitted(teacher, cfg, data, needs, device, say)


def source_name(cfg: TeacherCfg) -> str:
    """The registered source ``cfg`` names (``auto``: by the fields it sets)."""
    if cfg.source != "auto":
        return cfg.source
    return "ensemble" if cfg.members else "exported" if cfg.outputs else "model"


def build_teacher(cfg: TeacherCfg, data, needs: TeacherNeeds, device: torch.device, say: Say = print) -> Teacher:
    """The teacher ``cfg`` describes, from its registered source, frozen, on ``device``."""
    return TEACHER_SOURCES.build(source_name(cfg), cfg=cfg, data=data, needs=needs, device=device, say=say)


def augments(a) -> bool:
    """Whether a :class:`~facekd.train.config.AugmentCfg` changes the crops."""
    return a.flip > 0 or a.affine_p > 0 or a.color_p > 0 or a.gray_p > 0 or a.blur_p > 0


def teacher_for(cfg: DistillConfig, data, device: torch.device, say: Say = print) -> Teacher | None:
    """The teacher a distillation config asks for, built once (None when no term follows
    a teacher and teacher weighting is off)."""
    d = cfg.distill
    terms = build_terms(d.terms)
    if not needs_teacher(terms) and not d.teacher_weighting:
        return None
    pre = backbone_cfg(cfg.model.backbone).pre
    needs = TeacherNeeds(mode=d.teacher_mode, augmenting=augments(cfg.data.augment),
                         logits=uses(terms, "logits") or d.teacher_weighting, student=cfg.model.backbone,
                         template=data.template, mean=pre.mean, std=pre.std, seed=cfg.train.seed)
    teacher = build_teacher(cfg.teacher, data, needs, device, say)
    if teacher.mode == "cache" and needs.augmenting:
        say("distill: note: cached teacher outputs are of un-augmented crops while the student sees augmented ones")
    return teacher
