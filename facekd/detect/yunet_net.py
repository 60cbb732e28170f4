"""YuNet's own network in PyTorch, so that a student detector can start from YuNet's
weights (compression from the strong end, as for the embedders) instead of from random
ones.

The layout is read off ``yunet_2023mar.onnx`` (53,104 parameters, batch norm already
folded into the convolutions): a 3x3 stride-2 stem and depthwise-separable units
(1x1 conv, depthwise 3x3, ReLU; every conv with a bias), four units at stride 4 and two
at each of strides 8, 16 and 32, then a top-down neck (a unit at stride 32; the coarser
output upsampled and added to the backbone's stride-16 and stride-8 outputs, a unit
after each add) and per stride the four heads of ``facekd.align.grid``.
:func:`load_yunet_weights` copies the ONNX file's convolutions into it, the stem's input
channels reversed: YuNet reads BGR, facekd's detectors read RGB (0-255, not normalised).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from facekd.align.grid import HEADS, STRIDES
from facekd.errors import FacekdError

CHANNELS = 64  # every stage from stride 8 on, the neck, and the hint YuNet's heads read


class DPUnitB(nn.Sequential):
    """1x1 conv, depthwise 3x3 conv, ReLU, each conv with a bias (YuNet's unit, its batch
    norm folded)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 1), nn.Conv2d(cout, cout, 3, padding=1, groups=cout), nn.ReLU(inplace=True))


class HeadB(nn.Sequential):
    """1x1 conv to the map's channels, then a depthwise 3x3 (both with a bias)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 1), nn.Conv2d(cout, cout, 3, padding=1, groups=cout))


class YunetNet(nn.Module):
    """YuNet's network (see the module docstring); the same interface as
    ``facekd.detect.model.FaceDetectorNet``: :meth:`features`, :meth:`maps`, ``forward``
    giving the 12 maps, ``neck_channels``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True), DPUnitB(16, 16))
        self.stage4 = nn.Sequential(nn.MaxPool2d(2), DPUnitB(16, 16), DPUnitB(16, 32), DPUnitB(32, 32), DPUnitB(32, 64))
        self.stage8 = nn.Sequential(nn.MaxPool2d(2), DPUnitB(64, 64), DPUnitB(64, 64))
        self.stage16 = nn.Sequential(nn.MaxPool2d(2), DPUnitB(64, 64), DPUnitB(64, 64))
        self.stage32 = nn.Sequential(nn.MaxPool2d(2), DPUnitB(64, 64), DPUnitB(64, 64))
        self.fuse = nn.ModuleList([DPUnitB(CHANNELS, CHANNELS) for _ in STRIDES])  # strides 8, 16, 32
        self.heads = nn.ModuleDict({k: nn.ModuleList([HeadB(CHANNELS, c) for _ in STRIDES]) for k, c in HEADS.items()})
        self.neck_channels = CHANNELS

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The neck's outputs at strides 8, 16, 32 (the stride-8 one is YuNet's hint tensor)."""
        c8 = self.stage8(self.stage4(self.stem(x)))
        c16 = self.stage16(c8)
        p32 = self.fuse[2](self.stage32(c16))
        p16 = self.fuse[1](c16 + F.interpolate(p32, scale_factor=2.0, mode="nearest"))
        p8 = self.fuse[0](c8 + F.interpolate(p16, scale_factor=2.0, mode="nearest"))
        return [p8, p16, p32]

    def maps(self, feats: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        return {k: [head(f) for head, f in zip(heads, feats)] for k, heads in self.heads.items()}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The 12 maps, ordered cls, obj, bbox, kps, each at strides 8, 16, 32."""
        m = self.maps(self.features(x))
        return tuple(t for k in HEADS for t in m[k])

    def onnx_order(self) -> list[nn.Conv2d]:
        """Its convolutions in the order YuNet's ONNX graph runs them (neck from stride 32
        down; heads cls, bbox, obj, kps, each at strides 8, 16, 32)."""
        convs = [m for part in (self.stem, self.stage4, self.stage8, self.stage16, self.stage32)
                 for m in part.modules() if isinstance(m, nn.Conv2d)]
        for i in (2, 1, 0):
            convs += [m for m in self.fuse[i] if isinstance(m, nn.Conv2d)]
        for k in ("cls", "bbox", "obj", "kps"):
            for head in self.heads[k]:
                convs += list(head)
        return convs


def load_yunet_weights(net: YunetNet, path: Path | str | None = None) -> YunetNet:
    """Copies the convolutions of YuNet's ONNX file (default: manifest entry
    ``yunet_2023mar``) into ``net``; returns it.

    Raises:
        FacekdError: The file is missing, or its convolutions do not match the network's
            in number or shape (another YuNet release), naming the first that differs.
    """
    import onnx
    from onnx import numpy_helper

    from facekd.weights import resolve_weights

    path = Path(path) if path is not None else resolve_weights("yunet_2023mar")
    if not path.is_file():
        raise FacekdError(f"{path}: YuNet model file not found")
    graph = onnx.load(str(path)).graph
    init = {t.name: t for t in graph.initializer}
    nodes = [n for n in graph.node if n.op_type == "Conv"]
    convs = net.onnx_order()
    if len(nodes) != len(convs):
        raise FacekdError(f"{path}: {len(nodes)} convolutions, YuNet's network has {len(convs)}; not yunet_2023mar's layout")
    with torch.no_grad():
        for i, (node, conv) in enumerate(zip(nodes, convs)):
            if len(node.input) < 3 or node.input[1] not in init or node.input[2] not in init:
                raise FacekdError(f"{path}: convolution {i} ({node.name or node.output[0]}) has no stored weight and bias")
            w = torch.from_numpy(numpy_helper.to_array(init[node.input[1]]).copy())
            b = torch.from_numpy(numpy_helper.to_array(init[node.input[2]]).copy())
            if w.shape != conv.weight.shape or b.shape != conv.bias.shape:
                raise FacekdError(f"{path}: convolution {i} ({node.name or node.output[0]}) has weight "
                                  f"{tuple(w.shape)}, the network expects {tuple(conv.weight.shape)}")
            conv.weight.copy_(w.flip(1) if i == 0 else w)  # the stem reads RGB, YuNet BGR
            conv.bias.copy_(b)
    return net
