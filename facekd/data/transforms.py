"""What augmentation a training run applies (:class:`AugmentCfg`).

The one implementation is :func:`facekd.data.gpu_augment.augment_batch`, which every
loader (:mod:`facekd.train.loaders`) calls on its batches; normalisation is
:func:`facekd.preprocessing.normalize_pixels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from facekd.config import Range, fraction, in_range


@dataclass(frozen=True)
class AugmentCfg:
    """Augmentation for aligned face crops: mild, since alignment already fixed geometry."""

    flip: float = field(default=0.5, metadata=fraction())  # probability of a horizontal flip
    shift: float = field(default=0.05, metadata=fraction())  # max translation, fraction of the crop size
    scale: float = field(default=0.05, metadata=fraction(high_open=True))  # max relative zoom
    rotate: float = field(default=5.0, metadata=in_range(Range(0, 180)))  # max degrees
    affine_p: float = field(default=0.5, metadata=fraction())
    color: float = field(default=0.2, metadata=fraction())  # brightness / contrast / saturation jitter
    color_p: float = field(default=0.3, metadata=fraction())
    blur_p: float = field(default=0.0, metadata=fraction())
    gray_p: float = field(default=0.05, metadata=fraction())
