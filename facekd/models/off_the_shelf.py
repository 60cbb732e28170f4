"""Off-the-shelf networks as face students (Wang et al. compare them with thinner-deeper
ones): torchvision's SqueezeNet 1.1, MobileNetV2, ShuffleNetV2 and DenseNet-121 with a
face embedding head, and facenet-pytorch's Inception-ResNet-v1.

Trained from scratch (no ImageNet weights: nothing is downloaded).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# torchvision and facenet-pytorch are imported inside the factories: importing them costs
# seconds, and every facekd command imports this registry.

from facekd.models.base import BackboneCfg, register_backbone
from facekd.preprocessing import Preprocessing


class GDCHead(nn.Module):
    """Feature map -> embedding: a global depthwise conv over the whole map (as in
    MobileFaceNet, which keeps where a feature is, unlike average pooling), batch norm,
    a linear layer and batch norm."""

    def __init__(self, channels: int, size: tuple[int, int], embedding_dim: int) -> None:
        super().__init__()
        self.gdc = nn.Conv2d(channels, channels, size, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.linear = nn.Linear(channels, embedding_dim, bias=False)
        self.bn2 = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.linear(self.bn1(self.gdc(x)).flatten(1)))


class FeaturesWithHead(nn.Module):
    """Any feature extractor followed by a :class:`GDCHead` sized to its output."""

    def __init__(self, features: nn.Module, input_size: tuple[int, int], embedding_dim: int) -> None:
        super().__init__()
        self.features = features
        with torch.no_grad():  # one tiny forward to learn the map's shape at this input size
            was_training = features.training
            c, h, w = features.eval()(torch.zeros(1, 3, *input_size)).shape[1:]
            features.train(was_training)
        self.head = GDCHead(c, (h, w), embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _cfg(name: str, template: str = "112x96") -> BackboneCfg:
    size = (112, 96) if template == "112x96" else (112, 112)
    return BackboneCfg(name=name, input_size=size, pre=Preprocessing(template=template), embedding_dim=512)


def _register_tv(name: str, features: Callable[..., nn.Module], doc: str) -> None:
    cfg = _cfg(name)

    def factory(embedding_dim: int = cfg.embedding_dim, **overrides) -> nn.Module:
        """``embedding_dim`` sizes the GDC head; other overrides reach the torchvision
        constructor (e.g. ``width_mult`` of MobileNetV2)."""
        return FeaturesWithHead(features(**overrides), cfg.input_size, embedding_dim)

    factory.__doc__ = doc
    register_backbone(cfg)(factory)


def _squeezenet(**overrides) -> nn.Module:
    from torchvision.models import squeezenet1_1

    return squeezenet1_1(weights=None, **overrides).features


def _mobilenet_v2(**overrides) -> nn.Module:
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None, **overrides).features


def _shufflenet_v2(**overrides) -> nn.Module:
    from torchvision.models import shufflenet_v2_x1_0

    m = shufflenet_v2_x1_0(weights=None, **overrides)
    return nn.Sequential(m.conv1, m.maxpool, m.stage2, m.stage3, m.stage4, m.conv5)


def _densenet121(**overrides) -> nn.Module:
    from torchvision.models import densenet121

    # torchvision applies the final ReLU in DenseNet.forward, outside .features.
    return nn.Sequential(densenet121(weights=None, **overrides).features, nn.ReLU(inplace=True))


_register_tv("squeezenet1_1", _squeezenet, "torchvision SqueezeNet 1.1 features + GDC embedding head.")
_register_tv("mobilenet_v2", _mobilenet_v2, "torchvision MobileNetV2 features + GDC embedding head.")
_register_tv("shufflenet_v2", _shufflenet_v2, "torchvision ShuffleNetV2 x1.0 features + GDC embedding head.")
_register_tv("densenet121", _densenet121, "torchvision DenseNet-121 features + GDC embedding head.")


@register_backbone(_cfg("inception_resnet_v1", template="112x112"))
def inception_resnet_v1(**overrides) -> nn.Module:
    """facenet-pytorch's Inception-ResNet-v1 (512-d) at 112x112, returning the embedding
    before facenet-pytorch's L2 normalisation."""
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False, **overrides)
    # With classify=True facenet-pytorch returns logits(last_bn(...)) instead of the
    # normalised embedding; an identity "classifier" leaves the raw embedding.
    model.classify = True
    model.logits = nn.Identity()
    return model
