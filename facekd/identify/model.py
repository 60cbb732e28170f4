"""What a gallery records about its model, and the hashes and normalisation it uses.

:func:`model_from_onnx` reads an exported ONNX model into a
:class:`~facekd.identify.records.GalleryModel` (name, SHA-256 of the file,
preprocessing, embedding size, thresholds from its metadata).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from facekd.evaluation.embed import OnnxEmbedder
from facekd.onnx_metadata import (
    MODEL_META_KEY,
    PREPROCESSING_META_KEY,
    THRESHOLD_META_KEY,
    ModelInfo,
    read_metadata,
)
from facekd.errors import FacekdError
from facekd.identify.records import VERIFY, GalleryModel, ident_key
from facekd.identify.threshold import stored_ident_thresholds


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def crop_sha256(crop: np.ndarray) -> str:
    """SHA-256 of an aligned crop's uint8 pixels (what ``FaceRecord.crop_sha256`` holds)."""
    return hashlib.sha256(np.ascontiguousarray(crop, dtype=np.uint8).tobytes()).hexdigest()


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero row is an error."""
    x = np.asarray(x, dtype=np.float32)
    x = x[None, :] if x.ndim == 1 else x
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(n < 1e-12) or not np.all(np.isfinite(n)):
        raise FacekdError("an embedding is zero or not finite")
    return (x / n).astype(np.float32)


def model_from_onnx(model_path: Path | str) -> GalleryModel:
    """What a gallery records about an exported ONNX model: name, sha256, preprocessing,
    embedding size (from ``facekd.model``, else one run of the model) and thresholds."""
    path = Path(model_path)
    if not path.is_file():
        raise FacekdError(f"{path}: ONNX model not found")
    if path.suffix.lower() != ".onnx":
        raise FacekdError(f"{path}: a gallery needs an exported .onnx model (facekd export)")
    try:
        meta = read_metadata(path)
    except Exception as exc:  # onnx raises its own DecodeError types
        raise FacekdError(f"{path}: cannot read ONNX model ({exc})".split("\n")[0]) from None
    if MODEL_META_KEY in meta:
        dim = ModelInfo.from_json(meta[MODEL_META_KEY]).embedding_dim
    else:
        emb = OnnxEmbedder(path)
        h, w = emb.pre.input_size
        dim = int(emb(np.zeros((1, h, w, 3), dtype=np.uint8)).shape[1])
    pre = json.loads(meta[PREPROCESSING_META_KEY]) if PREPROCESSING_META_KEY in meta else {}
    thresholds: dict[str, float] = {}
    if THRESHOLD_META_KEY in meta:
        thresholds[VERIFY] = float(json.loads(meta[THRESHOLD_META_KEY])["threshold"])
    thresholds.update({ident_key(s): t for s, t in stored_ident_thresholds(meta).items()})
    return GalleryModel(
        name=path.name, sha256=file_sha256(path), preprocessing=pre, embedding_dim=dim,
        thresholds=thresholds, path=str(path.resolve()),
    )
