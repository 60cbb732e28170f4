"""``facekd distill``: the teacher cache, the objective's wiring, and the CI smoke config on real faces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _synthetic_pack(path: Path, n: int = 12) -> None:
    from facekd.image_io import encode_jpeg
    from facekd.data.pack import write_pack

    yy, xx = np.mgrid[0:112, 0:96]
    items = []
    for i in range(n):
        img = np.stack([(xx * (i + 1)) % 256, (yy * 3 + i * 17) % 256, (xx * yy + i) % 256], -1).astype(np.uint8)
        items.append((f"id{i % 3}/{i}.jpg", i % 3, encode_jpeg(img, 90)))
    write_pack(path, items, ["id0", "id1", "id2"], "112x96")


def _teacher_checkpoint(path: Path, identities: list[str] | None = None) -> None:
    from facekd.models.heads import build_head
    from facekd.models import build_backbone

    torch.manual_seed(0)
    net = build_backbone("student5", widths=[4, 8, 8, 16, 16], embedding_dim=32)
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    ckpt = {"backbone": "student5", "backbone_args": {"widths": [4, 8, 8, 16, 16], "embedding_dim": 32}, "model": state}
    if identities:
        head = build_head("softmax", 32, len(identities))
        state.update({f"head.{k}": v for k, v in head.state_dict().items()})
        ckpt.update(identities=identities, config={"model": {"head": "softmax", "head_args": {}}})
    torch.save(ckpt, path)


def _cfg(tmp_path: Path, **distill):
    from facekd.config import from_dict
    from facekd.distill.config import DistillConfig

    return from_dict(DistillConfig, {
        "model": {"backbone": "student5", "backbone_args": {"widths": [4, 8, 8, 8, 16]}, "head": "softmax"},
        "teacher": {"model": str(tmp_path / "teacher.pt"), "classifier": "softmax", "classifier_args": {}},
        "data": {"train": [str(tmp_path / "p.fkpack")], "augment": {"flip": 0.0, "affine_p": 0.0, "color_p": 0.0, "gray_p": 0.0}},
        "train": {"device": "cpu"},
        "distill": distill,
    })


def test_centred_teacher_outputs_need_the_cache(tmp_path):
    import dataclasses

    from facekd.distill.objective import make_distill_objective
    from facekd.errors import FacekdError
    from facekd.train.data import build_train_set

    _synthetic_pack(tmp_path / "p.fkpack")
    _teacher_checkpoint(tmp_path / "teacher.pt")
    cfg = _cfg(tmp_path, teacher_mode="online")
    cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, center=True))
    data = build_train_set(cfg.data, "112x96")
    with pytest.raises(FacekdError, match="centred outputs .* need cached outputs"):
        make_distill_objective(cfg, data, torch.device("cpu"), lambda s: None)


def test_teacher_outputs_are_cached_and_reused(tmp_path, monkeypatch):
    from facekd.distill.objective import make_distill_objective
    from facekd.distill.teacher_sources import CachedTeacher
    from facekd.train.data import build_train_set

    _synthetic_pack(tmp_path / "p.fkpack")
    _teacher_checkpoint(tmp_path / "teacher.pt")
    cfg = _cfg(tmp_path, adapter="learned")
    data = build_train_set(cfg.data, "112x96")
    said: list[str] = []
    obj = make_distill_objective(cfg, data, torch.device("cpu"), said.append)
    assert isinstance(obj.teacher, CachedTeacher) and obj.teacher.embeddings.shape == (12, 32)
    assert any("embedding 12 crops" in s for s in said)
    assert any("fitted a softmax classifier" in s for s in said)  # the checkpoint has no head
    assert obj.adapter is not None and obj.adapter.weight.shape == (32, 512)  # 512-d student, 32-d teacher

    # The teacher's embeddings in the cache are what it computes on the crops.
    from facekd.hub import resolve

    net = resolve(tmp_path / "teacher.pt").backbone
    x = torch.from_numpy(np.stack([data.image(i) for i in range(3)])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        ref = net((x - 127.5) / 128.0)
    assert torch.allclose(obj.teacher.embeddings[:3].float(), ref, atol=2e-2 * ref.abs().max().item())

    # A second run over the same teacher and crops never embeds again.
    def boom(*a, **k):
        raise AssertionError("embedded again")

    monkeypatch.setattr("facekd.evaluation.embed.embed_images", boom)
    said.clear()
    make_distill_objective(cfg, data, torch.device("cpu"), said.append)
    assert any("reusing" in s for s in said)


def _objective(tmp_path: Path, identities: list[str] | None, **distill):
    from facekd.distill.objective import make_distill_objective
    from facekd.train.data import build_train_set

    if not (tmp_path / "p.fkpack").is_file():
        _synthetic_pack(tmp_path / "p.fkpack")
    _teacher_checkpoint(tmp_path / "teacher.pt", identities=identities)
    cfg = _cfg(tmp_path, **distill)
    data = build_train_set(cfg.data, "112x96")
    said: list[str] = []
    torch.manual_seed(0)
    return make_distill_objective(cfg, data, torch.device("cpu"), said.append), said


def test_teacher_head_is_reused_only_for_the_same_identities(tmp_path):
    obj, said = _objective(tmp_path, ["id0", "id1", "id2"], adapter="learned")
    assert not any("fitted" in s for s in said)
    # The objective's loss terms: hard (labels), soft and featurenorm (teacher), all finite.
    x = torch.randn(4, 3, 112, 96)
    terms = obj(x, torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 3]))
    assert set(terms) == {"hard", "soft", "featurenorm"} and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert obj.adapter.weight.grad is not None
    assert all(p.grad is None for p in obj.teacher.head.parameters())  # the teacher never learns

    _, said = _objective(tmp_path, ["x", "y", "z"])  # a teacher trained on other identities
    assert any("fitted" in s for s in said)


def test_teacher_weighting_scales_the_soft_term_per_sample(tmp_path):
    from facekd.distill.losses import soft_cross_entropy

    obj, _ = _objective(tmp_path, ["id0", "id1", "id2"], teacher_weighting=True, adapter="learned")
    obj.eval()
    with torch.no_grad():  # a confidently wrong teacher: large H(X_T, y), so μ < 1
        obj.teacher.head.fc.weight.mul_(-200.0)
    x, y, idx = torch.randn(4, 3, 112, 96), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 3])
    terms = obj(x, y, idx)
    with torch.no_grad():
        t = obj.teacher(x, idx)
        logits = obj.head(obj.backbone(x))
        from facekd.distill import teacher_weights

        mu = teacher_weights(t.logits, logits, y)
        per = soft_cross_entropy(t.logits, logits, 4.0)
    assert mu.min() < 1.0
    assert terms["soft"].item() == pytest.approx((mu * per).mean().item(), rel=1e-5)
    assert terms["info_mu"].item() == pytest.approx(mu.mean().item(), rel=1e-6)
    hard = torch.nn.functional.cross_entropy(logits, y)  # softmax head: margin logits = logits
    assert terms["hard"].item() == pytest.approx(hard.item(), rel=1e-5)  # never scaled by μ


def test_smoke_distill_config_runs_and_logs_each_term(data_dir, mobilefacenet_weights, tmp_path):
    """CI's distillation smoke: configs/smoke_distill.yaml as shipped."""
    run = tmp_path / "run"
    env = {**os.environ, "FACEKD_DATA": str(data_dir), "FACEKD_WEIGHTS": str(mobilefacenet_weights.parent)}
    proc = subprocess.run([sys.executable, "-m", "facekd.cli", "distill", str(REPO / "configs/smoke_distill.yaml"),
                           "--out", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(proc.stdout)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert train and all({"epoch", "step", "loss", "hard", "soft", "featurenorm", "info_mu"} <= set(r) for r in train)
    for r in train:  # the loss is the sum of the named terms (μ is logged, not added)
        assert r["loss"] == pytest.approx(r["hard"] + r["soft"] + r["featurenorm"], rel=1e-5)
    assert (run / "checkpoints/last.pt").is_file()


def test_crop_adapter_matches_adapt_crop_both_ways():
    from facekd.align.template import adapt_crop, get_template
    from facekd.distill.teacher import crop_adapter

    img = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    want = adapt_crop(img, get_template("112x112"), get_template("112x96"))
    got = crop_adapter("112x112", "112x96")(torch.from_numpy(img).permute(2, 0, 1)[None])
    assert torch.equal(got[0].permute(1, 2, 0), torch.from_numpy(want))
    back = crop_adapter("112x96", "112x112", pad_value=-1.0)(torch.from_numpy(want).permute(2, 0, 1)[None].float())
    assert back.shape == (1, 3, 112, 112) and (back[..., :8] == -1).all() and (back[..., -8:] == -1).all()
    assert torch.equal(back[0, :, :, 8:-8].permute(1, 2, 0), torch.from_numpy(want).float())


def test_a_narrower_teacher_is_lifted_by_default_and_nothing_is_learned_for_it(tmp_path):
    from facekd.distill.teacher_sources import LiftedTeacher

    obj, said = _objective(tmp_path, ["id0", "id1", "id2"])  # 32-d teacher, 512-d student
    assert obj.adapter is None and isinstance(obj.teacher, LiftedTeacher)
    assert any("teacher embedding 32-d lifted to 512-d (fixed orthonormal)" in s for s in said)
    terms = obj(torch.randn(4, 3, 112, 96), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 3]))
    assert 0.0 < terms["featurenorm"].item() and torch.isfinite(terms["featurenorm"])
