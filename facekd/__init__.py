"""facekd: compress face-recognition models by knowledge distillation.

The Python API (:mod:`facekd.api`)::

    import facekd

    model = facekd.load("student5_mobilefacenet_casia")
    emb = model.embed(["a.jpg", "b.jpg"])     # (2, D), L2-normalised
    v = model.verify("a.jpg", "b.jpg")        # v.same, v.similarity, v.threshold
    face = facekd.align("a.jpg")              # face.crop, face.landmarks

Importing the package does no work: the API is imported on first use (it brings ONNX
Runtime and OpenCV, and torch for a PyTorch model). The command line is ``facekd``
(``facekd.cli``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["__version__", "align", "Model", "PhotoFace", "Verification", "load"]
_API = tuple(__all__[2:])  # from facekd.api

if TYPE_CHECKING:
    from facekd import align
    from facekd.api import Model, PhotoFace, Verification, load


def __getattr__(name: str):
    # PEP 562: facekd.load and the rest come from facekd.api on first use, so that
    # `import facekd` (and the CLI's start) does not pay for ONNX Runtime, OpenCV or torch.
    # facekd.align is the facekd.align package, callable (see its __init__).
    if name == "align":
        return importlib.import_module("facekd.align")
    if name in _API:
        return getattr(importlib.import_module("facekd.api"), name)
    raise AttributeError(f"module 'facekd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "align", *_API])
