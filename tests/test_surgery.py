"""Layer surgery: PReLU swaps for INT8, exact folds checked layer by layer, replay from a
checkpoint record."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facekd.errors import FacekdError
from facekd.models.base import build_backbone
from facekd.models.surgery import SURGERIES, apply_surgery, check_exact
from facekd.models.transforms import apply_transforms


def _prelus(m: nn.Module) -> int:
    return sum(isinstance(x, nn.PReLU) for x in m.modules())


def test_prelu_to_relu_replaces_every_prelu_and_records_itself() -> None:
    net = build_backbone("mobilefacenet")
    n = _prelus(net)
    assert n > 30  # MobileFaceNet: one per stem, expand, depthwise and head conv
    apply_surgery(net, ["prelu_to_relu"])
    assert _prelus(net) == 0 and sum(isinstance(x, nn.ReLU) for x in net.modules()) == n
    (rec,) = net.transforms
    assert rec["name"] == "surgery" and rec["ops"] == ["prelu_to_relu"] and len(rec["replaced"]) == n
    assert set(rec["replaced"].values()) == {"ReLU"}
    x = torch.randn(2, 3, 112, 96)
    rebuilt = apply_transforms(build_backbone("mobilefacenet"), net.transforms)
    rebuilt.load_state_dict(net.state_dict())  # the same parameters: PReLU slopes gone from both
    assert torch.allclose(rebuilt.eval()(x), net.eval()(x))


def _uniform_slopes(net: nn.Module, slope=lambda i: 0.05 * (i % 5)) -> list[tuple[str, nn.PReLU]]:
    """Sets every PReLU's slopes to one value per layer, ``slope(layer index)`` (by default
    0.05 x (layer index mod 5))."""
    prelus = [(p, m) for p, m in net.named_modules() if isinstance(m, nn.PReLU)]
    for i, (_, m) in enumerate(prelus):
        m.weight.data.fill_(slope(i))
    return prelus


@pytest.mark.parametrize("name,slope", [
    ("prelu_to_leaky", lambda i: 0.05 * (i % 5)),  # one slope per layer: a LeakyReLU computes it
    ("fold_prelu", lambda i: 0.0 if i % 2 else 1.0),  # slopes 0 or 1: a ReLU or an identity
])
def test_surgery_is_exact_where_the_slopes_allow_it(name, slope) -> None:
    torch.manual_seed(0)
    net = build_backbone("mobilefacenet").eval()
    _uniform_slopes(net, slope)
    x = torch.randn(2, 3, 112, 96)
    before = net(x)
    apply_surgery(net, [name])
    assert _prelus(net) == 0
    assert torch.allclose(net(x), before, atol=1e-5)


def test_prelu_to_leaky_takes_each_layers_mean_slope_and_replays_it() -> None:
    torch.manual_seed(0)
    net = build_backbone("mobilefacenet").eval()
    prelus = _uniform_slopes(net)
    (stem_path, stem), (second_path, _) = prelus[0], prelus[1]
    stem.weight.data = torch.linspace(0.0, 0.5, stem.num_parameters)  # mean 0.25
    apply_surgery(net, ["prelu_to_leaky"])
    got = {p: m.negative_slope for p, m in net.named_modules() if isinstance(m, nn.LeakyReLU)}
    assert sorted(got) == sorted(p for p, _ in prelus)
    assert got[stem_path] == pytest.approx(0.25) and got[second_path] == pytest.approx(0.05)
    assert net.transforms[-1]["replaced"][stem_path] == f"LeakyReLU:{got[stem_path]!r}"
    fresh = apply_transforms(build_backbone("mobilefacenet"), net.transforms)
    assert {p: m.negative_slope for p, m in fresh.named_modules() if isinstance(m, nn.LeakyReLU)} == got


def test_fold_prelu_refuses_a_learned_slope_naming_the_layer() -> None:
    net = build_backbone("mobilefacenet")
    with pytest.raises(FacekdError, match=r"PReLU at stem\.act has slopes"):
        apply_surgery(net, ["fold_prelu"])


def test_parity_check_names_the_first_layer_that_moved() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PReLU(4), nn.Conv2d(4, 2, 1))
    b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("1.")})
    x = torch.randn(1, 3, 8, 8)
    check_exact(a, a, x)  # a model against itself passes
    with pytest.raises(FacekdError, match=r"parity at 1:"):  # the activation, not the conv after it
        check_exact(a, b, x)


def test_unknown_surgery_lists_the_known_ones() -> None:
    with pytest.raises(FacekdError, match="prelu_to_relu"):
        apply_surgery(build_backbone("student5"), ["nope"])
    assert set(SURGERIES.names()) >= {"prelu_to_relu", "fold_prelu"}


def test_a_surgery_with_nothing_to_rewrite_says_so() -> None:
    with pytest.raises(FacekdError, match="nothing to rewrite"):
        apply_surgery(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), ["prelu_to_relu"])


# What each surgery starts from: the ReLU MobileFaceNet for the one that puts PReLUs back.
_BEFORE = {"prelu_at_last_stride": ["prelu_to_relu"]}


@pytest.mark.parametrize("name", SURGERIES.names())
def test_every_surgery_rewrites_records_and_keeps_its_exactness_claim(name):
    """Each surgery rewrites a MobileFaceNet whose PReLU slopes are all 0 (so that
    fold_prelu applies); an exact one keeps the embeddings, and every one rebuilds from
    its records with the same modules and parameters."""
    torch.manual_seed(0)
    net = build_backbone("mobilefacenet").eval()
    for m in net.modules():
        if isinstance(m, nn.PReLU):
            m.weight.data.zero_()
    if _BEFORE.get(name):
        apply_surgery(net, _BEFORE[name])
    x = torch.randn(2, 3, 112, 96)
    before = net(x)
    kinds_before = [type(m) for m in net.modules()]
    apply_surgery(net, [name])
    assert [type(m) for m in net.modules()] != kinds_before
    if SURGERIES.build(name).exact:
        assert torch.allclose(net(x), before, atol=1e-5)
    fresh = apply_transforms(build_backbone("mobilefacenet"), net.transforms)
    fresh.load_state_dict(net.state_dict())
    assert [type(m) for m in fresh.modules()] == [type(m) for m in net.modules()]
    assert torch.allclose(fresh.eval()(x), net(x), atol=1e-6)


def test_prelu_at_last_stride_puts_zero_slopes_on_exactly_the_smallest_maps() -> None:
    """On the ReLU MobileFaceNet (112x96 in, strides to 7x6): every ReLU whose output is
    7x6 (block 12's depthwise, blocks 13-14, the head: 6 layers) becomes a PReLU of as many
    slopes as its channels, all 0; no other activation changes."""
    net = apply_surgery(build_backbone("mobilefacenet").eval(), ["prelu_to_relu"])
    sizes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, p=p: sizes.__setitem__(p, (o.shape[1], *o.shape[2:])))
             for p, m in net.named_modules() if isinstance(m, nn.ReLU)]
    net(torch.zeros(1, 3, 112, 96))
    for h in hooks:
        h.remove()
    want = {p: c for p, (c, h, w) in sizes.items() if (h, w) == (7, 6)}
    assert sorted(want) == ["blocks.12.depthwise.act", "blocks.13.depthwise.act", "blocks.13.expand.act",
                            "blocks.14.depthwise.act", "blocks.14.expand.act", "head.act"]
    apply_surgery(net, ["prelu_at_last_stride"])
    got = {p: m for p, m in net.named_modules() if isinstance(m, nn.PReLU)}
    assert {p: m.num_parameters for p, m in got.items()} == want
    assert all(float(m.weight.detach().abs().max()) == 0.0 for m in got.values())
    assert net.transforms[-1]["replaced"] == {p: f"PReLU:{c}" for p, c in want.items()}


@pytest.mark.parametrize("kind", ["PReLU", "PReLU:x", "PReLU:0", "ReLU:3", "Sigmoid", "LeakyReLU", "LeakyReLU:nan", "LeakyReLU:x"])
def test_a_record_naming_an_unknown_or_malformed_module_is_refused(kind) -> None:
    record = {"name": "surgery", "ops": ["prelu_to_relu"], "replaced": {"head.act": kind}}
    with pytest.raises(FacekdError, match=f"cannot put a {kind} at 'head.act'"):
        apply_transforms(build_backbone("mobilefacenet"), [record])


def test_a_scoped_surgery_rewrites_only_under_its_paths_and_keeps_the_rest_exact() -> None:
    """``prelu_to_relu@blocks.0,blocks.1``: the four PReLUs of those two bottlenecks become
    ReLUs; the stem's output is untouched and a fresh model replays the record."""
    torch.manual_seed(0)
    net = build_backbone("mobilefacenet").eval()
    for m in net.modules():
        if isinstance(m, nn.PReLU):
            m.weight.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 112, 96)
    stem_before = net.stem_dw(net.stem(x))
    block0_before = net.blocks[0](stem_before)
    n = _prelus(net)
    apply_surgery(net, ["prelu_to_relu@blocks.0, blocks.1"])
    relus = sorted(p for p, m in net.named_modules() if isinstance(m, nn.ReLU))
    assert relus == ["blocks.0.depthwise.act", "blocks.0.expand.act", "blocks.1.depthwise.act", "blocks.1.expand.act"]
    assert _prelus(net) == n - 4
    assert torch.equal(net.stem_dw(net.stem(x)), stem_before)
    assert not torch.allclose(net.blocks[0](stem_before), block0_before, atol=1e-3)  # the block's function changed
    fresh = apply_transforms(build_backbone("mobilefacenet"), net.transforms)
    assert sorted(p for p, m in fresh.named_modules() if isinstance(m, nn.ReLU)) == relus


@pytest.mark.parametrize("op,message", [
    ("prelu_to_relu@blocks.99", r"no module 'blocks\.99'"),
    ("prelu_to_relu@", "no module path"),
    ("nope@blocks.0", "prelu_to_relu"),  # an unknown surgery lists the known ones
    ("prelu_at_last_stride@blocks.0", "takes no @scope"),  # it runs the whole network to decide
])
def test_a_bad_scope_is_refused_by_name(op, message) -> None:
    with pytest.raises(FacekdError, match=message):
        apply_surgery(build_backbone("mobilefacenet"), [op])


def test_a_scope_with_nothing_to_rewrite_names_it() -> None:
    net = build_backbone("mobilefacenet")
    with pytest.raises(FacekdError, match=r"nothing to rewrite .* under gdc"):
        apply_surgery(net, ["prelu_to_relu@gdc"])
