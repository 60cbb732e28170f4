"""The typed records a gallery stores and answers with.

Every gallery backend (:class:`~facekd.identify.store.SqliteStore`, a PostgreSQL one)
reads and writes these, and :class:`~facekd.identify.gallery.Gallery` answers with
them; the CLI and the HTTP server turn them into JSON with ``to_dict``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from facekd.errors import FacekdError

# Keys of GalleryModel.thresholds: the verify threshold and one open-set threshold per
# scoring rule (see facekd.identify.threshold).
VERIFY = "verify"
SCORINGS = ("best", "mean")


class NotInGallery(FacekdError):
    """An unknown person or face id (or person name). ``kind`` is "person" or "face";
    ``key`` the id or name asked for. The HTTP server answers it with 404."""

    def __init__(self, kind: str, key: int | str, gallery: str = "") -> None:
        where = f"{gallery}: " if gallery else ""
        super().__init__(f"{where}no {kind} {key!r} in the gallery")
        self.kind = kind
        self.key = key


class ModelMismatch(FacekdError):
    """A probe or enrolment embedded by another model than the gallery's (a different
    ONNX file, or a different embedding size). The HTTP server answers it with 409."""


def ident_key(scoring: str) -> str:
    """The ``GalleryModel.thresholds`` key of the open-set threshold for ``scoring``."""
    return f"identify.{scoring}"


@dataclass(frozen=True)
class GalleryModel:
    """The embedding model a gallery was built with; fixed when the gallery is created.

    Attributes:
        name: The model's file name (e.g. ``student5_mobilefacenet_casia.onnx``).
        sha256: SHA-256 of the ONNX file, hex. A probe from any other file is refused.
        preprocessing: The model's :class:`~facekd.preprocessing.Preprocessing` fields
            (template, mean, std, ...), as stored in its ONNX metadata.
        embedding_dim: Length of one embedding.
        thresholds: Cosine thresholds copied from the model at creation: ``"verify"``
            (same/different, ``facekd threshold``) and ``"identify.best"`` /
            ``"identify.mean"`` (open-set "unknown" cut per scoring rule); a missing key
            means the model had none.
        path: Where the ONNX file was when the gallery was created (a hint for loading
            the embedder again; the sha256 is what is checked).
    """

    name: str
    sha256: str
    preprocessing: dict[str, Any]
    embedding_dim: int
    thresholds: dict[str, float] = field(default_factory=dict)
    path: str | None = None

    def ident_threshold(self, scoring: str = "best") -> float | None:
        """The open-set threshold stored for ``scoring`` ("best" or "mean"), or None."""
        return self.thresholds.get(ident_key(scoring))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Person:
    """An enrolled person. ``faces`` is the number of faces stored for them."""

    id: int
    name: str
    faces: int = 0
    created: str = ""  # ISO 8601 UTC

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FaceRecord:
    """One enrolled face (its embedding is stored beside it, not held here).

    Before it is stored, ``id`` and ``person_id`` may be None: ``add_faces`` fills them.

    Attributes:
        source: The photo the face came from (as given at enrolment), or a label such as
            ``"synthetic:17"`` for an embedding enrolled directly.
        detector: The detector that found the face ("yunet", "mtcnn"; "" if none).
        crop_sha256: SHA-256 of the aligned crop's pixels (uint8 HxWx3 bytes), hex;
            "" when enrolled from an embedding.
    """

    source: str
    detector: str = ""
    crop_sha256: str = ""
    id: int | None = None
    person_id: int | None = None
    created: str = ""  # ISO 8601 UTC, set by the store

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Match:
    """One candidate in a search result.

    Attributes:
        person_id, name: The person.
        score: Cosine similarity of the probe to the person: their best face's (scoring
            "best") or their L2-normalised mean template's (scoring "mean").
        face_id: The face that scored (scoring "best"); None for "mean".
    """

    person_id: int
    name: str
    score: float
    face_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Identification:
    """The answer to "who is this?" for one probe.

    Attributes:
        identity: The top match when its score reaches ``threshold``; None means
            "unknown" (nobody enrolled, or the best score is below the threshold).
        score: The top match's score (-1.0 for an empty gallery).
        threshold: The cosine cut used; None when none was stored or given, in which
            case the top match is returned as the identity.
        scoring: "best" (a person's best face) or "mean" (their mean template).
        matches: The top-k people, best first (as many as the gallery holds, up to k).
    """

    identity: Match | None
    score: float
    threshold: float | None
    scoring: str
    matches: list[Match]

    @property
    def name(self) -> str | None:
        """The identified person's name, or None for unknown."""
        return self.identity.name if self.identity else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.name,
            "person_id": self.identity.person_id if self.identity else None,
            "score": self.score,
            "threshold": self.threshold,
            "scoring": self.scoring,
            "matches": [m.to_dict() for m in self.matches],
        }


@dataclass(frozen=True)
class Enrolment:
    """What one ``Gallery.enroll`` call stored and what it could not use.

    Attributes:
        person: The person (created or existing), with the face count after enrolment.
        face_ids: The faces stored, in the order of the photos that were usable.
        faces: Their records.
        errors: ``(photo, reason)`` for every photo that was unreadable or had no face;
            nothing is stored for those.
    """

    person: Person
    face_ids: list[int]
    faces: list[FaceRecord]
    errors: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "person": self.person.to_dict(),
            "face_ids": list(self.face_ids),
            "faces": [f.to_dict() for f in self.faces],
            "errors": [{"photo": p, "reason": r} for p, r in self.errors],
        }
