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
    "student5_alone") or the public model ("mobilefacenet").
    """

    table: str
    name: str
    student: str
    terms: tuple = ()
    teacher: str | None = None
    weighting: bool = False
    smoke: bool = False  # the one row per table the CPU smoke runs

    @property
    def kind(self) -> str:
        return "distill" if self.terms else "train"


def _t(*terms) -> tuple:
    return tuple(json.dumps(t, sort_keys=True) for t in terms)


TABLES: dict[str, list[Row]] = {
    "A": [
        Row("A", "Hard", "student5", _t(H), "teacher"),
        Row("A", "Soft", "student5", _t(S), "teacher"),
        Row("A", "Feature", "student5", _t(F_), "teacher"),
        Row("A", "FeatureNorm", "student5", _t(FN), "teacher"),
        Row("A", "Hard+Soft", "student5", _t(H, S), "teacher"),
        Row("A", "Hard+Feature", "student5", _t(H, F_), "teacher"),
        Row("A", "Hard+Soft+Feature", "student5", _t(H, S, F_), "teacher"),
        Row("A", "Hard+Soft+FeatureNorm", "student5", _t(*BEST), "teacher"),
        Row("A", "Hard+Soft+FeatureNorm, teacher weighting", "student5", _t(*BEST), "teacher", True, smoke=True),
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
        Row("D", "student5, Hard+FeatureNorm", "student5", _t(H, FN), "mobilefacenet", smoke=True),
        Row("D", "student5, Hard+Soft+FeatureNorm, weighting", "student5", _t(*BEST), "mobilefacenet", True),
        Row("D", "student5, FeatureNorm only (no labels)", "student5", _t(FN), "mobilefacenet"),
        Row("D", "resnet37_c10, Hard+FeatureNorm", "resnet37_c10", _t(H, FN), "mobilefacenet"),
    ],
}


@dataclass(frozen=True)
class Protocol:
    """Where configs come from and how they are scaled."""

    name: str
    base: str  # training config every run starts from
    teacher: str  # config of the ResNet-27 teacher
    smoke_only: bool = False
    shrink: dict = field(default_factory=dict)  # backbone -> backbone_args (tiny CPU models)
    overrides: tuple[str, ...] = ()  # applied to every run before the user's --set


def protocols(repo: Path) -> dict[str, Protocol]:
    return {
        "facekd-dev": Protocol("facekd-dev", str(repo / "configs/base/dev.yaml"),
                               str(repo / "configs/teacher/resnet27_dev.yaml")),
        "smoke": Protocol("smoke", str(repo / "configs/smoke.yaml"), str(repo / "configs/smoke.yaml"), True,
                          {"student5": {"widths": [8, 16, 16, 32, 32]}, "resnet27": {"base": 4, "units": [1, 1, 1, 1]}},
                          ("data.max_identities=8", "data.max_per_identity=20", "data.workers=0")),
    }


PREREQS = {
    "teacher": ("resnet27", 1.0),
    "defective_teacher": ("resnet27", 0.1),
    "student5_alone": ("student5", 1.0),
}
PUBLIC_TEACHERS = {"mobilefacenet": ("mobilefacenet", "mobilefacenet_casia")}
