"""Structured pruning (``facekd prune``): every prunable registered backbone stays runnable,
rebuildable from its checkpoint and exportable; the refused ones still fail; the Taylor
criterion against a hand computation; a whole iterative run with recovery and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("torch_pruning", reason="pruning needs the prune extra (torch-pruning)")

import torch_pruning as tp  # noqa: E402

from facekd.errors import FacekdError  # noqa: E402
from facekd.models import BACKBONES, BackboneCfg, backbone_cfg, build_backbone  # noqa: E402
from facekd.models.profile import count_params  # noqa: E402
from facekd.prune.core import REFUSED, StepPlan, check_supported, output_layer, prune_once, step_ratio  # noqa: E402
from facekd.prune.importance import taylor_scores  # noqa: E402

# Default suite: one backbone per kind of layer coupling (plain convs + flatten, residual
# PReLU, depthwise + batch norm, concatenation); the rest, seconds each, run with -m slow.
FAST = {"student5", "resnet27_c10", "mobilefacenet", "squeezenet1_1"}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n not in FAST else n for n in names]


@pytest.mark.parametrize("name", _params([n for n in BACKBONES.names() if n not in REFUSED]))
def test_pruned_backbone_runs_reloads_and_exports(name, tmp_path):
    from facekd.deploy.export import check_parity, export_onnx, synthetic_inputs
    from facekd.hub import resolve
    from facekd.train.checkpoint import model_checkpoint, save_checkpoint

    torch.manual_seed(0)
    net = build_backbone(name).eval()
    cfg = backbone_cfg(name)
    before = count_params(net)
    keep = output_layer(net)
    prune_once(net, "l1", StepPlan(0.5))
    assert count_params(net) < 0.6 * before
    x = torch.randn(2, 3, *cfg.input_size)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, cfg.embedding_dim) and torch.isfinite(out).all()
    assert keep.weight.shape[0] == cfg.embedding_dim or keep.out_channels == cfg.embedding_dim
    # The checkpoint rebuilds the pruned widths from the registered backbone.
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, model_checkpoint(net, name, {}))
    again = resolve(path).backbone
    with torch.no_grad():
        torch.testing.assert_close(again(x), out, rtol=0, atol=0)
    onnx_path = tmp_path / "pruned.onnx"
    export_onnx(net, onnx_path, input_size=cfg.input_size)
    report = check_parity(net, onnx_path, synthetic_inputs(4, cfg.input_size), batch_sizes=(1, 8), real_faces=False)
    assert report.worst >= 0.9999


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_backbones_say_why_and_really_fail(name):
    with pytest.raises(FacekdError, match=f"cannot prune {name}: .+"):
        check_supported(name)
    with pytest.raises(FacekdError, match="cannot prune"):
        prune_once(build_backbone(name), "l1", StepPlan(0.5))
    # The refusal stays true: Torch-Pruning itself still fails on this backbone.
    net = build_backbone(name).eval()
    x = torch.zeros(1, 3, *backbone_cfg(name).input_size)
    with pytest.raises(Exception):
        tp.pruner.MetaPruner(net, x, importance=tp.importance.GroupMagnitudeImportance(p=1),
                             pruning_ratio=0.5, ignored_layers=[output_layer(net)]).step()


class _Tiny(nn.Module):
    """conv(3->4) -> PReLU -> conv(4->3) -> flatten -> linear(3*4*4 -> 5)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.PReLU(4)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)
        self.cfg = BackboneCfg("tiny", input_size=(4, 4), embedding_dim=5)

    def forward(self, x):
        return self.fc(self.conv2(self.act(self.conv1(x))).flatten(1))


def test_taylor_scores_match_a_hand_computation():
    """Θ(k) = |mean over positions of a·∂L/∂a| per example, averaged over examples, then
    L2-normalised over the layer's channels (Molchanov et al. 2017), for conv2's input."""
    torch.manual_seed(0)
    net = _Tiny()
    x, y = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    loss = lambda m, x, y: F.cross_entropy(m(x), y)  # noqa: E731
    scores = taylor_scores(net, [(x[:3], y[:3]), (x[3:], y[3:])], loss)
    per_example = []
    for part in (slice(0, 3), slice(3, 6)):
        a = net.act(net.conv1(x[part]))
        out = net.fc(net.conv2(a).flatten(1))
        (g,) = torch.autograd.grad(F.cross_entropy(out, y[part]), a)
        per_example.append((a * g).mean(dim=(2, 3)).abs() * 3)  # the batch mean sums 3 examples' grads
    theta = torch.cat(per_example).mean(0)
    torch.testing.assert_close(scores[net.conv2], theta / theta.norm(), rtol=1e-5, atol=1e-7)
    assert net.conv1 not in scores  # the image is no feature map


def test_taylor_removes_a_dead_feature_map_first():
    torch.manual_seed(0)
    net = _Tiny()
    with torch.no_grad():  # channel 2 of conv1 outputs zeros: removing it changes nothing
        net.conv1.weight[2] = 0
        net.conv1.bias[2] = 0
    kept_w = net.conv1.weight.detach().clone()
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 5, (8,))
    prune_once(net, "taylor", StepPlan(0.25), [(x, y)], lambda m, x, y: F.cross_entropy(m(x), y))
    assert net.conv1.out_channels == 3 and net.conv2.in_channels == 3
    torch.testing.assert_close(net.conv1.weight.detach(), kept_w[[0, 1, 3]])


def test_step_ratios_compound_to_the_total():
    for total, steps in ((0.5, 1), (0.75, 3), (0.25, 2)):
        kept = np.prod([1 - step_ratio(total, k, steps) for k in range(1, steps + 1)])
        assert kept == pytest.approx(1 - total)


def test_unknown_importance_and_missing_loss_are_errors():
    with pytest.raises(FacekdError, match="unknown pruning importance 'fisher'; known: l1, l1_next, random, taylor"):
        prune_once(_Tiny(), "fisher", StepPlan(0.5))
    with pytest.raises(FacekdError, match="needs a loss"):
        prune_once(_Tiny(), "taylor", StepPlan(0.5))


def _source(tmp_path: Path) -> Path:
    """A tiny trained-looking student5 checkpoint with a softmax head over id0..id2."""
    from facekd.models.heads import build_head

    torch.manual_seed(0)
    args = {"widths": [8, 8, 16, 16, 16], "embedding_dim": 32}
    net = build_backbone("student5", **args)
    head = build_head("softmax", 32, 3)
    state = {**{f"backbone.{k}": v for k, v in net.state_dict().items()}, **{f"head.{k}": v for k, v in head.state_dict().items()}}
    path = tmp_path / "source.pt"
    torch.save({"format": "facekd-train-1", "backbone": "student5", "backbone_args": args, "model": state,
                "identities": ["id0", "id1", "id2"], "config": {"model": {"backbone": "student5", "backbone_args": args,
                                                                           "head": "softmax", "head_args": {}}}}, path)
    return path


def _tiny_raw(tmp_path: Path, prune: dict, data: dict | None = None, train: dict | None = None, **sections) -> dict:
    """A prune config over the synthetic pack at ``tmp_path / "p.fkpack"``: one fp32 epoch on
    the CPU, batch 4, no augmentation, no evaluation; ``data``, ``train`` and further
    sections add to (or replace) those."""
    return {
        "prune": prune,
        "data": {"train": [str(tmp_path / "p.fkpack")], "augment": {"flip": 0.0, "affine_p": 0.0, "color_p": 0.0, "gray_p": 0.0},
                 **(data or {})},
        "train": {"device": "cpu", "epochs": 1, "batch_size": 4, "log_every": 1, "precision": "fp32",
                  "channels_last": False, "compile": False, **(train or {})},
        "eval": {"every": 0},
        **sections,
    }


def test_iterative_prune_recovers_saves_and_resumes(tmp_path):
    from test_distill_run import _synthetic_pack

    from facekd.config import from_dict
    from facekd.hub import resolve
    from facekd.prune.config import PruneConfig
    from facekd.prune.run import read_result, run_prune

    _synthetic_pack(tmp_path / "p.fkpack")
    src = _source(tmp_path)
    raw = _tiny_raw(tmp_path, {"source": str(src), "importance": "taylor", "ratio": 0.5, "steps": 2, "importance_batches": 2},
                    data={"workers": 1, "loader": "workers"})
    cfg = from_dict(PruneConfig, raw)
    run = tmp_path / "run"
    said: list[str] = []
    result = run_prune(cfg, run, say=said.append)
    assert [r.step for r in result.steps] == [1, 2] and [r.removed for r in result.steps] == [0.25, 0.5]
    assert result.source_params > result.steps[0].params > result.steps[1].params
    assert result.steps[1].macs < result.source_macs
    # Each step recovered by facekd distill's loop, FeatureNorm against the unpruned source.
    log = [json.loads(line) for line in (run / "step2" / "metrics.jsonl").read_text().splitlines()]
    assert any("featurenorm" in rec for rec in log)
    final = resolve(run / "pruned.pt").backbone
    assert count_params(final) == result.steps[1].params
    assert final(torch.zeros(2, 3, 112, 96)).shape == (2, 32)
    assert read_result(run).to_dict() == result.to_dict()
    assert sum("teacher outputs:" in s for s in said) == 1  # one teacher, built once, for both steps
    # A finished run resumes to the same table without pruning or training again; a
    # second run into the same folder is refused.
    before = (run / "step1" / "pruned.pt").stat().st_mtime_ns
    again = run_prune(cfg, run, resume=True, say=said.append)
    assert again.to_dict() == result.to_dict()
    assert (run / "step1" / "pruned.pt").stat().st_mtime_ns == before
    with pytest.raises(FacekdError, match="already holds a pruning run"):
        run_prune(cfg, run)


def test_regression_prune_resumes_a_step_killed_before_its_first_checkpoint(tmp_path):
    """A kill during a step's recovery before its first checkpoint leaves the step's pruned
    model and its log; ``--resume`` refused the step ("already holds a run") instead of
    recovering it (issue 30's kill sweep: 1 rerun of 13). The rerun now ends with the
    uninterrupted run's weights."""
    import shutil

    from test_distill_run import _synthetic_pack

    from facekd.config import from_dict
    from facekd.prune.config import PruneConfig
    from facekd.prune.run import run_prune
    from facekd.train.checkpoint import load_checkpoint

    _synthetic_pack(tmp_path / "p.fkpack")
    raw = _tiny_raw(tmp_path, {"source": str(_source(tmp_path)), "importance": "l1", "ratio": 0.5, "steps": 1},
                    data={"loader": "memory"}, train={"threads": 1})
    cfg = from_dict(PruneConfig, raw)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_prune(cfg, whole, say=lambda _: None)
    # What the kill left: step 1 pruned, its recovery started (a log), no checkpoint yet.
    shutil.copytree(whole, killed)
    (killed / "prune.json").unlink()
    (killed / "pruned.pt").unlink()
    shutil.rmtree(killed / "step1" / "checkpoints")
    (killed / "step1" / "metrics.jsonl").write_text("")
    run_prune(cfg, killed, resume=True, say=lambda _: None)
    a, b = load_checkpoint(whole / "pruned.pt")["model"], load_checkpoint(killed / "pruned.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_facekd_export_takes_a_pruned_checkpoint(tmp_path):
    """The CLI's export path (hub -> ONNX with metadata -> parity check) on a pruned model;
    the ONNX embedder then gives the pruned PyTorch model's embeddings."""
    from facekd.cli import main
    from facekd.evaluation.embed import OnnxEmbedder, TorchEmbedder
    from facekd.train.checkpoint import model_checkpoint, save_checkpoint

    torch.manual_seed(0)
    args = {"widths": [8, 8, 16, 16, 16], "embedding_dim": 32}
    net = build_backbone("student5", **args).eval()
    prune_once(net, "random", StepPlan(0.5))
    ckpt = tmp_path / "pruned.pt"
    save_checkpoint(ckpt, model_checkpoint(net, "student5", args))
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "p.onnx"), "--no-threshold"]) == 0
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 96, 3), dtype=np.uint8)
    ref = TorchEmbedder(net, net.cfg.pre, "pruned", device="cpu", optimize=False)(crops)
    got = OnnxEmbedder(tmp_path / "p.onnx")(crops)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_random_importance_repeats_per_seed_and_differs_across_seeds(tmp_path):
    """The random control is a draw of the run's seed: the same seed removes the same
    filters whatever the global generator held before, another seed removes others."""
    from test_distill_run import _synthetic_pack

    from facekd.config import from_dict
    from facekd.prune.config import PruneConfig
    from facekd.prune.run import run_prune

    _synthetic_pack(tmp_path / "p.fkpack")
    src = _source(tmp_path)

    def pruned(seed: int, name: str) -> dict:
        raw = _tiny_raw(tmp_path, {"source": str(src), "importance": "random", "ratio": 0.5, "steps": 1},
                        data={"workers": 1, "loader": "workers"}, train={"seed": seed})
        torch.rand(int(torch.randint(1, 100, (1,))))  # disturb the global generator
        run_prune(from_dict(PruneConfig, raw), tmp_path / name, say=lambda _: None)
        return torch.load(tmp_path / name / "step1" / "pruned.pt", weights_only=True)["model"]

    a, b, c = pruned(0, "a"), pruned(0, "b"), pruned(1, "c")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_surgery_alone_is_recovered_and_rebuilds_from_the_checkpoint(tmp_path):
    """prune.ratio 0 with prune.surgery: the source's PReLUs become ReLUs, one recovery
    epoch distils it from the unchanged source, and the saved model rebuilds without them."""
    from test_distill_run import _synthetic_pack

    from facekd.config import from_dict
    from facekd.hub import resolve
    from facekd.prune.config import PruneConfig
    from facekd.prune.run import run_prune

    _synthetic_pack(tmp_path / "p.fkpack")
    torch.manual_seed(0)
    net = build_backbone("mobilefacenet")
    src = tmp_path / "mfn.pt"
    torch.save({"format": "facekd-train-1", "backbone": "mobilefacenet", "backbone_args": {},
                "model": {f"backbone.{k}": v for k, v in net.state_dict().items()}, "identities": [],
                "config": {"model": {"backbone": "mobilefacenet", "backbone_args": {}, "head": "softmax", "head_args": {}}}},
               src)
    prelu_params = sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.PReLU))
    raw = _tiny_raw(tmp_path, {"source": str(src), "importance": "l1", "ratio": 0.0, "surgery": ["prelu_to_relu"]},
                    data={"workers": 1, "loader": "memory"})
    result = run_prune(from_dict(PruneConfig, raw), tmp_path / "run", say=lambda s: None)
    assert result.steps[0].params == count_params(net) - prelu_params
    final = resolve(tmp_path / "run" / "pruned.pt").backbone
    assert not any(isinstance(m, nn.PReLU) for m in final.modules())
    assert [r["name"] for r in final.transforms] == ["surgery"] and final.transforms[0]["ops"] == ["prelu_to_relu"]
    bad = dict(raw, prune=dict(raw["prune"], surgery=[]))
    with pytest.raises(FacekdError, match="0 only with prune.surgery"):
        run_prune(from_dict(PruneConfig, bad), tmp_path / "run2")
    # Recovery alone continues the ReLU model from the unchanged source as teacher: the
    # structure stays (no PReLU, the surgery record kept) and the weights move toward it.
    relu = tmp_path / "run" / "pruned.pt"
    more = _tiny_raw(tmp_path, {"source": str(relu), "importance": "l1", "ratio": 0.0},
                     data={"workers": 1, "loader": "memory"}, teacher={"model": str(src)})
    run_prune(from_dict(PruneConfig, more), tmp_path / "run3", say=lambda s: None)
    again = resolve(tmp_path / "run3" / "pruned.pt").backbone
    assert not any(isinstance(m, nn.PReLU) for m in again.modules())
    assert [r["name"] for r in again.transforms] == ["surgery"]
    before, after = final.state_dict(), again.state_dict()
    assert before.keys() == after.keys()
    assert not all(torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_quantisation_aware_recovery_rounds_while_training_and_saves_a_plain_model(tmp_path):
    """prune.qat: every conv and linear layer of the pruned model rounds during the
    recovery (the count said is the model's own), and the checkpoint loads as a plain
    model whose weights moved."""
    from test_distill_run import _synthetic_pack

    from facekd.config import from_dict
    from facekd.hub import resolve
    from facekd.models.fakequant import FakeQuantConv2d, FakeQuantLinear
    from facekd.prune.config import PruneConfig
    from facekd.prune.run import run_prune

    _synthetic_pack(tmp_path / "p.fkpack")
    src = _source(tmp_path)
    raw = _tiny_raw(tmp_path, {"source": str(src), "importance": "l1", "ratio": 0.5, "qat": {"weight_bits": 7}},
                    data={"workers": 1, "loader": "memory"})
    said: list[str] = []
    run_prune(from_dict(PruneConfig, raw), tmp_path / "run", say=said.append)
    before = resolve(tmp_path / "run" / "step1" / "pruned.pt").backbone
    layers = sum(type(m) in (nn.Conv2d, nn.Linear) for m in before.modules())
    assert any(f"quantisation-aware recovery: {layers} layers" in s for s in said), said
    assert not any("eager (train.compile auto" in s for s in said)  # the tiny config pins compile: false
    after = resolve(tmp_path / "run" / "pruned.pt").backbone
    assert not any(isinstance(m, (FakeQuantConv2d, FakeQuantLinear)) for m in after.modules())
    a, b = before.state_dict(), after.state_dict()
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_a_qat_weight_width_onnxruntime_has_no_grid_for_is_refused_when_the_config_loads(tmp_path):
    from facekd.config import from_dict
    from facekd.prune.config import PruneConfig

    raw = _tiny_raw(tmp_path, {"source": "mobilefacenet", "ratio": 0.0, "qat": {"weight_bits": 6}})
    with pytest.raises(FacekdError, match=r"prune\.qat\.weight_bits: 6 is not one of 7, 8"):
        from_dict(PruneConfig, raw)
    assert from_dict(PruneConfig, {**raw, "prune": {**raw["prune"], "qat": {"weight_bits": 8}}}).prune.qat.weight_bits == 8
