"""Student face detectors: single-shot, anchor-free, YuNet's layout at a chosen width.

A backbone of depthwise-separable units (1x1 conv, then depthwise 3x3, BN, ReLU) with max
pooling to strides 8, 16 and 32; a top-down neck that adds each coarser level, upsampled,
to the finer one; per stride four heads (1x1 conv, depthwise 3x3) giving the maps of
``facekd.align.grid``. The input is RGB, 0-255, NCHW, height and width divisible by 32.

``DETECTOR_NETS`` holds the sizes: ``fkdet_s`` (14,168 parameters) and ``fkdet_m``
(44,848), against the 53,104 of YuNet's 2023mar file, and ``yunet``: YuNet's own network
(``facekd.detect.yunet_net``), which can start from YuNet's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from facekd.align.grid import HEADS, STRIDES
from facekd.registry import Registry


@dataclass(frozen=True)
class DetectorWidths:
    """Channels: stem (stride 2), stride 4, 8, 16, 32, and the neck and heads."""

    stem: int
    s4: int
    s8: int
    s16: int
    s32: int
    neck: int


class DPUnit(nn.Sequential):
    """1x1 conv, depthwise 3x3 conv, batch norm, ReLU (YuNet's unit)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Head(nn.Sequential):
    """1x1 conv to the map's channels, then a depthwise 3x3."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 1), nn.Conv2d(cout, cout, 3, padding=1, groups=cout))


class FaceDetectorNet(nn.Module):
    """A single-shot face detector (see the module docstring).

    Args:
        widths: Channels per level.
    """

    def __init__(self, widths: DetectorWidths) -> None:
        super().__init__()
        w = widths
        self.widths = w
        self.stem = nn.Sequential(
            nn.Conv2d(3, w.stem, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w.stem), nn.ReLU(inplace=True),
            DPUnit(w.stem, w.stem),
        )
        self.stage4 = nn.Sequential(nn.MaxPool2d(2), DPUnit(w.stem, w.s4), DPUnit(w.s4, w.s4))
        self.stage8 = nn.Sequential(nn.MaxPool2d(2), DPUnit(w.s4, w.s8), DPUnit(w.s8, w.s8))
        self.stage16 = nn.Sequential(nn.MaxPool2d(2), DPUnit(w.s8, w.s16), DPUnit(w.s16, w.s16))
        self.stage32 = nn.Sequential(nn.MaxPool2d(2), DPUnit(w.s16, w.s32), DPUnit(w.s32, w.s32))
        self.lat = nn.ModuleList([nn.Conv2d(c, w.neck, 1, bias=False) for c in (w.s8, w.s16, w.s32)])
        self.fuse = nn.ModuleList([DPUnit(w.neck, w.neck) for _ in STRIDES])
        self.heads = nn.ModuleDict({k: nn.ModuleList([Head(w.neck, c) for _ in STRIDES]) for k, c in HEADS.items()})
        self.neck_channels = w.neck

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The neck's outputs at strides 8, 16, 32 (the stride-8 one is the hint's guided layer)."""
        x = (x - 127.5) / 128.0
        c4 = self.stage4(self.stem(x))
        c8 = self.stage8(c4)
        c16 = self.stage16(c8)
        c32 = self.stage32(c16)
        p32 = self.fuse[2](self.lat[2](c32))
        p16 = self.fuse[1](self.lat[1](c16) + F.interpolate(p32, scale_factor=2.0, mode="nearest"))
        p8 = self.fuse[0](self.lat[0](c8) + F.interpolate(p16, scale_factor=2.0, mode="nearest"))
        return [p8, p16, p32]

    def maps(self, feats: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        return {k: [head(f) for head, f in zip(heads, feats)] for k, heads in self.heads.items()}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The 12 maps, ordered cls, obj, bbox, kps, each at strides 8, 16, 32 (the ONNX
        outputs ``cls_8`` ... ``kps_32``)."""
        m = self.maps(self.features(x))
        return tuple(t for k in HEADS for t in m[k])


def output_names() -> list[str]:
    return [f"{k}_{s}" for k in HEADS for s in STRIDES]


DETECTOR_NETS: Registry[FaceDetectorNet] = Registry("detector network")
SIZES = {
    "fkdet_s": DetectorWidths(stem=8, s4=16, s8=24, s16=32, s32=32, neck=24),
    "fkdet_m": DetectorWidths(stem=16, s4=24, s8=48, s16=64, s32=64, neck=48),
}


@DETECTOR_NETS.register("fkdet_s")
def _fkdet_s() -> FaceDetectorNet:
    return FaceDetectorNet(SIZES["fkdet_s"])


@DETECTOR_NETS.register("fkdet_m")
def _fkdet_m() -> FaceDetectorNet:
    return FaceDetectorNet(SIZES["fkdet_m"])


@DETECTOR_NETS.register("yunet")
def _yunet() -> torch.nn.Module:
    """YuNet's own network (facekd.detect.yunet_net): with ``init: yunet`` a student
    starts from YuNet's weights."""
    from facekd.detect.yunet_net import YunetNet

    return YunetNet()
