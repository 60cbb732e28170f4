"""The greedy scope plan: it frees the activations that cost the function least, counts
their values by the network's geometry, and its op reproduces the cosine it reports."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from facekd.errors import FacekdError
from facekd.models.base import build_backbone
from facekd.models.surgery import apply_surgery
from facekd.models.surgery_plan import plan_scope

# MobileFaceNet at 112x96, by hand: channels x height x width of each PReLU's output.
# stem and stem_dw 64x56x48 each; blocks.0.expand 128x56x48; blocks.0.depthwise and
# blocks 1-4 (9 PReLUs) 128x28x24; blocks.5.expand 256x28x24; blocks.5.depthwise to
# blocks.11 (13) 256x14x12; blocks.12.expand 512x14x12, its depthwise 512x7x6;
# blocks 13-14 (4) 256x7x6; head 512x7x6.
ALL_VALUES = (2 * 64 * 56 * 48 + 128 * 56 * 48 + 9 * 128 * 28 * 24 + 256 * 28 * 24 + 13 * 256 * 14 * 12
              + 512 * 14 * 12 + 512 * 7 * 6 + 4 * 256 * 7 * 6 + 512 * 7 * 6)


def _net_with_two_free_relus() -> nn.Module:
    """Random MobileFaceNet whose PReLUs compute |x| (slope -1), far from a ReLU, except
    two with slope 0, which a ReLU replaces without changing anything."""
    torch.manual_seed(0)
    net = build_backbone("mobilefacenet").eval()
    for path, m in net.named_modules():
        if isinstance(m, nn.PReLU):
            m.weight.data.fill_(0.0 if path in ("blocks.3.expand.act", "blocks.9.depthwise.act") else -1.0)
    return net


def test_the_plan_frees_what_costs_nothing_first_and_counts_values_by_geometry() -> None:
    net = _net_with_two_free_relus()
    x = torch.randn(2, 3, 112, 96)
    free = 128 * 28 * 24 + 256 * 14 * 12
    plan = plan_scope(net, "prelu_to_relu", x, share=(free - 0.5) / ALL_VALUES, progress=False)
    assert plan.total_values == ALL_VALUES
    # Both cost nothing; the one that frees more comes first. Then the share is reached.
    assert [(s.path, s.values) for s in plan.steps] == [("blocks.3.expand", 128 * 28 * 24),
                                                      ("blocks.9.depthwise", 256 * 14 * 12)]
    assert all(s.cosine == pytest.approx(1.0, abs=1e-5) for s in plan.steps)
    assert plan.op == "prelu_to_relu@blocks.3.expand,blocks.9.depthwise"


def test_the_plans_op_reproduces_the_cosine_it_reports() -> None:
    net = _net_with_two_free_relus()
    x = torch.randn(2, 3, 112, 96)
    free = 128 * 28 * 24 + 256 * 14 * 12
    plan = plan_scope(net, "prelu_to_relu", x, share=(free + 0.5) / ALL_VALUES, progress=False)
    assert len(plan.steps) == 3 and plan.values > free
    assert plan.steps[-1].cosine < 0.999  # past the two free ones, the function moves
    cos = [s.cosine for s in plan.steps]
    after = apply_surgery(copy.deepcopy(net), [plan.op])
    with torch.no_grad():
        a = nn.functional.normalize(net(x), dim=1)
        b = nn.functional.normalize(after.eval()(x), dim=1)
    assert float((a * b).sum(1).mean()) == pytest.approx(cos[-1], abs=1e-5)
    assert sum(isinstance(m, nn.ReLU) for m in after.modules()) == len(plan.steps)


@pytest.mark.parametrize("surgery,share,message", [
    ("prelu_to_relu", 0.0, "share must lie in (0, 1]"),
    ("prelu_to_relu", 1.5, "share must lie in (0, 1]"),
    ("prelu_to_relu@blocks.0", 0.5, "without a scope"),
    ("prelu_at_last_stride", 0.5, "takes no scope"),
    ("no_such_surgery", 0.5, "no_such_surgery"),
])
def test_a_bad_plan_request_is_refused_by_name(surgery, share, message) -> None:
    with pytest.raises(FacekdError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_scope(build_backbone("mobilefacenet"), surgery, torch.zeros(1, 3, 112, 96), share=share, progress=False)


def test_a_plan_with_nothing_to_rewrite_says_so() -> None:
    net = apply_surgery(build_backbone("mobilefacenet"), ["prelu_to_relu"])
    with pytest.raises(FacekdError, match="nothing to rewrite"):
        plan_scope(net, "prelu_to_relu", torch.zeros(1, 3, 112, 96), share=0.5, progress=False)
