"""The ``blocks`` term: a student's inner layers matched to its teacher's, by hand."""

import copy

import pytest
import torch

from facekd.distill.config import DistillCfg
from facekd.distill.features import FeatureTap, feature_layers
from facekd.distill.losses import Outputs, build_terms
from facekd.distill.objective import build_objective
from facekd.distill.teacher_sources import CachedTeacher, OnlineTeacher
from facekd.errors import FacekdError
from facekd.models import build_backbone
from facekd.models.heads import build_head
from facekd.models.surgery import apply_surgery


def test_block_match_value_by_hand():
    (term,) = build_terms([{"name": "blocks", "weight": 2.0}])
    s = {"a": torch.tensor([[1.0, 2.0], [0.0, 0.0]]), "b": torch.tensor([[[3.0]], [[1.0]]])}
    t = {"a": torch.tensor([[1.0, 0.0], [2.0, 2.0]]), "b": torch.tensor([[[1.0]], [[1.0]]])}
    # layer a: teacher mean square (1 + 0 + 4 + 4) / 4 = 2.25; per-sample squared error means 2 and 4
    # layer b: teacher mean square 1; per-sample errors 4 and 0
    per_sample = [(2 / 2.25 + 4) / 2, (4 / 2.25 + 0) / 2]
    out = term(Outputs(torch.zeros(2, 1), features=s), Outputs(torch.zeros(2, 1), features=t), torch.zeros(2))
    assert out["blocks"].item() == pytest.approx(2.0 * sum(per_sample) / 2, rel=1e-6)


def test_block_match_refuses_a_shape_change():
    (term,) = build_terms([{"name": "blocks"}])
    s = Outputs(torch.zeros(1, 1), features={"blocks.3": torch.zeros(1, 4, 2, 2)})
    t = Outputs(torch.zeros(1, 1), features={"blocks.3": torch.zeros(1, 8, 2, 2)})
    with pytest.raises(FacekdError, match="blocks.3"):
        term(s, t, torch.zeros(1))


def _surgery_pair():
    torch.manual_seed(0)
    teacher_net = build_backbone("mobilefacenet").eval()
    student = copy.deepcopy(teacher_net)
    apply_surgery(student, ["prelu_to_relu"])
    return teacher_net, student


def _by_hand(net, x, upto):
    """The output of ``net.blocks[upto]``, computed module by module."""
    h = net.stem_dw(net.stem(x))
    for i in range(upto + 1):
        h = net.blocks[i](h)
    return h


def test_objective_matches_the_named_blocks_of_student_and_teacher():
    teacher_net, student = _surgery_pair()
    teacher = OnlineTeacher("mfn", teacher_net, None, template="112x96", embedding_dim=128)
    cfg = DistillCfg(terms=[{"name": "blocks", "weight": 1.0, "layers": ["blocks.1", "blocks.6"]}], teacher_mode="online")
    obj = build_objective(student, build_head("cosface", 128, 3), teacher, cfg, say=lambda m: None)
    x, y = torch.randn(3, 3, 112, 96), torch.tensor([0, 1, 2])
    got = obj(x, y)["blocks"].item()
    with torch.no_grad():
        want = 0.0
        for k in (1, 6):
            s, t = _by_hand(student, x, k), _by_hand(teacher_net, x, k)
            want += ((s - t) ** 2).flatten(1).mean(1).mean().item() / (t ** 2).mean().item()
    assert got == pytest.approx(want / 2, rel=1e-4)
    assert got > 0.01  # ReLU against PReLU blocks differ

    twin = build_objective(copy.deepcopy(teacher_net), build_head("cosface", 128, 3),
                           OnlineTeacher("mfn", teacher_net, None, template="112x96", embedding_dim=128), cfg,
                           say=lambda m: None)
    assert twin(x, y)["blocks"].item() == pytest.approx(0.0, abs=1e-10)


def test_default_layers_are_every_block():
    net = build_backbone("mobilefacenet")
    layers = feature_layers(net)
    assert layers == tuple(f"blocks.{i}" for i in range(len(net.blocks)))
    assert len(layers) == 15


def test_refusals_name_what_is_wrong():
    teacher_net, student = _surgery_pair()
    cached = CachedTeacher("mfn", torch.zeros(4, 128), None, template="112x96")
    cfg = DistillCfg(terms=[{"name": "blocks"}], teacher_mode="cache")
    with pytest.raises(FacekdError, match="teacher_mode=online"):
        build_objective(student, build_head("cosface", 128, 3), cached, cfg, say=lambda m: None)
    with pytest.raises(FacekdError, match="blocks.99"):
        FeatureTap(student, ("blocks.99",))
    with pytest.raises(FacekdError, match="blocks.99"):  # the objective taps the student before the teacher
        build_objective(student, build_head("cosface", 128, 3),
                        OnlineTeacher("mfn", teacher_net, None, template="112x96", embedding_dim=128),
                        DistillCfg(terms=[{"name": "blocks", "layers": ["blocks.99"]}], teacher_mode="online"),
                        say=lambda m: None)
    with pytest.raises(FacekdError, match="no 'blocks' container"):
        feature_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_tap_keeps_the_last_pass_and_forgets_it_once_taken():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
    tap = FeatureTap(net, ("0",))
    x = torch.tensor([[1.0, -1.0]])
    net(x)
    kept = tap.take()["0"]
    assert torch.allclose(kept, x @ net[0].weight.T + net[0].bias)  # before the ReLU
    assert tap.take() == {}
    tap.remove()
    net(x)
    assert tap.take() == {}


def test_a_deep_copy_of_the_objective_taps_its_own_copies():
    """``time_step`` times a deep copy of the objective and ``evaluate_lfw`` a deep copy of
    the backbone: each copy's hooks must feed the copy's tap, not the original's."""
    teacher_net, student = _surgery_pair()
    teacher = OnlineTeacher("mfn", teacher_net, None, template="112x96", embedding_dim=128)
    cfg = DistillCfg(terms=[{"name": "blocks", "layers": ["blocks.2"]}], teacher_mode="online")
    obj = build_objective(student, build_head("cosface", 128, 3), teacher, cfg, say=lambda m: None)
    x, y = torch.randn(2, 3, 112, 96), torch.tensor([0, 1])
    want = obj(x, y)["blocks"].item()
    twin = copy.deepcopy(obj)
    assert twin(x, y)["blocks"].item() == pytest.approx(want, rel=1e-5)
    assert obj.tap.values == {} and obj.teacher.tap.values == {}  # the copy's pass left the original's taps alone
    net = copy.deepcopy(obj.backbone)
    net(x)
    assert obj.tap.values == {}
    assert obj(x, y)["blocks"].item() == pytest.approx(want, rel=1e-5)
