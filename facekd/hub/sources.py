"""The ready teachers that are not a facekd backbone with a weights file, as model
sources of the hub (:data:`facekd.hub.resolved.MODEL_SOURCES`): ``--model dlib_resnet``."""

from __future__ import annotations

from pathlib import Path

from facekd.hub.resolved import MODEL_SOURCES, ResolvedModel
from facekd.teachers.dlib_resnet import PREPROCESSING, DlibEmbedder, model_path


@MODEL_SOURCES.register("dlib_resnet")
def dlib_resnet(weights: str | Path | None = None, allow_download: bool = True) -> ResolvedModel:
    """dlib's face-recognition ResNet (29 conv layers, 128-d) on 150x150 dlib chips (dlib150); facekd[dlib]."""
    path = Path(weights) if weights else model_path()
    probe = DlibEmbedder(path)  # fails now, naming the extra or the file, if it cannot load
    return ResolvedModel("dlib_resnet", PREPROCESSING, path=path, embedder_factory=lambda device: probe)
