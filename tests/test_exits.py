"""Multi-exit embedders: exits attached by configuration match the backbone at the last
exit, a cut graph computes what the full pass does, the inter-exit KL term against a
hand computation, the objective's weighting, a training run, ONNX and the budget mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.distill.losses import DISTILL_LOSSES, Outputs, TermCfg
from facekd.errors import FacekdError
from facekd.models import build_backbone
from facekd.models.exits import MultiExit, select_exit

# A thin FaceResNet (widths 4, 8, 16, 32) keeps these tests to seconds.
TINY = {"base": 2, "units": [1, 1, 2, 1]}
POINTS = [{"at": "features.4"}, {"at": "features.8"}]


def _model(name: str = "resnet37_c10", args: dict | None = None, points=POINTS) -> MultiExit:
    torch.manual_seed(0)
    return MultiExit(build_backbone(name, **(TINY if args is None else args)), points)


@pytest.mark.parametrize("name,points", [("resnet37_c10", POINTS), ("student5", [{"at": "features.7"}, {"at": "features.11"}])])
def test_last_exit_is_the_backbone_and_cut_graphs_match_the_full_pass(name, points):
    args = TINY if name == "resnet37_c10" else {"widths": [4, 8, 8, 16, 16], "embedding_dim": 32}
    m = _model(name, args, points).eval()
    x = torch.randn(3, 3, 112, 96)
    with torch.no_grad():
        outs = m.forward_all(x)
        full = m.net(x)
        assert len(outs) == m.num_exits == 3
        torch.testing.assert_close(outs[-1], full, rtol=0, atol=0)
        torch.testing.assert_close(m(x), full, rtol=0, atol=0)  # default: the last exit
        for k in (1, 2):
            torch.testing.assert_close(select_exit(m, k)(x), outs[k - 1], rtol=1e-6, atol=1e-6)
    assert all(o.shape == full.shape for o in outs)


def test_an_early_exit_computes_less_and_trains_its_head():
    from facekd.models.profile import count_macs

    m = _model()
    macs = [count_macs(select_exit(m, k), (112, 96)) for k in (1, 2, 3)]
    assert macs[0] < macs[1] < macs[2] == count_macs(m.net, (112, 96))
    select_exit(m, 1)
    m.train()(torch.randn(2, 3, 112, 96)).square().sum().backward()
    assert all(p.grad is not None for p in m.heads[0].parameters())
    assert all(p.grad is None for p in m.net.features[8].parameters())  # after the exit: not run


def test_checkpoint_rebuilds_the_exits_and_bad_points_are_named(tmp_path):
    from facekd.hub import resolve
    from facekd.train.checkpoint import model_checkpoint, save_checkpoint

    m = _model().eval()
    path = tmp_path / "me.pt"
    save_checkpoint(path, model_checkpoint(m, "resnet37_c10", TINY))
    again = resolve(path).backbone
    assert isinstance(again, MultiExit) and again.points == m.points
    x = torch.randn(2, 3, 112, 96)
    with torch.no_grad():
        for a, b in zip(again.forward_all(x), m.forward_all(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(FacekdError, match="exit at .*features.99.*not a node"):
        _model(points=[{"at": "features.99"}])
    with pytest.raises(FacekdError, match="exits 1..3"):
        select_exit(m, 4)
    with pytest.raises(FacekdError, match="has no early exits"):
        select_exit(build_backbone("student5"), 1)


def test_exits_follow_the_backbones_norm_and_records_without_it_load(tmp_path):
    """A batch-norm backbone gets exits with batch norm after each conv and on the
    embedding; a backbone without gets the original layout (conv bias, PReLU, fc), which
    is also what a record written before exits had ``norm`` builds, key for key."""
    from torch import nn

    from facekd.hub import resolve
    from facekd.train.checkpoint import model_checkpoint, save_checkpoint

    bn = _model()
    assert [e["norm"] for e in bn.transforms[-1]["exits"]] == ["bn", "bn"]
    for head in bn.heads:
        convs = [m for m in head.convs if isinstance(m, nn.Conv2d)]
        assert convs and all(c.bias is None for c in convs)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in head.convs) == len(convs)
        assert isinstance(head.bn, nn.BatchNorm1d)

    plain = _model(args={**TINY, "norm": "none"}).eval()
    assert [e["norm"] for e in plain.transforms[-1]["exits"]] == ["none", "none"]
    for head in plain.heads:
        n = sum(isinstance(m, nn.Conv2d) for m in head.convs)
        old = {f"convs.{2 * i}.{p}" for i in range(n) for p in ("weight", "bias")} | {
            f"convs.{2 * i + 1}.weight" for i in range(n)} | {"fc.weight", "fc.bias"}
        assert set(head.state_dict()) == old

    ckpt = model_checkpoint(plain, "resnet37_c10", {**TINY, "norm": "none"})
    for rec in ckpt["transforms"]:
        for e in rec.get("exits", []):
            del e["norm"]  # as written before the field existed
    save_checkpoint(tmp_path / "old.pt", ckpt)
    again = resolve(tmp_path / "old.pt").backbone
    x = torch.randn(2, 3, 112, 96)
    with torch.no_grad():
        for a, b in zip(again.forward_all(x), plain.forward_all(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    chosen = _model(points=[{"at": "features.4", "norm": "none"}])
    assert not any(isinstance(m, nn.BatchNorm1d) for m in chosen.heads[0].modules())
    with pytest.raises(FacekdError, match="exit norm must be one of 'bn', 'none', 'auto', not 'group'"):
        _model(points=[{"at": "features.4", "norm": "group"}])


def test_exit_kl_matches_a_hand_computed_value():
    """τ²·Σ_c p_T(c)·log(p_T(c)/p_S(c)) with p = softmax(z/τ), by hand for two samples."""
    zs = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], requires_grad=True)
    zt = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]], requires_grad=True)
    tau = 2.0

    def softmax(row):
        e = [math.exp(v / tau) for v in row]
        return [v / sum(e) for v in e]

    per = []
    for s, t in zip(zs.tolist(), zt.tolist()):
        ps, pt = softmax(s), softmax(t)
        per.append(tau * tau * sum(a * math.log(a / b) for a, b in zip(pt, ps)))
    term = DISTILL_LOSSES.build("exit_kl", weight=0.5, tau=tau)
    got = term(Outputs(torch.zeros(2, 1), zs), Outputs(torch.zeros(2, 1), zt), torch.tensor([0, 1]))["exit_kl"]
    assert got.item() == pytest.approx(0.5 * sum(per) / 2, rel=1e-6)
    got.backward()
    assert zs.grad is not None and zt.grad is None  # the later exit is a constant teacher


def _objective(tau=(1.0, 4.0), total=10):
    from facekd.models.heads import build_head
    from facekd.multiexit.objective import MultiExitObjective

    m = _model()
    heads = [build_head("softmax", 512, 3) for _ in range(3)]
    terms = [DISTILL_LOSSES.build("hard")]
    return MultiExitObjective(m, heads, terms, DISTILL_LOSSES.build("exit_kl", tau=tau[0]), tau, total)


def test_objective_distils_each_exit_from_every_later_one():
    """(1/M)·mean over later exits t of exit_kl(m <- t), M = 3 exits; τ rises per step."""
    obj = _objective().train()
    x, y = torch.randn(4, 3, 112, 96), torch.tensor([0, 1, 2, 0])
    terms = obj(x, y)
    assert set(terms) == {"exit1_hard", "exit2_hard", "exit3_hard", "exit1_exit_kl", "exit2_exit_kl", "info_tau"}
    assert terms["info_tau"].item() == pytest.approx(1.0)
    with torch.no_grad():
        outs = obj.exit_outputs(obj.backbone.forward_all(x), y)
    kl = DISTILL_LOSSES.build("exit_kl", tau=1.0)
    pair = lambda s, t: kl(outs[s], outs[t], y)["exit_kl"].item()  # noqa: E731
    assert terms["exit1_exit_kl"].item() == pytest.approx((pair(0, 1) + pair(0, 2)) / 2 / 3, rel=1e-4)
    assert terms["exit2_exit_kl"].item() == pytest.approx(pair(1, 2) / 3, rel=1e-4)
    # The distillation reaches the earlier exits only: the last head gets no gradient from it.
    obj.zero_grad()
    (terms["exit1_exit_kl"] + terms["exit2_exit_kl"]).backward()
    assert all(p.grad is None or not p.grad.any() for p in obj.heads[2].parameters())
    assert any(p.grad is not None and p.grad.any() for p in obj.heads[0].parameters())
    for _ in range(4):
        obj(x, y)
    assert obj.temperature() == pytest.approx(1.0 + 3.0 * 5 / 10)
    assert "steps_done" in dict(obj.named_buffers())  # saved with the run: τ resumes


def test_multiexit_training_run_writes_a_loadable_checkpoint(tmp_path):
    from test_distill_run import _synthetic_pack

    from facekd.config import from_dict
    from facekd.hub import resolve
    from facekd.multiexit.config import MultiExitConfig
    from facekd.multiexit.objective import make_multiexit_objective
    from facekd.train.loop import fit

    _synthetic_pack(tmp_path / "p.fkpack")
    cfg = from_dict(MultiExitConfig, {
        "model": {"backbone": "resnet37_c10", "backbone_args": TINY, "head": "softmax"},
        "exits": {"points": POINTS, "kl_weight": 1.0, "tau_start": 1.0, "tau_end": 3.0},
        "data": {"train": [str(tmp_path / "p.fkpack")], "workers": 1, "loader": "workers",
                 "augment": {"flip": 0.0, "affine_p": 0.0, "color_p": 0.0, "gray_p": 0.0}},
        "train": {"device": "cpu", "epochs": 1, "batch_size": 4, "log_every": 1, "precision": "fp32",
                  "channels_last": False, "compile": False},
        "eval": {"every": 0},
    })
    fit(cfg, tmp_path / "run", say=lambda s: None, make_objective=make_multiexit_objective)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"exit1_hard", "exit3_hard", "exit1_exit_kl", "exit2_exit_kl"} <= set(log[-1])
    model = resolve(tmp_path / "run" / "checkpoints" / "last.pt").backbone
    assert isinstance(model, MultiExit) and model.num_exits == 3


def test_all_exits_onnx_and_the_budget_mode(tmp_path):
    import onnxruntime as ort

    from facekd.cli import main
    from facekd.multiexit.deploy import ExitCost, budget_exit, costs_to_json, export_all_exits
    from facekd.train.checkpoint import model_checkpoint, save_checkpoint

    m = _model().eval()
    report = export_all_exits(m, tmp_path / "all.onnx")
    assert report["outputs"] == ["embedding", "exit1", "exit2"] and min(report["min_cosine"].values()) >= 0.9999
    sess = ort.InferenceSession(str(tmp_path / "all.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 112, 96)).astype(np.float32)
    full, e1, e2 = sess.run(None, {"input": x})
    with torch.no_grad():
        ref = [torch.nn.functional.normalize(o, dim=1).numpy() for o in m.forward_all(torch.from_numpy(x))]
    np.testing.assert_allclose(full, ref[2], atol=1e-4)
    np.testing.assert_allclose(e1, ref[0], atol=1e-4)

    costs = [ExitCost(1, 10, 100, 2.0, 1.9, 2.2), ExitCost(2, 20, 200, 3.5, 3.4, 3.9), ExitCost(3, 30, 300, 6.0, 5.8, 6.5)]
    assert budget_exit(costs, 4.0).exit == 2 and budget_exit(costs, 100).exit == 3
    with pytest.raises(FacekdError, match="no exit fits 1 ms.*exit 1, takes 2.00 ms"):
        budget_exit(costs, 1.0)
    # The CLI: with figures from a file, the budget picks exit 2, exported as a plain embedder.
    ckpt, figures = tmp_path / "me.pt", tmp_path / "costs.json"
    save_checkpoint(ckpt, model_checkpoint(m, "resnet37_c10", TINY))
    figures.write_text(json.dumps(costs_to_json(costs)))
    assert main(["exits", str(ckpt), "--onnx", str(tmp_path / "b.onnx"), "--budget-ms", "4", "--costs", str(figures)]) == 0
    out = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(out, ref[1], atol=1e-4)


def _synthetic_aligned_lfw(root: Path) -> Path:
    """A 2-fold aligned LFW folder of noise crops: 4 same + 4 different pairs per fold."""
    from facekd.image_io import encode_jpeg
    from facekd.data.lfw import lfw_image

    rng = np.random.default_rng(0)
    lines = []
    for fold in range(2):
        lines += [f"P{fold}_{i}\t1\t2" for i in range(4)]
        lines += [f"P{fold}_{i}\t1\tQ{fold}_{i}\t1" for i in range(4)]
    for line in lines:
        p = line.split("\t")
        for rel in ([lfw_image(p[0], 1), lfw_image(p[0], 2)] if len(p) == 3 else [lfw_image(p[0], 1), lfw_image(p[2], 1)]):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(encode_jpeg(rng.integers(0, 256, (112, 96, 3), dtype=np.uint8), 90))
    (root / "pairs.txt").write_text("2\t4\n" + "\n".join(lines) + "\n")
    return root


def test_eval_lfw_answers_with_the_exit_asked_for(tmp_path, capsys):
    from facekd.cli import main
    from facekd.evaluation.pairs import evaluate_pairs
    from facekd.hub import resolve
    from facekd.train.checkpoint import model_checkpoint, save_checkpoint

    data = _synthetic_aligned_lfw(tmp_path / "lfw")
    ckpt = tmp_path / "me.pt"
    save_checkpoint(ckpt, model_checkpoint(_model(), "resnet37_c10", TINY))
    aucs = {}
    for k in (1, 3):
        out = tmp_path / f"exit{k}.json"
        assert main(["eval", "lfw", "--model", str(ckpt), "--data", str(data), "--aligned", "--exit", str(k),
                     "--json", str(out)]) == 0
        assert f"me.pt exit {k} on" in capsys.readouterr().out
        ref = resolve(ckpt)
        select_exit(ref.backbone, k)
        expected = evaluate_pairs(ref.embedder(), data, aligned=True).result
        aucs[k] = json.loads(out.read_text())["auc"]
        assert aucs[k] == pytest.approx(expected.auc)
    assert aucs[1] != aucs[3]  # the exits really differ on these pairs
    assert main(["eval", "lfw", "--model", str(ckpt), "--data", str(data), "--exit", "4"]) == 1
    assert "exits 1..3" in capsys.readouterr().err


@pytest.mark.parametrize("adapter", ["learned", "lift"])
def test_an_external_teacher_teaches_every_exit(tmp_path, adapter):
    """distill.terms that follow a teacher apply at each exit when the teacher's embedding
    is another width (32 here, the exits' 512): through per-exit adapters, or with the
    teacher's embedding lifted to 512-d (nothing learned for it)."""
    from test_distill_run import _synthetic_pack, _teacher_checkpoint

    from facekd.config import from_dict
    from facekd.multiexit.config import MultiExitConfig
    from facekd.multiexit.objective import make_multiexit_objective
    from facekd.train.data import build_train_set

    _synthetic_pack(tmp_path / "p.fkpack")
    _teacher_checkpoint(tmp_path / "teacher.pt")
    cfg = from_dict(MultiExitConfig, {
        "model": {"backbone": "resnet37_c10", "backbone_args": TINY, "head": "softmax"},
        "exits": {"points": POINTS},
        "teacher": {"model": str(tmp_path / "teacher.pt")},
        "distill": {"terms": [{"name": "hard"}, {"name": "featurenorm", "weight": 2.0}], "teacher_mode": "cache",
                    "adapter": adapter},
        "data": {"train": [str(tmp_path / "p.fkpack")], "augment": {"flip": 0.0, "affine_p": 0.0, "color_p": 0.0, "gray_p": 0.0}},
        "train": {"device": "cpu", "batch_size": 4, "epochs": 1},
    })
    data = build_train_set(cfg.data, "112x96")
    obj = make_multiexit_objective(cfg, data, torch.device("cpu"), say=lambda s: None).train()
    if adapter == "learned":
        assert obj.adapters is not None and [a.weight.shape for a in obj.adapters] == [(32, 512)] * 3
    else:
        assert obj.adapters is None and obj.teacher(None, torch.arange(4)).embedding.shape == (4, 512)
    idx = torch.arange(4)
    x = torch.stack([torch.from_numpy(data.image(i)).permute(2, 0, 1).float() for i in range(4)])
    xn = (x - 127.5) / 128.0
    terms = obj(xn, torch.from_numpy(data.labels[:4]), idx)
    assert {f"exit{k}_featurenorm" for k in (1, 2, 3)} <= set(terms)
    with torch.no_grad():  # by hand: 2 * mean(2 - 2 cos) between each exit (through its adapter) and the teacher
        teacher = obj.teacher(None, idx).embedding.float()
        for k, emb in enumerate(obj.backbone.forward_all(xn), 1):
            shown = obj.adapters[k - 1](emb.float()) if obj.adapters is not None else emb.float()
            cos = torch.nn.functional.cosine_similarity(shown, teacher, dim=1)
            assert terms[f"exit{k}_featurenorm"].item() == pytest.approx(2.0 * (2 - 2 * cos).mean().item(), rel=1e-4)


def test_exits_refuse_what_they_cannot_honour():
    """Teacher weighting and mixup are per-objective choices the exits do not implement:
    refused by name rather than silently dropped."""
    import dataclasses

    from facekd.multiexit.config import MultiExitConfig
    from facekd.multiexit.objective import make_multiexit_objective

    cfg = MultiExitConfig()
    for change, name in ((dict(mixup=1.0), "distill.mixup"), (dict(teacher_weighting=True), "teacher_weighting"),
                         (dict(terms=[TermCfg("blocks")]), "distill term blocks")):
        bad = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, **change))
        with pytest.raises(FacekdError, match=name):
            make_multiexit_objective(bad, None, torch.device("cpu"))
