"""dlib's face-recognition ResNet (29 conv layers, 128-d; published 99.38% on LFW) as an
embedder teacher, from the ``face-recognition-models`` package run by dlib's bindings
(the ``dlib-bin`` wheel): ``pip install 'facekd[dlib]'``.

Its input is dlib's own 150x150 chip (``facekd.teachers.crops.DLIB_150``: dlib's 5-point
landmarks inside facekd's detection, then ``dlib.get_face_chip``). The network is not a
PyTorch module: it teaches through its cached embeddings.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from facekd.errors import FacekdError
from facekd.weights import package_file
from facekd.preprocessing import Preprocessing

WEIGHTS = "dlib_resnet_v1"
SHAPE_PREDICTOR = "dlib_shape_predictor_5"
EXTRA = "dlib"
# dlib compares descriptors by Euclidean distance (same person below 0.6), so they may
# share a common offset, and do: over facekd-dev's 14,300 crops the mean of the unit
# descriptors has norm 0.915 and random pairs have cosine 0.84 (MobileFaceNet: 0.09 and
# 0.01). A cosine loss against them is mostly met by that one direction (student5 from
# dlib, Hard+FeatureNorm, 2 CPU epochs: 62.5% LFW, below Hard alone), hence center_targets.
PREPROCESSING = Preprocessing(template="dlib150", mean=0.0, std=1.0, flip_fusion="sum", subtract_fold_mean=False,
                              center_targets=True)


def import_dlib():
    """dlib's bindings, or an error naming the extra that installs them."""
    try:
        import dlib
    except ImportError:
        raise FacekdError(f"dlib is not installed: pip install 'facekd[{EXTRA}]' (the dlib-bin wheel)") from None
    return dlib


def model_path() -> Path:
    """The verified ``dlib_face_recognition_resnet_model_v1.dat``."""
    return package_file(WEIGHTS)


def shape_predictor_path() -> Path:
    """The verified ``shape_predictor_5_face_landmarks.dat``."""
    return package_file(SHAPE_PREDICTOR)


class DlibEmbedder:
    """Embeds 150x150 dlib chips (uint8 RGB) with dlib's ResNet; 128-d, not normalised.

    dlib runs a batch on its own threads, so calls are not run concurrently.
    """

    def __init__(self, path: Path | None = None) -> None:
        dlib = import_dlib()
        path = path or model_path()
        try:
            self._net = dlib.face_recognition_model_v1(str(path))
        except RuntimeError as exc:
            raise FacekdError(f"{path}: dlib cannot load it ({exc})".split("\n")[0]) from None
        self.name = "dlib_resnet"
        self.pre = PREPROCESSING
        self.batch_size = 16
        self.concurrency = 1

    @contextlib.contextmanager
    def session(self):
        yield

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[1:3] != (150, 150):
            raise FacekdError(f"dlib's ResNet takes 150x150 chips, got {batch.shape[2]}x{batch.shape[1]}")
        chips = [np.ascontiguousarray(c) for c in batch]
        return np.asarray(self._net.compute_face_descriptor(chips), dtype=np.float32).reshape(len(chips), -1)
