"""The ResNet-27 teacher of Wen et al. ("A Discriminative Feature Learning Approach for
Deep Face Recognition", ECCV 2016) and its thinner / thinner-deeper students.

PReLU everywhere. Each stage: a 3x3 conv without padding that widens the features, 2x2
max-pooling, then residual units of two padded 3x3 convs. A fully connected layer maps
the last feature map to the embedding. Depth counts the conv layers: 5 stage convs + 2
per unit (the teacher's 1+2+5+3 units give 27).

Wen et al.'s network has no batch norm (``norm="none"``). The default, ``norm="bn"``, adds
it after every conv and on the embedding: without it the teacher collapsed or diverged
at the recipe's lr 0.1 (docs/BENCHMARKS.md, "Why, and the fix").
"""

from __future__ import annotations

import torch
from torch import nn

from facekd.models.base import BackboneCfg, check_norm, init_prelu_net, register_backbone
from facekd.preprocessing import Preprocessing


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if check_norm(kind, "backbone_args.norm") == "bn" else nn.Identity()


class ResidualUnit(nn.Module):
    """x + PReLU(norm(conv(PReLU(norm(conv(x)))))), both convs 3x3 with padding 1."""

    def __init__(self, channels: int, norm: str = "bn") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none")
        self.bn1 = _norm(norm, channels)
        self.act1 = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none")
        self.bn2 = _norm(norm, channels)
        self.act2 = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))


def _conv(cin: int, cout: int, norm: str) -> nn.Sequential:
    if norm == "none":  # conv, PReLU: checkpoints saved before batch norm came load unchanged
        return nn.Sequential(nn.Conv2d(cin, cout, 3), nn.PReLU(cout))
    return nn.Sequential(nn.Conv2d(cin, cout, 3, bias=False), _norm(norm, cout), nn.PReLU(cout))


class FaceResNet(nn.Module):
    """Image (N, 3, H, W) -> embedding (N, embedding_dim), not normalised.

    Args:
        base: Width of conv1a; the stages are 2, 4, 8 and 16 times it (teacher: 32).
        units: Residual units per stage (teacher: 1, 2, 5, 3).
        embedding_dim: Embedding size (teacher: 512).
        input_size: (H, W), needed to size the fully connected layer.
        norm: "bn" (batch norm after every conv and on the embedding) or "none" (Wen et
            al.'s layout: conv and fc biases instead).
    """

    def __init__(
        self,
        base: int = 32,
        units: tuple[int, int, int, int] = (1, 2, 5, 3),
        embedding_dim: int = 512,
        input_size: tuple[int, int] = (112, 96),
        norm: str = "bn",
    ) -> None:
        super().__init__()
        widths = [2 * base, 4 * base, 8 * base, 16 * base]
        layers: list[nn.Module] = [_conv(3, base, norm)]
        cin = base
        h, w = input_size[0] - 2, input_size[1] - 2
        for width, n in zip(widths, units):
            layers += [_conv(cin, width, norm), nn.MaxPool2d(2, 2)]
            h, w = (h - 2) // 2, (w - 2) // 2
            layers += [ResidualUnit(width, norm) for _ in range(n)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.fc5 = nn.Linear(cin * h * w, embedding_dim, bias=norm == "none")
        self.bn = nn.BatchNorm1d(embedding_dim) if norm == "bn" else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation for PReLU (slope 0.25), zero biases, and each residual branch's
        last batch norm (or, without batch norm, its last conv) at zero, so that every unit
        starts as the identity.

        PyTorch's default init shrinks the signal by about a third per stage conv: at the
        fully connected layer it was smaller than that layer's bias, and every face mapped
        to nearly the same embedding (cosine 0.99 between random inputs)."""
        init_prelu_net(self)
        for m in self.modules():
            if isinstance(m, ResidualUnit):
                last = m.bn2 if isinstance(m.bn2, nn.BatchNorm2d) else m.conv2
                nn.init.zeros_(last.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc5(self.features(x).flatten(1)))


def _cfg(name: str) -> BackboneCfg:
    return BackboneCfg(name=name, input_size=(112, 96), pre=Preprocessing(template="112x96"), embedding_dim=512)


@register_backbone(_cfg("resnet27"))
def resnet27(**overrides) -> FaceResNet:
    """The teacher: 27 conv layers, 27.5 M parameters, about 2.1 GMAC at 112x96."""
    return FaceResNet(**{"base": 32, "units": (1, 2, 5, 3), **overrides})


@register_backbone(_cfg("resnet27_c14"))
def resnet27_c14(**overrides) -> FaceResNet:
    """Thinner: 14/32 of the teacher's width, about 1/4 of its parameters."""
    return FaceResNet(**{"base": 14, "units": (1, 2, 5, 3), **overrides})


@register_backbone(_cfg("resnet27_c10"))
def resnet27_c10(**overrides) -> FaceResNet:
    """Thinner: 10/32 of the teacher's width, about the size of ``student5``."""
    return FaceResNet(**{"base": 10, "units": (1, 2, 5, 3), **overrides})


@register_backbone(_cfg("resnet37_c10"))
def resnet37_c10(**overrides) -> FaceResNet:
    """Thinner and deeper: 10/32 width with 2+3+7+4 units (37 conv layers)."""
    return FaceResNet(**{"base": 10, "units": (2, 3, 7, 4), **overrides})
