"""MobileFaceNet (Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time
Face Verification on Mobile Devices", CCBR 2018), 112x96 variant.

Depthwise-separable inverted residuals, a global depthwise conv (GDC) instead of
average pooling, and a linear 128-d embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from facekd.models.base import BackboneCfg, register_backbone
from facekd.preprocessing import Preprocessing


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm, optionally followed by a per-channel PReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 expand, 3x3 depthwise (stride s), 1x1 linear projection; identity shortcut
    when the stride is 1 and the width is unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = ConvBN(cin, hidden, 1)
        self.depthwise = ConvBN(hidden, hidden, 3, stride, 1, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


# (expansion t, channels c, repeats n, first stride s), from the paper's Table 1.
SETTINGS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class MobileFaceNet(nn.Module):
    """Image (N, 3, 112, 96) -> embedding (N, 128), not normalised."""

    def __init__(self, embedding_dim: int = 128, input_size: tuple[int, int] = (112, 96)):
        super().__init__()
        self.stem = ConvBN(3, 64, 3, 2, 1)
        self.stem_dw = ConvBN(64, 64, 3, 1, 1, groups=64)
        blocks, cin = [], 64
        for t, c, n, s in SETTINGS:
            for i in range(n):
                blocks.append(Bottleneck(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(cin, 512, 1)
        gdc_kernel = (input_size[0] // 16, input_size[1] // 16)  # 7x6 for 112x96
        self.gdc = ConvBN(512, 512, gdc_kernel, groups=512, act=False)
        self.embed = ConvBN(512, embedding_dim, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem_dw(self.stem(x)))
        return self.embed(self.gdc(self.head(x))).flatten(1)


# Keys of the public PyTorch implementation (Xiaoccer/MobileFaceNet_Pytorch) -> ours.
_XIAOCCER_KEYS = (
    (r"^conv1\.prelu\.", "stem.act."),
    (r"^conv1\.", "stem."),
    (r"^dw_conv1\.prelu\.", "stem_dw.act."),
    (r"^dw_conv1\.", "stem_dw."),
    (r"^blocks\.(\d+)\.conv\.0\.", r"blocks.\1.expand.conv."),
    (r"^blocks\.(\d+)\.conv\.1\.", r"blocks.\1.expand.bn."),
    (r"^blocks\.(\d+)\.conv\.2\.", r"blocks.\1.expand.act."),
    (r"^blocks\.(\d+)\.conv\.3\.", r"blocks.\1.depthwise.conv."),
    (r"^blocks\.(\d+)\.conv\.4\.", r"blocks.\1.depthwise.bn."),
    (r"^blocks\.(\d+)\.conv\.5\.", r"blocks.\1.depthwise.act."),
    (r"^blocks\.(\d+)\.conv\.6\.", r"blocks.\1.project.conv."),
    (r"^blocks\.(\d+)\.conv\.7\.", r"blocks.\1.project.bn."),
    (r"^conv2\.prelu\.", "head.act."),
    (r"^conv2\.", "head."),
    (r"^linear7\.", "gdc."),
    (r"^linear1\.", "embed."),
)


@register_backbone(
    BackboneCfg(
        name="mobilefacenet",
        input_size=(112, 96),
        pre=Preprocessing(template="112x96", flip_fusion="concat", subtract_fold_mean=True),
        embedding_dim=128,
        key_map=_XIAOCCER_KEYS,
    )
)
def mobilefacenet(**overrides) -> MobileFaceNet:
    """MobileFaceNet, 112x96, 0.99 M parameters."""
    return MobileFaceNet(**overrides)
