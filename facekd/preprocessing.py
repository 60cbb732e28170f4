"""The preprocessing facts of an embedder, declared once: a backbone variant carries them
(``BackboneCfg.pre``), an exported ONNX model stores them in its metadata, and every
embedder feeds and scores by them. No torch here: ONNX-only paths import this module."""

from __future__ import annotations

from dataclasses import dataclass

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
