"""The preprocessing facts of an embedder, declared once: a backbone variant carries them
(``BackboneCfg.pre``), an exported ONNX model stores them in its metadata, and every
embedder feeds and scores by them; and the two normalisations every path shares: a
crop's pixels into a network's input (:func:`to_input`) and embeddings onto the unit
sphere (:func:`l2_normalize`). No torch here: ONNX-only paths import this module."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facekd.align.template import get_template


@dataclass(frozen=True)
class Preprocessing:
    """What an embedder expects and how its authors score it.

    Attributes:
        template: Alignment template name ("112x96", "112x112", ...).
        mean, std: Pixel normalisation, ``(x - mean) / std`` on 0..255 RGB values.
        flip_fusion: How ``--flip`` combines an image's embedding with its mirror's:
            "concat" (MobileFaceNet's recipe) or "sum".
        subtract_fold_mean: Subtract the mean embedding of the 9 training folds before
            normalising (MobileFaceNet's LFW recipe).
        center_targets: As a teacher, its embeddings are centred (the training set's
            mean embedding subtracted) before a student learns them: for a model made
            for Euclidean distance, which a common offset leaves unchanged but cosines
            do not (dlib's ResNet).
    """

    template: str = "112x96"
    mean: float = 127.5
    std: float = 128.0
    flip_fusion: str = "sum"
    subtract_fold_mean: bool = False
    center_targets: bool = False

    @property
    def input_size(self) -> tuple[int, int]:
        return get_template(self.template).size


def normalize_pixels(x, mean: float, std: float):
    """Pixels on 0..255 -> a network's input, ``(x - mean) / std``: the one definition,
    for a numpy array or a torch tensor (training batches on any device) alike."""
    return (x - mean) / std


def to_input(batch: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB crops -> (N, 3, H, W) float32 network input (:func:`normalize_pixels`)."""
    x = batch.astype(np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(normalize_pixels(x, pre.mean, pre.std))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (a zero row stays zero), so cosine = dot product."""
    x = np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-by-row cosine similarity of two (N, D) arrays."""
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)
