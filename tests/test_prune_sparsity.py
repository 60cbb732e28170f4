"""Sparsity induction for ``facekd prune`` (Singh et al., WACV 2019): the L1 penalty and
the ``l1_next`` importance against hand computations, the ``prune.sparsity`` ranges, and
a tiny whole run (sparsity phase, pruning of the sparse model, recovery, resume)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning", reason="pruning needs the prune extra (torch-pruning)")

import torch_pruning as tp  # noqa: E402

from facekd.config import from_dict  # noqa: E402
from facekd.errors import FacekdError  # noqa: E402
from facekd.models import BackboneCfg  # noqa: E402
from facekd.prune.config import PruneConfig  # noqa: E402
from facekd.prune.core import StepPlan, prune_once  # noqa: E402
from facekd.prune.importance import IMPORTANCES  # noqa: E402
from facekd.prune.sparsity import WithSparsity, chosen_layers, sparsity_penalty  # noqa: E402


def test_penalty_is_the_sum_of_the_filters_l1_norms():
    conv = nn.Conv2d(2, 3, 1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 0.0], [3.0, -4.0]]).view(3, 2, 1, 1))
        conv.bias.fill_(100.0)  # biases are not filters: not penalised
    net = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(3, 1, 1, bias=False))
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([0.5, -0.5, 1.5]).view(1, 3, 1, 1))
    # Filter norms of conv 0: 3, 0, 7; of conv 2: 2.5.
    assert float(sparsity_penalty(net, ["0"]).detach()) == pytest.approx(10.0)
    assert float(sparsity_penalty(net).detach()) == pytest.approx(12.5)
    sparsity_penalty(net, ["0"]).backward()
    torch.testing.assert_close(conv.weight.grad.view(3, 2), torch.tensor([[1.0, -1.0], [0.0, 0.0], [1.0, -1.0]]))
    assert net[2].weight.grad is None


def test_chosen_layers_name_the_setting_and_the_module():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)))
    assert chosen_layers(net, ["1"]) == [net[1][0], net[1][1]]
    assert chosen_layers(net, [], exclude=[net[1][1]]) == [net[0], net[1][0]]
    with pytest.raises(FacekdError, match=r"prune\.sparsity\.layers: stage9 not a module of Sequential"):
        chosen_layers(net, ["stage9"], where="prune.sparsity.layers")


class _TwoConv(nn.Module):
    """conv1 (3->3, 1x1) -> ReLU -> conv2 (3->2, 1x1) -> global mean (the embedding)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 1, bias=False)
        self.conv2 = nn.Conv2d(3, 2, 1, bias=False)
        self.cfg = BackboneCfg("two_conv", input_size=(4, 4), embedding_dim=2)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1, 1).expand(3, 3, 1, 1))
            # Column k is what conv2 reads of channel k: means 0.1, 0.1, 4.
            self.conv2.weight.copy_(torch.tensor([[0.1, -0.1, 4.0], [-0.1, 0.1, -4.0]]).view(2, 3, 1, 1))

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x))).mean(dim=(2, 3))


def test_l1_next_adds_the_next_layers_weights_to_the_filters_own():
    net = _TwoConv().eval()
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 3, 4, 4))
    group = dg.get_pruning_group(net.conv1, tp.prune_conv_out_channels, idxs=[0, 1, 2])
    scores = IMPORTANCES.build("l1_next").scorer(net)(group)
    # own mean |W|: 1, 2, 0.5; next (conv2's columns): 0.1, 0.1, 4.
    torch.testing.assert_close(scores, torch.tensor([1.1, 2.1, 4.5]))
    # Its own norm alone would remove channel 2; with the next layer channel 0 goes.
    prune_once(net, "l1_next", StepPlan(0.3))  # 3 - int(3 * 0.7) = 1 channel
    assert net.conv1.out_channels == 2 and net.conv2.in_channels == 2
    torch.testing.assert_close(net.conv1.weight[:, 0, 0, 0], torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(net.conv2.weight[0, :, 0, 0], torch.tensor([-0.1, 4.0]))


def test_with_sparsity_adds_the_weighted_term_and_keeps_the_state_dict_keys():
    class Objective(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False))
            self.head = nn.Linear(2, 2)

        def forward(self, x, y, index=None):
            return {"task": self.backbone(x).mean() * 0}

    obj = Objective()
    with torch.no_grad():
        obj.backbone[0].weight.copy_(torch.tensor([3.0, -1.0]).view(2, 1, 1, 1))
    wrapped = WithSparsity(obj, [obj.backbone[0]], 0.5)
    assert list(wrapped.state_dict()) == list(obj.state_dict())
    terms = wrapped(torch.ones(1, 1, 2, 2), torch.zeros(1, dtype=torch.long))
    assert float(terms["sparsity"].detach()) == pytest.approx(0.5 * 4.0) and float(terms["task"].detach()) == 0.0
    wrapped.eval()
    assert not obj.training and not obj.backbone.training


@pytest.mark.parametrize("key, value, allowed", [("weight", -1e-4, r"\(0, inf\)"), ("weight", 0.0, r"\(0, inf\)"),
                                                 ("epochs", 0, r"\[1, inf\)")])
def test_sparsity_ranges_name_the_key(key, value, allowed):
    with pytest.raises(FacekdError, match=rf"p\.yaml: prune\.sparsity\.{key}: {value!r} is out of range \(allowed: {allowed}\)"):
        from_dict(PruneConfig, {"prune": {"sparsity": {key: value}}}, "p.yaml")
    with pytest.raises(FacekdError, match=r"p\.yaml: prune\.sparsity: unknown key lambda"):
        from_dict(PruneConfig, {"prune": {"sparsity": {"lambda": 1.0}}}, "p.yaml")
    cfg = from_dict(PruneConfig, {"prune": {"sparsity": {"weight": 1.0e-3, "layers": ["stages.1"]}}}, "p.yaml")
    assert (cfg.prune.sparsity.weight, cfg.prune.sparsity.epochs, cfg.prune.sparsity.layers) == (1.0e-3, 1, ["stages.1"])
    assert from_dict(PruneConfig, {}, "p.yaml").prune.sparsity is None


def test_prune_with_sparsity_trains_the_penalty_prunes_the_sparse_model_and_resumes(tmp_path):
    from test_distill_run import _synthetic_pack
    from test_prune import _source, _tiny_raw

    from facekd.prune.run import read_result, run_prune
    from facekd.train.checkpoint import backbone_from_checkpoint, load_checkpoint

    _synthetic_pack(tmp_path / "p.fkpack")
    src = _source(tmp_path)
    raw = _tiny_raw(tmp_path, {"source": str(src), "importance": "l1_next", "ratio": 0.5, "steps": 1,
                               "sparsity": {"weight": 0.01, "epochs": 1}},
                    data={"workers": 1, "loader": "memory"},
                    optim={"weight_decay": 0.0},  # the L1 penalty alone shrinks the weights
                    schedule={"warmup_epochs": 0})
    cfg = from_dict(PruneConfig, raw)
    run = tmp_path / "run"
    source = backbone_from_checkpoint(load_checkpoint(src), src)
    # student5's embedding layer is a linear layer: every conv is penalised.
    l1_source = sum(float(m.weight.detach().abs().sum()) for m in source.modules() if isinstance(m, nn.Conv2d))
    result = run_prune(cfg, run, say=lambda _: None)
    s = result.sparsity
    assert s.l1_before == pytest.approx(l1_source, rel=1e-5)
    assert s.l1_after < s.l1_before
    # The phase's first step logged λ·(the source's filters' L1), before any update.
    log = [json.loads(line) for line in (run / "sparsity" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in log if r.get("kind") == "train")
    assert first["step"] == 1 and first["sparsity"] == pytest.approx(0.01 * l1_source, rel=1e-5)
    # Step 1 pruned the sparse model: its first conv keeps rows of the sparse one's.
    sparse = backbone_from_checkpoint(load_checkpoint(run / "sparsity" / "checkpoints" / "last.pt"), "sparse")
    pruned = backbone_from_checkpoint(load_checkpoint(run / "step1" / "pruned.pt"), "pruned")
    c_sparse = next(m for m in sparse.modules() if isinstance(m, nn.Conv2d)).weight.detach()
    c_pruned = next(m for m in pruned.modules() if isinstance(m, nn.Conv2d)).weight.detach()
    assert c_pruned.shape[0] < c_sparse.shape[0]
    assert all(any(torch.equal(row, r) for r in c_sparse) for row in c_pruned)
    assert result.steps[0].params < result.source_params
    assert read_result(run).to_dict() == result.to_dict()
    # A finished run resumes to the same table without training the phase again.
    before = (run / "sparsity" / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert run_prune(cfg, run, resume=True, say=lambda _: None).to_dict() == result.to_dict()
    assert (run / "sparsity" / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_regression_a_sparsity_phase_killed_before_its_first_checkpoint_resumes(tmp_path):
    """A kill in the sparsity phase before its first checkpoint leaves its start model and
    its log; ``--resume`` refused the phase's folder as another run's (the fault issue 30's
    kill sweep found in prune's recovery steps). The rerun now ends with the uninterrupted
    run's weights."""
    import shutil

    from test_distill_run import _synthetic_pack
    from test_prune import _source, _tiny_raw

    from facekd.prune.run import run_prune
    from facekd.prune.sparsity import SPARSITY_DIR, START
    from facekd.train.checkpoint import load_checkpoint

    _synthetic_pack(tmp_path / "p.fkpack")
    raw = _tiny_raw(tmp_path, {"source": str(_source(tmp_path)), "importance": "l1", "ratio": 0.5, "steps": 1,
                               "sparsity": {"weight": 0.01, "epochs": 1}},
                    data={"loader": "memory"}, train={"threads": 1})
    cfg = from_dict(PruneConfig, raw)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_prune(cfg, whole, say=lambda _: None)
    # What the kill left: the phase's start model and its log, nothing trained yet.
    (killed / SPARSITY_DIR).mkdir(parents=True)
    shutil.copy(whole / SPARSITY_DIR / START, killed / SPARSITY_DIR / START)
    (killed / SPARSITY_DIR / "metrics.jsonl").write_text("")
    run_prune(cfg, killed, resume=True, say=lambda _: None)
    a, b = load_checkpoint(whole / "pruned.pt")["model"], load_checkpoint(killed / "pruned.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_sparsity_layer_fails_before_training(tmp_path):
    from test_prune import _source

    from facekd.prune.run import run_prune

    src = _source(tmp_path)
    cfg = from_dict(PruneConfig, {"prune": {"source": str(src), "importance": "l1_next",
                                            "sparsity": {"layers": ["stage9"]}}, "eval": {"every": 0}})
    with pytest.raises(FacekdError, match=r"prune\.sparsity\.layers: stage9 not a module of"):
        run_prune(cfg, tmp_path / "run", say=lambda _: None)
    assert not (tmp_path / "run").exists()
