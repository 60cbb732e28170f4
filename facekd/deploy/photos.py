"""From photos to embeddings and same/different decisions with an exported ONNX model.

Each photo is detected and aligned with the template stored in the model, exactly as
``facekd align`` does it, by a chain of detectors tried in order (default: YuNet, the
fast one, then MTCNN for a photo where YuNet finds no face); the result names the
detector that found the face. One difference from ``align``: a photo where no detector
finds a face is an error here (``align`` falls back to the central box, which suits a
dataset, not a decision about one photo). With several faces, the most central large
one is used (``select_central_face``, the rule ``align`` follows) and the result says
how many faces there were.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.align.detector import (
    DETECTORS,
    FaceDetector,
    build_detector,
    select_central_face,
)
from facekd.align.template import get_template, warp_to_template
from facekd.data.image_io import UnreadableImage, read_rgb
from facekd.errors import FacekdError
from facekd.preprocessing import l2_normalize

# YuNet first (milliseconds); MTCNN only for the photos where YuNet finds no face.
DEFAULT_DETECTORS = ("yunet", "mtcnn")


class PhotoError(FacekdError):
    """A photo that cannot be used: unreadable, or without a face. Names the photo."""

    def __init__(self, photo: Path | str, reason: str) -> None:
        super().__init__(f"{photo}: {reason}")
        self.photo = str(photo)
        self.reason = reason


@dataclass(frozen=True)
class PhotoFace:
    """The face used from one photo."""

    photo: str
    crop: np.ndarray  # H x W x 3 uint8, aligned to the model's template
    faces: int  # faces detected (the most central one is used)
    score: float  # the detector's score of the face used
    detector: str  # the detector that found it
    landmarks: np.ndarray | None = None  # (5, 2) x, y in the photo (eyes, nose tip, mouth corners)


class DetectorChain:
    """Detectors tried in order for each photo; each is built on first use, so a run
    where YuNet finds every face never loads MTCNN (nor torch).

    Args:
        detectors: Registered detector names, e.g. ``("yunet", "mtcnn")``, or detectors
            already built.
        device: Device for detectors that use one (MTCNN).
    """

    def __init__(self, detectors: Sequence[str | FaceDetector] = DEFAULT_DETECTORS, device: str = "cpu") -> None:
        if not detectors:
            raise FacekdError("name at least one face detector")
        self._built: dict[str, FaceDetector] = {}
        for d in detectors:
            if isinstance(d, FaceDetector):
                self._built[d.name] = d
            else:
                DETECTORS.get(d)  # an unknown name fails now, listing the known ones
        self.names = tuple(d.name if isinstance(d, FaceDetector) else d for d in detectors)
        self.device = device

    @classmethod
    def parse(cls, spec: str, device: str = "cpu") -> DetectorChain:
        """From a command-line value: ``"yunet,mtcnn"``, ``"mtcnn"``."""
        return cls([n.strip() for n in spec.split(",") if n.strip()], device=device)

    def get(self, name: str) -> FaceDetector:
        if name not in self._built:
            self._built[name] = build_detector(name, device=self.device)
        return self._built[name]


def align_photo(path: Path | str, detectors: DetectorChain, template: str) -> PhotoFace:
    """Reads, detects and aligns one photo with the first detector that finds a face.

    Raises:
        PhotoError: The file is missing or not an image, or no detector finds a face
            scoring at least its ``min_score``.
    """
    path = Path(path)
    if not path.is_file():
        raise PhotoError(path, "no such file")
    try:
        image = read_rgb(path)
    except UnreadableImage as exc:
        raise PhotoError(path, f"unreadable ({exc})") from None
    except OSError as exc:
        raise PhotoError(path, f"cannot read file ({exc.strerror or exc})") from None
    return align_image(image, path, detectors, template)


def align_image(image: np.ndarray, photo: Path | str, detectors: DetectorChain, template: str) -> PhotoFace:
    """Like :func:`align_photo` for a photo already decoded (HxWx3 uint8 RGB), e.g. an
    upload; ``photo`` names it in the result and in errors.

    Raises:
        PhotoError: No detector finds a face scoring at least its ``min_score``.
    """
    for name in detectors.names:
        detector = detectors.get(name)
        faces = detector.faces(image)
        if faces:
            face = select_central_face(faces, *image.shape[:2])
            crop = warp_to_template(image, face.landmarks, get_template(template))
            return PhotoFace(
                photo=str(photo), crop=crop, faces=len(faces), score=float(face.score), detector=detector.name,
                landmarks=np.asarray(face.landmarks, np.float32),
            )
    raise PhotoError(photo, f"no face found (tried {', '.join(detectors.names)})")


def embed_faces(embedder, faces: list[PhotoFace]) -> np.ndarray:
    """(N, D) L2-normalised embeddings of aligned faces (cosine = dot product)."""
    return l2_normalize(embedder(np.stack([f.crop for f in faces])).astype(np.float32))


@dataclass(frozen=True)
class Verification:
    """Whether two photos show the same person."""

    similarity: float
    threshold: float
    same: bool
    faces: tuple[int, int]
    detectors: tuple[str, str]  # which detector found each photo's face

    def to_dict(self) -> dict:
        return {
            "similarity": self.similarity,
            "threshold": self.threshold,
            "same": self.same,
            "faces": list(self.faces),
            "detectors": list(self.detectors),
        }


def stored_threshold(model_path: Path | str) -> float | None:
    """The verification threshold stored in an exported model, if any."""
    from facekd.deploy.metadata import THRESHOLD_META_KEY, read_metadata

    meta = read_metadata(model_path)
    if THRESHOLD_META_KEY not in meta:
        return None
    return float(json.loads(meta[THRESHOLD_META_KEY])["threshold"])


def verify_photos(embedder, a: PhotoFace, b: PhotoFace, threshold: float) -> Verification:
    """Cosine similarity of the two faces and the decision ``similarity >= threshold``."""
    emb = embed_faces(embedder, [a, b])
    sim = float(np.dot(emb[0], emb[1]))
    return Verification(
        similarity=sim, threshold=float(threshold), same=sim >= threshold, faces=(a.faces, b.faces),
        detectors=(a.detector, b.detector),
    )
