"""Heads and center loss against values worked out by hand."""

import math

import pytest
import torch

from facekd.models.heads import HEADS, ArcFaceHead, CenterLoss, CosFaceHead, build_head


def _unit_weights(head) -> None:
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))


def test_cosface_by_hand():
    head = CosFaceHead(2, 2, scale=10.0, margin=0.35)
    _unit_weights(head)
    x = torch.tensor([[3.0, 0.0]])  # cos = (1, 0) after normalising
    torch.testing.assert_close(head(x, torch.tensor([0])), torch.tensor([[10 * (1 - 0.35), 0.0]]))
    torch.testing.assert_close(head(x), torch.tensor([[10.0, 0.0]]))  # no target: no margin


def test_arcface_by_hand():
    head = ArcFaceHead(2, 2, scale=10.0, margin=0.5)
    _unit_weights(head)
    x = torch.tensor([[0.5, math.sqrt(3) / 2]])  # 60 degrees from class 0, 30 from class 1
    out = head(x, torch.tensor([0]))
    expected = [10 * math.cos(math.pi / 3 + 0.5), 10 * math.sqrt(3) / 2]
    torch.testing.assert_close(out, torch.tensor([expected]), rtol=1e-5, atol=1e-5)
    # At 180 degrees, θ + m passes π: the logit becomes s·(cos θ − m·sin m).
    back = head(torch.tensor([[-1.0, 0.0]]), torch.tensor([0]))
    assert back[0, 0].item() == pytest.approx(10 * (-1 - 0.5 * math.sin(0.5)), rel=1e-5)


def test_center_loss_by_hand():
    loss = CenterLoss(2, 2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # ½ · mean(|(1,2)|² = 5, |(2,3)|² = 13) = 4.5
    assert loss(x, torch.tensor([0, 1])).item() == pytest.approx(4.5)


@pytest.mark.parametrize("name", HEADS.names())
def test_heads_train(name):
    head = build_head(name, embedding_dim=8, num_classes=5)
    x = torch.randn(4, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(head(x, y), y)
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None and all(p.grad is not None for p in head.parameters())
