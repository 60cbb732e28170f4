"""Tables A-D as data, and the protocols that scale them.

- A: loss combinations on ``student5`` taught by the ResNet-27 teacher;
- B: architectures of similar size with the best loss, each also trained alone;
- C: the Tf-KD family (self-training, a designed teacher, label smoothing, a poorly
  trained teacher, a student teaching its teacher);
- D: a strong teacher, the public CASIA-WebFace MobileFaceNet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

H = {"name": "hard", "weight": 1.0}
S = {"name": "soft", "weight": 1.0, "tau": 4.0}
F_ = {"name": "feature", "weight": 1.0}
FN = {"name": "featurenorm", "weight": 10.0}  # 2 - 2cos is small; weight 10 balances it with the CE terms
BEST = [H, S, FN]


@dataclass(frozen=True)
class Row:
    """One line of a table: a student trained alone or distilled from ``teacher``.

    ``teacher`` names a prerequisite run ("teacher", "defective_teacher",
    "student5_alone") or a ready model of the protocol ("mobilefacenet", "dlib_resnet",
    "ensemble"); a protocol may map "teacher" itself to a ready model. ``seeds``: how
    many seeds the row gets when the runner is not told (``--seeds``); ``overrides`` are
    applied to this row's config after the protocol's.
    """

    table: str
    name: str
    student: str
    terms: tuple = ()
    teacher: str | None = None
    weighting: bool = False
    smoke: bool = False  # the one row per table the CPU smoke runs
    seeds: int = 1
    overrides: tuple[str, ...] = ()

    @property
    def recipe(self) -> tuple:
        """What the row trains: two rows with the same recipe are the same run."""
        return self.student, self.terms, self.teacher, self.weighting, self.overrides

    @property
    def kind(self) -> str:
        return "distill" if self.terms else "train"


def _t(*terms) -> tuple:
    return tuple(json.dumps(t, sort_keys=True) for t in terms)


TABLES: dict[str, list[Row]] = {
    "A": [
        Row("A", "Hard", "student5", _t(H), "teacher", seeds=3),
        Row("A", "Soft", "student5", _t(S), "teacher"),
        Row("A", "Feature", "student5", _t(F_), "teacher"),
        Row("A", "FeatureNorm", "student5", _t(FN), "teacher"),
        Row("A", "Hard+Soft", "student5", _t(H, S), "teacher", seeds=3),
        Row("A", "Hard+Feature", "student5", _t(H, F_), "teacher"),
        Row("A", "Hard+Soft+Feature", "student5", _t(H, S, F_), "teacher", seeds=3),
        Row("A", "Hard+Soft+FeatureNorm", "student5", _t(*BEST), "teacher", seeds=3),
        Row("A", "Hard+Soft+FeatureNorm, teacher weighting", "student5", _t(*BEST), "teacher", True, smoke=True,
            seeds=3),
    ],
    "B": [
        row
        for arch in ("student5", "resnet27_c10", "resnet37_c10", "squeezenet1_1", "mobilenet_v2", "shufflenet_v2",
                     "densenet121", "inception_resnet_v1")
        for row in (
            Row("B", f"{arch} alone", arch, smoke=arch == "student5"),
            Row("B", f"{arch} distilled", arch, _t(*BEST), "teacher", True),
        )
    ],
    "C": [
        Row("C", "self-training (student5 teaches student5)", "student5",
            _t({"name": "hard", "weight": 0.5}, {"name": "soft", "weight": 0.5, "tau": 4.0}), "student5_alone"),
        Row("C", "manually designed teacher (a = 0.99)", "student5",
            _t({"name": "hard", "weight": 0.5}, {"name": "manual_teacher", "weight": 0.5, "a": 0.99, "tau": 20.0})),
        Row("C", "label smoothing (ε = 0.1)", "student5", _t({"name": "label_smoothing", "weight": 1.0, "epsilon": 0.1}),
            smoke=True),
        Row("C", "Defective KD (teacher trained 10% of the epochs)", "student5", _t(*BEST), "defective_teacher", True),
        Row("C", "Reversed KD (student5 teaches resnet27)", "resnet27", _t(*BEST), "student5_alone", True),
    ],
    "D": [
        Row("D", "student5 from MobileFaceNet, Hard+FeatureNorm", "student5", _t(H, FN), "mobilefacenet", smoke=True),
        Row("D", "student5 from MobileFaceNet, FeatureNorm only (no labels)", "student5", _t(FN), "mobilefacenet"),
        Row("D", "student5 from dlib's ResNet, Hard+FeatureNorm", "student5", _t(H, FN), "dlib_resnet"),
        Row("D", "student5 from dlib's ResNet, FeatureNorm only (no labels)", "student5", _t(FN), "dlib_resnet"),
        Row("D", "student5 from the ensemble, Hard+FeatureNorm", "student5", _t(H, FN), "ensemble"),
        # 3 seeds for the best ready-teacher row after one seed (86.97%; the enlargement pair
        # below is a comparison of its own).
        Row("D", "student5 from the ensemble, FeatureNorm only (no labels)", "student5", _t(FN), "ensemble",
            seeds=3),
        Row("D", "student5 from MobileFaceNet, Hard+Soft+FeatureNorm, weighting", "student5", _t(*BEST),
            "mobilefacenet", True),
        Row("D", "resnet37_c10 from MobileFaceNet, Hard+FeatureNorm", "resnet37_c10", _t(H, FN), "mobilefacenet"),
        # Bucilua et al. (2006): the training set enlarged with perturbed copies that only the
        # teacher labels (the teacher sees every augmented batch), against the plain set.
        Row("D", "enlargement: FeatureNorm only on the plain set (no augmentation)", "student5", _t(FN),
            "mobilefacenet", overrides=("data.augment.flip=0", "data.augment.affine_p=0", "data.augment.color_p=0",
                                        "data.augment.gray_p=0", "distill.teacher_mode=cache")),
        Row("D", "enlargement: FeatureNorm only on perturbed copies the teacher labels", "student5", _t(FN),
            "mobilefacenet", overrides=("data.augment.flip=0.5", "data.augment.shift=0.06", "data.augment.scale=0.05",
                                        "data.augment.rotate=5.0", "data.augment.affine_p=0.8",
                                        "data.augment.color_p=0.3", "data.augment.gray_p=0.05",
                                        "distill.teacher_mode=online")),
    ],
}


@dataclass(frozen=True)
class Protocol:
    """Where configs come from and how they are scaled.

    ``teachers``: the ready teachers a row may name (row.teacher -> the config's
    ``teacher`` section); a key here wins over a prerequisite run of the same name.
    ``skip_teachers`` / ``skip_students``: rows this protocol does not run (a teacher it
    cannot train, a student too slow for it); the report marks them as another
    protocol's.

    How runs compute (``train.precision``, ``channels_last``, ``compile``, ``data.loader``)
    is ``auto`` unless the base (or ``overrides``) pins it, e.g. ``train: {precision:
    fp32}``; either way each results record says what the trainer actually ran with.
    """

    name: str
    base: str  # training config every run starts from; a row names its student (model.backbone)
    teacher: str  # the base of the ResNet-27 teacher's prerequisite runs (model.backbone: resnet27)
    smoke_only: bool = False
    shrink: dict = field(default_factory=dict)  # backbone -> backbone_args (tiny CPU models)
    overrides: tuple[str, ...] = ()  # applied to every run before the user's --set
    teachers: dict = field(default_factory=dict)
    skip_teachers: frozenset = frozenset()
    skip_students: frozenset = frozenset()
    skip_note: str = ""
    deep_teacher: str = "teacher"  # the "teachers" row the student's speed and accuracy are set against
    teacher_title: str = "ResNet-27"  # how Table A's title names the teacher
    about: str = ""  # a paragraph for the report: data, budget, teacher
    sweep: str = ""  # the recipe sweep's results file, beside the protocol's (eval/recipe_sweep.py)
    report: str = "RESULTS.md"  # the report under docs/

    def skips(self, row: Row) -> bool:
        return row.student in self.skip_students or (row.teacher in self.skip_teachers and row.teacher not in self.teachers)


# The ready teachers (pretrained on CASIA-WebFace), by name: the one list of them (a
# distillation config gets one as its ``teacher`` section, see teacher_section). crops: the
# teacher's own crops of the training photos, a pack named here and looked up in the
# runner's --packs folder.
READY_TEACHERS = {
    "mobilefacenet": {"model": "mobilefacenet", "weights": "mobilefacenet_casia"},
    "facenet_casia": {"model": "facenet_casia", "crops": "dev_train_facenet160.fkpack"},
    "dlib_resnet": {"model": "dlib_resnet", "crops": "dev_train_dlib150.fkpack"},
    "ensemble": {"members": [
        {"model": "mobilefacenet", "weights": "mobilefacenet_casia"},
        {"model": "facenet_casia", "crops": "dev_train_facenet160.fkpack"},
        {"model": "dlib_resnet", "crops": "dev_train_dlib150.fkpack"},
    ]},
}


def teacher_section(section: dict, packs: Path | None = None) -> dict:
    """A ready teacher (a value of :data:`READY_TEACHERS`) as a config's ``teacher``
    section, its crop packs looked up in ``packs`` (None: left as named, relative to
    ``data.root``)."""

    def place(member: dict) -> dict:
        if member.get("crops") and packs is not None:
            return {**member, "crops": str(packs / member["crops"])}
        return dict(member)

    out = place(section)
    if "members" in out:
        out["members"] = [place(m) for m in out["members"]]
    return out


def protocols(repo: Path) -> dict[str, Protocol]:
    return {
        "facekd-dev": Protocol("facekd-dev", str(repo / "configs/base/dev.yaml"),
                               str(repo / "configs/base/dev.yaml"), teachers=dict(READY_TEACHERS),
                               report="RESULTS-gpu.md",
                               about="The GPU protocol: every row about 40 epochs over facekd-dev on an accelerator, "
                                     "the ResNet-27 teacher trained on facekd-dev first (docs/RESULTS.md holds the CPU "
                                     "protocol's results)."),
        # The CPU protocol: FaceNet-CASIA stands in for the paper's ResNet-27 trained on
        # CASIA-WebFace; rows that need a teacher trained on facekd-dev itself, and
        # students too slow for 2 cores, stay in facekd-dev (the GPU protocol).
        "facekd-dev-cpu": Protocol(
            "facekd-dev-cpu", str(repo / "configs/base/dev_cpu.yaml"), str(repo / "configs/base/dev.yaml"),
            teachers={**READY_TEACHERS, "teacher": READY_TEACHERS["facenet_casia"]},
            skip_teachers=frozenset({"defective_teacher"}),
            skip_students=frozenset({"resnet27", "densenet121", "inception_resnet_v1"}),
            skip_note="GPU protocol only", deep_teacher="facenet_casia", sweep="recipe-sweep-cpu.jsonl",
            teacher_title="FaceNet-CASIA (Inception-ResNet-v1, 23.5 M parameters, trained on CASIA-WebFace)",
            about=("The CPU protocol: facekd-dev (celeba-10k + celeba-wild, 14,350 crops of 5,461 identities) for "
                   "training, LFW View 2 (6,000 pairs, flip-fused embeddings) for testing, every row the same short "
                   "budget (configs/base/dev_cpu.yaml). The deep teacher is FaceNet's Inception-ResNet-v1 trained on "
                   "CASIA-WebFace (the stand-in for the paper's ResNet-27 trained on CASIA-WebFace), reading its own "
                   "160x160 crops of the same photos; its classifier over the training identities is fitted on its "
                   "frozen embeddings. Rows that need a teacher trained on facekd-dev itself, and the students too "
                   "slow for 2 cores, are in the GPU protocol (facekd-dev)."),
        ),
        "smoke": Protocol("smoke", str(repo / "configs/smoke.yaml"), str(repo / "configs/smoke.yaml"), True,
                          {"student5": {"widths": [8, 16, 16, 32, 32]}, "resnet27": {"base": 4, "units": [1, 1, 1, 1]}},
                          ("data.max_identities=8", "data.max_per_identity=20", "data.workers=0"),
                          teachers={"mobilefacenet": READY_TEACHERS["mobilefacenet"]}),
    }


PREREQS = {
    "teacher": ("resnet27", 1.0),
    "defective_teacher": ("resnet27", 0.1),
    "student5_alone": ("student5", 1.0),
}
