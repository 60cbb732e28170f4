"""Teachers built once from registered sources and handed to the objectives: every source
and view against targets computed here from the teacher network, the exported-outputs
and ONNX sources against the PyTorch teacher, and one teacher for a whole pruning run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_distill_run import _cfg, _synthetic_pack, _teacher_checkpoint

from facekd.distill.teacher_sources import TEACHER_SOURCES, TEACHER_VIEWS, CachedTeacher, OnlineTeacher, teacher_for
from facekd.errors import FacekdError
from facekd.train.data import build_train_set

CPU = torch.device("cpu")


def _setup(tmp_path: Path, **distill):
    _synthetic_pack(tmp_path / "p.fkpack")
    _teacher_checkpoint(tmp_path / "teacher.pt")
    cfg = _cfg(tmp_path, teacher_mode="cache", **distill)
    return cfg, build_train_set(cfg.data, "112x96")


def _by_hand(tmp_path: Path, data) -> torch.Tensor:
    """The teacher network's embeddings of every training crop, computed here."""
    from facekd.hub import resolve

    net = resolve(tmp_path / "teacher.pt").backbone.eval()
    x = torch.from_numpy(np.stack([data.image(i) for i in range(len(data))])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return net((x - 127.5) / 128.0)


def _export(cfg, data, path: Path) -> None:
    """What eval/export_teacher_outputs.py writes, for ``cfg``'s teacher and data."""
    from facekd.distill.teacher import ExportedOutputs, load_teacher, teacher_embeddings, write_exported

    t = load_teacher(cfg.teacher, data.identities, CPU)
    emb = teacher_embeddings(t, data, say=lambda s: None)
    write_exported(path, ExportedOutputs(embeddings=emb, teacher=t.name, key=t.key, template=t.template, mean=t.mean,
                                         std=t.std, labels=torch.from_numpy(data.labels), identities=data.identities))


def _source_cfg(name: str, cfg, tmp_path: Path, data):
    if name == "exported":
        _export(cfg, data, tmp_path / "t.pt")
        return dataclasses.replace(cfg.teacher, source="exported", outputs=str(tmp_path / "t.pt"))
    if name == "ensemble":
        from facekd.distill.config import TeacherMember

        member = TeacherMember(model=str(tmp_path / "teacher.pt"))
        return dataclasses.replace(cfg.teacher, source="ensemble", model="", members=[member, member])
    return dataclasses.replace(cfg.teacher, source=name)


@pytest.mark.parametrize("name", TEACHER_SOURCES.names())
def test_every_teacher_source_gives_the_teacher_networks_targets(name, tmp_path):
    cfg, data = _setup(tmp_path)
    cfg = dataclasses.replace(cfg, teacher=_source_cfg(name, cfg, tmp_path, data))
    teacher = teacher_for(cfg, data, CPU, say=lambda s: None)
    ref = _by_hand(tmp_path, data)
    out = teacher(None, torch.arange(len(data)))
    assert teacher.mode == "cache" and teacher.template == "112x96"
    assert out.logits.shape == (12, 3)  # soft terms need logits: a classifier was fitted
    got = out.embedding
    if name == "ensemble":  # two copies of one member: each half is its unit embedding
        assert teacher.embedding_dim == 64
        unit = F.normalize(ref, dim=1)
        torch.testing.assert_close(got, torch.cat([unit, unit], 1), atol=2e-3, rtol=0)
    else:
        assert teacher.embedding_dim == 32
        torch.testing.assert_close(got, ref, atol=2e-2 * ref.abs().max().item(), rtol=0)  # fp16 cache


def test_the_exported_source_teaches_exactly_as_the_teacher_and_refuses_other_data(tmp_path):
    """The outputs file (the path the shipped students were trained through: FeatureNorm,
    no teacher logits) gives the same targets and losses as the teacher itself."""
    from facekd.distill.objective import make_distill_objective

    cfg, data = _setup(tmp_path, terms=[{"name": "hard"}, {"name": "featurenorm", "weight": 10.0}])
    torch.manual_seed(0)
    ref = make_distill_objective(cfg, data, CPU, say=lambda s: None)
    _export(cfg, data, tmp_path / "t.pt")
    (tmp_path / "teacher.pt").unlink()  # the teacher is gone
    exported = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, outputs=str(tmp_path / "t.pt")))
    torch.manual_seed(0)
    got = make_distill_objective(exported, data, CPU, say=lambda s: None)
    assert torch.equal(got.teacher.source.embeddings, ref.teacher.source.embeddings)  # 32-d lifted to 512-d
    x, y, idx = torch.randn(4, 3, 112, 96), torch.from_numpy(data.labels[:4]), torch.arange(4)
    a, b = ref(x, y, idx), got(x, y, idx)
    assert set(a) == {"hard", "featurenorm"} and {k: v.item() for k, v in a.items()} == {
        k: v.item() for k, v in b.items()}

    _synthetic_pack(tmp_path / "q.fkpack", n=9)
    other = build_train_set(dataclasses.replace(cfg.data, train=[str(tmp_path / "q.fkpack")]), "112x96")
    with pytest.raises(FacekdError, match="t.pt: exported for 12 crops"):
        teacher_for(exported, other, CPU, say=lambda s: None)
    with pytest.raises(FacekdError, match="cached outputs"):
        teacher_for(dataclasses.replace(exported, distill=dataclasses.replace(cfg.distill, teacher_mode="online")),
                    data, CPU, say=lambda s: None)


def test_an_onnx_teacher_gives_the_pytorch_teachers_targets(tmp_path):
    from facekd.cli import main

    cfg, data = _setup(tmp_path, terms=[{"name": "featurenorm", "weight": 1.0}])
    onnx = tmp_path / "teacher.onnx"
    assert main(["export", str(tmp_path / "teacher.pt"), "--onnx", str(onnx), "--no-threshold"]) == 0
    cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, model=str(onnx)))
    teacher = teacher_for(cfg, data, CPU, say=lambda s: None)
    ref = _by_hand(tmp_path, data)
    got = teacher(None, torch.arange(len(data))).embedding
    cos = F.cosine_similarity(got, ref, dim=1)  # an exported embedder may give unit embeddings
    assert teacher.embedding_dim == 32 and cos.min() > 0.999


@pytest.mark.parametrize("name", TEACHER_VIEWS.names())
def test_every_teacher_view_changes_the_targets_as_it_says(name):
    g = torch.Generator().manual_seed(0)
    emb = (torch.randn(10, 8, generator=g) + 3.0).to(torch.float16)
    base = CachedTeacher("t", emb, None, template="112x96")
    idx = torch.arange(10)
    if name == "centred":
        view = TEACHER_VIEWS.build(name, teacher=base, say=lambda s: None)
        x = emb.float()
        torch.testing.assert_close(view(None, idx).embedding, x - x.mean(0), atol=1e-2, rtol=0)
    elif name == "tapped":  # an online teacher's embedding as it is, plus its named layers' outputs
        with pytest.raises(FacekdError, match="teacher_mode=online"):
            TEACHER_VIEWS.build(name, teacher=base, layers=("0",))
        net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 8)).eval()
        online = OnlineTeacher("t", net, None, template="112x96", embedding_dim=8)
        view = TEACHER_VIEWS.build(name, teacher=online, layers=("1",))
        x = emb.float()
        out = view(x, idx)
        with torch.no_grad():
            torch.testing.assert_close(out.embedding, net(x))
            torch.testing.assert_close(out.features["1"], torch.tanh(x @ net[0].weight.T + net[0].bias))
        assert view.name == "t" and view.mode == "online"
        return
    else:
        view = TEACHER_VIEWS.build(name, teacher=base, width=32)
        out, raw = view(None, idx).embedding, emb.float()
        assert view.embedding_dim == 32 and out.shape == (10, 32)
        torch.testing.assert_close(out.norm(dim=1), raw.norm(dim=1), atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(out @ out.T, raw @ raw.T, atol=5e-2, rtol=1e-4)
        with pytest.raises(FacekdError, match="cannot be lifted"):
            TEACHER_VIEWS.build(name, teacher=base, width=4)
    assert view.name == "t" and view.mode == "cache"


def test_one_teacher_is_handed_to_the_distill_and_multiexit_objectives(tmp_path):
    """Built once, the same object reaches every objective: nothing reloads it, nothing
    reaches into another objective for it."""
    from facekd.distill.objective import build_objective, match_width
    from facekd.distill.losses import build_terms
    from facekd.models import build_backbone
    from facekd.models.heads import build_head

    cfg, data = _setup(tmp_path, adapter="learned")
    said: list[str] = []
    teacher = teacher_for(cfg, data, CPU, say=said.append)
    assert sum("teacher outputs:" in s for s in said) == 1
    backbone = build_backbone("student5", widths=[4, 8, 8, 8, 16])
    obj = build_objective(backbone, build_head("softmax", 512, 3), teacher, cfg.distill, say=said.append)
    assert obj.teacher is teacher and obj.adapter.weight.shape == (32, 512)
    assert "teacher" not in dict(obj.named_children()) and not any("teacher" in k for k in obj.state_dict())
    terms = obj(torch.randn(4, 3, 112, 96), torch.tensor([0, 1, 2, 0]), torch.arange(4))
    assert {"hard", "soft", "featurenorm"} == set(terms)
    # The lift view wraps the very same object for a narrower teacher.
    lifted, adapt_to = match_width(teacher, 512, build_terms(cfg.distill.terms), "lift")
    assert adapt_to is None and lifted.source is teacher and lifted.embedding_dim == 512
    with pytest.raises(FacekdError, match="no teacher was given"):
        build_objective(backbone, build_head("softmax", 512, 3), None, cfg.distill)


def test_the_training_set_identity_keys_the_teacher_cache(tmp_path):
    """The cache key reads the typed record: another teacher crop set is another key;
    the same set is the same key, as earlier versions computed it."""
    import hashlib

    from facekd.distill.teacher import data_fingerprint

    cfg, data = _setup(tmp_path)
    ident = data.identity
    assert ident.sources == (str(tmp_path / "p.fkpack"),) and ident.template == "112x96"
    assert ident.detector == cfg.data.detector and ident.teacher_crops == ""
    h = hashlib.sha256()  # the key as facekd computed it before the record existed
    p = tmp_path / "p.fkpack"
    h.update(f"{p}:{p.stat().st_size}".encode())
    h.update(data.labels.tobytes())
    for i in range(len(data)):
        h.update(data.describe(i).encode())
    assert data_fingerprint(data) == h.hexdigest()
    assert [data.name(i) for i in range(3)] == ["id0/0.jpg", "id0/3.jpg", "id0/6.jpg"]

    class View:  # the same crops seen through a teacher's own crop set
        identity = dataclasses.replace(ident, teacher_crops="abc")
        labels = data.labels
        describe = data.describe

        def __len__(self) -> int:
            return len(data)

    assert data_fingerprint(View()) != data_fingerprint(data)


def test_terms_exit_points_and_teacher_sources_are_typed_and_refuse_what_they_do_not_know(tmp_path):
    from facekd.config import load_config
    from facekd.distill.losses import TermCfg
    from facekd.models.exits import ExitCfg
    from facekd.multiexit.config import MultiExitConfig

    path = tmp_path / "c.yaml"
    path.write_text("distill:\n  terms: [{name: soft, weight: 2, tau: 3}]\nexits:\n  points: [{at: features.4, width: 8}]\n")
    cfg = load_config(MultiExitConfig, path)
    assert cfg.distill.terms == [TermCfg(name="soft", weight=2.0, tau=3.0)]
    assert cfg.exits.points == [ExitCfg(at="features.4", width=8)]
    with pytest.raises(FacekdError, match=r"terms\[0\].*unknown key temperature"):
        load_config(MultiExitConfig, path, ["distill.terms=[{name: soft, temperature: 3}]"])
    with pytest.raises(FacekdError, match=r"points\[0\].*unknown key widht"):
        load_config(MultiExitConfig, path, ["exits.points=[{at: features.4, widht: 8}]"])
    with pytest.raises(FacekdError, match="distill.terms soft: .*unexpected keyword argument 'epsilon'"):
        from facekd.distill.losses import build_terms

        build_terms([TermCfg(name="soft", epsilon=0.1)])
    cfg, data = _setup(tmp_path)
    odd = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, source="onnxx"))
    with pytest.raises(FacekdError, match="unknown teacher source 'onnxx'; known: ensemble, exported, model"):
        teacher_for(odd, data, CPU, say=lambda s: None)


def test_mixup_blends_one_view_for_student_and_teacher():
    """Function matching: the online teacher is shown exactly the blended batch the
    student is; each blend is a convex combination of two images of the batch."""
    from facekd.distill.config import DistillCfg, TermCfg
    from facekd.distill.losses import Outputs
    from facekd.distill.objective import build_objective
    from facekd.distill.teacher_sources import Teacher
    from facekd.models import build_backbone
    from facekd.models.heads import build_head

    seen: dict[str, torch.Tensor] = {}

    class Recording(Teacher):
        name, embedding_dim, template, mode = "recording", 512, "112x96", "online"

        def outputs(self, x, index):
            seen["teacher"] = x.detach().clone()
            return Outputs(torch.randn(x.shape[0], 512))

    backbone = build_backbone("student5", widths=[4, 8, 8, 8, 16])
    backbone.register_forward_pre_hook(lambda m, args: seen.__setitem__("student", args[0].detach().clone()))
    cfg = DistillCfg(terms=[TermCfg(name="featurenorm", weight=1.0)], mixup=1.0)
    obj = build_objective(backbone, build_head("softmax", 512, 3), Recording(), cfg, say=lambda s: None)
    levels = torch.tensor([0.0, 10.0, 20.0, 40.0, 80.0, 160.0])  # one constant image each
    x = levels.view(6, 1, 1, 1).expand(6, 3, 112, 96).contiguous()
    torch.manual_seed(0)
    obj.train()(x, torch.zeros(6, dtype=torch.long))
    assert torch.equal(seen["student"], seen["teacher"])  # one view for both
    blend = seen["student"][:, 0, 0, 0]
    assert torch.allclose(seen["student"], blend.view(6, 1, 1, 1).expand_as(x))  # each a whole-image blend
    assert not torch.allclose(blend, levels)  # not the batch itself
    # Every blend lies between two levels: lam * a + (1 - lam) * b, lam in [0, 1].
    for v in blend.tolist():
        assert any(min(a, b) - 1e-4 <= v <= max(a, b) + 1e-4 for a in levels.tolist() for b in levels.tolist())
    obj.eval()(x, torch.zeros(6, dtype=torch.long))
    assert torch.equal(seen["teacher"], x)  # no blending outside training

    class Cached(Recording):
        mode = "cache"

    with pytest.raises(FacekdError, match="teacher_mode=online"):
        build_objective(backbone, build_head("softmax", 512, 3), Cached(), cfg, say=lambda s: None)
    labelled = dataclasses.replace(cfg, terms=[TermCfg(name="hard"), TermCfg(name="featurenorm")])
    with pytest.raises(FacekdError, match="term\\(s\\) hard read labels"):
        build_objective(backbone, build_head("softmax", 512, 3), Recording(), labelled, say=lambda s: None)


def test_the_teacher_pass_draws_a_progress_bar_with_the_teachers_name(tmp_path, capsys):
    from facekd.distill.teacher import load_teacher, teacher_embeddings

    cfg, data = _setup(tmp_path)
    t = load_teacher(cfg.teacher, data.identities, CPU)
    teacher_embeddings(t, data, say=lambda s: None)
    err = capsys.readouterr().err
    assert f"teacher outputs ({t.name})" in err and "12/12" in err
