"""The 5-layer student of Wang et al. (ICIP 2018): five 3x3 convolutions, each followed
by pooling, and an embedding layer."""

from __future__ import annotations

import torch
from torch import nn

from facekd.models.base import BackboneCfg, register_backbone
from facekd.preprocessing import Preprocessing


class Student5(nn.Module):
    """Image (N, 3, 112, 96) -> embedding (N, embedding_dim), not normalised.

    Each conv is 3x3 with padding 1, batch norm and PReLU, then 2x2 max-pooling; the
    3x3x512 map left after five poolings is flattened into a linear embedding layer
    with batch norm. Widths (32, 64, 128, 256, 512) give 3.9 M parameters.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128, 256, 512),
        embedding_dim: int = 512,
        input_size: tuple[int, int] = (112, 96),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, (h, w) = 3, input_size
        for width in widths:
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width)]
            layers.append(nn.MaxPool2d(2, 2))
            cin, h, w = width, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.embed = nn.Linear(cin * h * w, embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.embed(self.features(x).flatten(1)))


@register_backbone(BackboneCfg(name="student5", input_size=(112, 96), pre=Preprocessing(template="112x96"), embedding_dim=512))
def student5(**overrides) -> Student5:
    """The 5-conv student, 3.9 M parameters."""
    return Student5(**overrides)
