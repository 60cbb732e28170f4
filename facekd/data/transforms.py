"""Training and evaluation transforms (albumentations), from a backbone's preprocessing."""

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


def _normalize(mean: float, std: float):
    import albumentations as A

    # albumentations computes (x - mean * max) / (std * max); with max = 255 this is
    # (x - mean_px) / std_px on 0..255 values.
    return A.Normalize(mean=(mean / 255.0,) * 3, std=(std / 255.0,) * 3, max_pixel_value=255.0)


class _Pipeline:
    """Picklable wrapper (DataLoader workers) turning ``A.Compose`` into ``f(img) -> tensor``."""

    def __init__(self, compose) -> None:
        self.compose = compose

    def __call__(self, img):
        return self.compose(image=img)["image"]


def train_transform(mean: float = 127.5, std: float = 128.0, cfg: AugmentCfg = AugmentCfg()):
    """HxWx3 uint8 RGB -> normalised float tensor (3, H, W), augmented."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    ops = [A.HorizontalFlip(p=cfg.flip)]
    if cfg.affine_p > 0:
        ops.append(
            A.Affine(
                translate_percent=(-cfg.shift, cfg.shift),
                scale=(1 - cfg.scale, 1 + cfg.scale),
                rotate=(-cfg.rotate, cfg.rotate),
                p=cfg.affine_p,
            )
        )
    if cfg.color_p > 0:
        ops.append(A.ColorJitter(brightness=cfg.color, contrast=cfg.color, saturation=cfg.color, hue=0.0, p=cfg.color_p))
    if cfg.blur_p > 0:
        ops.append(A.GaussianBlur(blur_limit=(3, 5), p=cfg.blur_p))
    if cfg.gray_p > 0:
        ops.append(A.ToGray(p=cfg.gray_p))
    return _Pipeline(A.Compose([*ops, _normalize(mean, std), ToTensorV2()]))


def eval_transform(mean: float = 127.5, std: float = 128.0):
    """HxWx3 uint8 RGB -> normalised float tensor (3, H, W), no augmentation."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    return _Pipeline(A.Compose([_normalize(mean, std), ToTensorV2()]))
