"""Classifier heads for training embedders from identity labels, and center loss.

A head maps embeddings to logits over the training identities. Margin heads apply their
margin to the target class only when a target is given; without one they return the
plain scaled cosines (what soft-label distillation should see).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facekd.registry import Registry

HEADS: Registry[nn.Module] = Registry("head")


@HEADS.register("softmax")
class SoftmaxHead(nn.Module):
    """A linear classifier (with bias): plain softmax cross-entropy training."""

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_dim, num_classes)

    def forward(self, embedding: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(embedding)


class _CosineHead(nn.Module):
    """Shared part of the margin heads: cosines between embeddings and class weights."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.scale, self.margin = scale, margin

    def cosines(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embedding.float()), F.normalize(self.weight.float())).clamp(-1.0, 1.0)

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embedding: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosines(embedding)
        if target is not None:
            one_hot = F.one_hot(target, cos.shape[1]).bool()
            cos = torch.where(one_hot, self.target_logit(cos), cos)
        return self.scale * cos


@HEADS.register("cosface")
class CosFaceHead(_CosineHead):
    """CosFace / large-margin cosine loss (Wang et al., CVPR 2018):
    target logit ``s·(cos θ − m)``, others ``s·cos θ``."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__(embedding_dim, num_classes, scale, margin)

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        return cos_t - self.margin


@HEADS.register("arcface")
class ArcFaceHead(_CosineHead):
    """ArcFace / additive angular margin (Deng et al., CVPR 2019): target logit
    ``s·cos(θ + m)``; where θ + m would pass π (cos θ ≤ cos(π − m)) it becomes
    ``s·(cos θ − m·sin m)``, which keeps the logit decreasing in θ (insightface's rule)."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__(embedding_dim, num_classes, scale, margin)

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        m = self.margin
        sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(0.0))
        shifted = cos_t * math.cos(m) - sin_t * math.sin(m)  # cos(θ + m)
        return torch.where(cos_t > math.cos(math.pi - m), shifted, cos_t - m * math.sin(m))


class CenterLoss(nn.Module):
    """Center loss (Wen et al., ECCV 2016): ``½·mean_i ||x_i − c_{y_i}||²`` with one learned
    center per class; the teacher's original recipe weights it by 0.008 next to softmax."""

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.zeros(num_classes, embedding_dim))

    def forward(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * (embedding.float() - self.centers[target]).pow(2).sum(dim=1).mean()


def build_head(name: str, embedding_dim: int, num_classes: int, **kwargs) -> nn.Module:
    """Builds the registered head ``name`` ("softmax", "cosface", "arcface")."""
    return HEADS.build(name, embedding_dim=embedding_dim, num_classes=num_classes, **kwargs)
