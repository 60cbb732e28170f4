"""From photos to embeddings and same/different decisions with an exported ONNX model.

Each photo is detected with MTCNN and aligned with the template stored in the model,
exactly as ``facekd align`` does it, with one difference: a photo without a face is an
error here (``align`` falls back to the central box, which suits a dataset, not a
decision about one photo). With several faces, the most central large one is used
(``select_central_face``, the rule ``align`` follows) and the result says how many
faces there were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.errors import FacekdError


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
    score: float  # MTCNN score of the face used


def align_photo(path: Path | str, detector, template: str) -> PhotoFace:
    """Reads, detects and aligns one photo.

    Raises:
        PhotoError: The file is missing or not an image, or no face scores at least
            ``facekd.align.aligner.MIN_SCORE``.
    """
    from facekd.align.aligner import MIN_SCORE
    from facekd.align.detector import select_central_face
    from facekd.align.template import get_template, warp_to_template
    from facekd.data.image_io import UnreadableImage, read_rgb

    path = Path(path)
    if not path.is_file():
        raise PhotoError(path, "no such file")
    try:
        image = read_rgb(path)
    except UnreadableImage as exc:
        raise PhotoError(path, f"unreadable ({exc})") from None
    except OSError as exc:
        raise PhotoError(path, f"cannot read file ({exc.strerror or exc})") from None
    faces = [d for d in detector.detect(image) if d.score >= MIN_SCORE]
    if not faces:
        raise PhotoError(path, "no face found")
    face = select_central_face(faces, *image.shape[:2])
    crop = warp_to_template(image, face.landmarks, get_template(template))
    return PhotoFace(photo=str(path), crop=crop, faces=len(faces), score=float(face.score))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_faces(embedder, faces: list[PhotoFace]) -> np.ndarray:
    """(N, D) L2-normalised embeddings of aligned faces (cosine = dot product)."""
    return normalize_rows(embedder(np.stack([f.crop for f in faces])).astype(np.float32))


@dataclass(frozen=True)
class Verification:
    """Whether two photos show the same person."""

    similarity: float
    threshold: float
    same: bool
    faces: tuple[int, int]

    def to_dict(self) -> dict:
        return {
            "similarity": self.similarity,
            "threshold": self.threshold,
            "same": self.same,
            "faces": list(self.faces),
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
    return Verification(similarity=sim, threshold=float(threshold), same=sim >= threshold, faces=(a.faces, b.faces))
