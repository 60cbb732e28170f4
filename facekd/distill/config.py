"""The schema of a distillation config (``facekd distill CONFIG``): a training config
plus the teacher and the loss terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from facekd.config import at_least
from facekd.distill.losses import CAFFE_MIN_CE, TermCfg
from facekd.train.config import TrainConfig


@dataclass(frozen=True)
class TeacherMember:
    """One teacher of an ensemble (see :class:`TeacherCfg`)."""

    model: str = ""
    weights: str | None = None
    crops: str | None = None
    center: bool | None = None


@dataclass(frozen=True)
class TeacherCfg:
    """Who teaches.

    ``model`` is a facekd checkpoint (``RUN/checkpoints/last.pt``), a registered backbone
    name with ``weights``, or an ``.onnx`` embedder. A teacher without a classifier over
    the student's training identities (an embedder, or a checkpoint trained on other
    identities) gets one fitted on its frozen embeddings first (``classifier_epochs``),
    so soft terms and teacher weighting still apply.

    ``crops``: a pack (or aligned folder) of the teacher's own crops of the training
    photos, under the same relative names (``eval/teacher_crops.py`` + ``facekd pack``),
    for a teacher whose geometry differs from the student's (FaceNet's 160x160, dlib's
    chip); it then teaches through cached outputs.

    ``members``: an ensemble instead of ``model``: each member's L2-normalised embeddings
    (of its own crops) concatenated, a classifier fitted on the concatenation
    (:mod:`facekd.distill.ensemble`); cached outputs only.

    ``center``: subtract the training set's mean teacher embedding before the terms use
    it (cached outputs only); None takes the model's own default
    (``Preprocessing.center_targets``: on for dlib's ResNet, off for the others).

    ``outputs``: a file of the teacher's outputs over this config's training crops,
    exported where the teacher runs (``eval/export_teacher_outputs.py``); the teacher
    then never runs (cached outputs only; ``model``, ``weights`` and ``crops`` are not
    read), for a machine that lacks its weights or its crops.

    ``source``: the registered teacher source that builds the teacher
    (:data:`facekd.distill.teacher_sources.TEACHER_SOURCES`: ``model``, ``exported``,
    ``ensemble``); ``auto`` picks ``ensemble`` when ``members`` is set, ``exported`` when
    ``outputs`` is, else ``model``.
    """

    source: str = "auto"
    model: str = ""
    weights: str | None = None
    crops: str | None = None
    center: bool | None = None
    members: list[TeacherMember] = field(default_factory=list)
    outputs: str | None = None
    classifier: str = "cosface"  # head fitted on frozen embeddings when the teacher has none
    classifier_args: dict = field(default_factory=lambda: {"scale": 64.0, "margin": 0.35})
    classifier_epochs: int = field(default=10, metadata=at_least(0))


@dataclass(frozen=True)
class DistillCfg:
    """The loss: ``L = Σ terms``, each a :class:`TermCfg` (``{name, weight, ...}``) from DISTILL_LOSSES;
    teacher terms scaled per sample by μ when ``teacher_weighting`` is on (Wang et al., ICIP 2018, section 3.2)."""

    terms: list[TermCfg] = field(
        default_factory=lambda: [
            TermCfg(name="hard", weight=1.0),
            TermCfg(name="soft", weight=1.0, tau=4.0),
            TermCfg(name="featurenorm", weight=1.0),
        ]
    )
    teacher_weighting: bool = False
    k: float = -0.5
    min_ce: float = CAFFE_MIN_CE
    # cache: teacher outputs for the un-augmented crops, computed once and reused;
    # online: the teacher sees each augmented batch; auto: cache when augmentation is off.
    teacher_mode: Literal["auto", "cache", "online"] = "auto"
    # How embedding terms meet a teacher of another width. learned: a linear layer on the
    # student (FitNets); lift: the narrower teacher's embedding times fixed orthonormal
    # columns (cosine-preserving, nothing learned on the teacher side; a wider teacher
    # still gets the learned layer). The CPU recipe sweep could not tell them apart
    # (MobileFaceNet teaching student5 for one epoch: lift 79.03%, learned 78.65% on LFW,
    # fold std 1.2-2.0); lift is the default as it has nothing to fit.
    adapter: Literal["learned", "lift"] = "lift"
    # Mixup for function matching (Beyer et al., CVPR 2022): each training image blended
    # with another of its batch at a weight drawn from Beta(mixup, mixup), and the online
    # teacher shown the same blend. 0: off. Label-free terms only (a blend has no label).
    mixup: float = field(default=0.0, metadata=at_least(0))


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """A whole ``facekd distill`` run: ``model`` is the student."""

    teacher: TeacherCfg = field(default_factory=TeacherCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)
