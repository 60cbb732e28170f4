"""From aligned photos to embeddings and same/different decisions with an exported model.

Photos are detected and aligned with the model's template by :mod:`facekd.align.photo`
(re-exported here: :class:`DetectorChain`, :func:`align_photo`, :func:`align_image`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.align.photo import (  # noqa: F401  (re-exported: facekd serve, identify, the CLI)
    DEFAULT_DETECTORS,
    DetectorChain,
    PhotoError,
    PhotoFace,
    align_image,
    align_photo,
)
from facekd.preprocessing import l2_normalize


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
    from facekd.onnx_metadata import THRESHOLD_META_KEY, read_metadata

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
