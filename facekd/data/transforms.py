"""What augmentation a training run applies (:class:`AugmentCfg`).

The one implementation is :func:`facekd.data.gpu_augment.augment_batch`, which every
loader (:mod:`facekd.train.loaders`) calls on its batches; normalisation is
:func:`facekd.preprocessing.normalize_pixels`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentCfg:
    """Augmentation for aligned face crops: mild, since alignment already fixed geometry."""

    flip: float = 0.5  # probability of a horizontal flip
    shift: float = 0.05  # max translation, fraction of the crop size
    scale: float = 0.05  # max relative zoom
    rotate: float = 5.0  # max degrees
    affine_p: float = 0.5
    color: float = 0.2  # brightness / contrast / saturation jitter
    color_p: float = 0.3
    blur_p: float = 0.0
    gray_p: float = 0.05
