"""facekd demo's pieces: the model comparison (sizes, ONNX Runtime timing, speed-ups,
recorded figures), the shipped-student manifest kind, --distill's data check, and
training photos aligned by the detector a config names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from facekd.errors import FacekdError
from facekd.experiments.compare import ComparedModel, compare, comparison_table, onnx_params, time_onnx
from facekd.hub.resolved import ResolvedModel
from facekd.preprocessing import Preprocessing


def _matmul_model(path: Path, width: int, layers: int) -> Path:
    """An ONNX "embedder" of (1, 3, 4, 4) inputs: flatten, then ``layers`` width x width MatMuls."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Flatten", ["x"], ["h0"])]
    inits = [numpy_helper.from_array(rng.standard_normal((48, width)).astype(np.float32), "w0")]
    nodes.append(helper.make_node("MatMul", ["h0", "w0"], ["h1"]))
    for i in range(1, layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) / width, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor_value_info(f"h{layers}", TensorProto.FLOAT, ["n", width])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_params_counts_every_initializer_element(tmp_path):
    path = _matmul_model(tmp_path / "m.onnx", width=10, layers=3)
    assert onnx_params(path) == 48 * 10 + 2 * 10 * 10


def test_a_model_with_a_hundred_times_the_work_times_slower(tmp_path):
    small = _matmul_model(tmp_path / "small.onnx", width=16, layers=1)
    big = _matmul_model(tmp_path / "big.onnx", width=512, layers=6)  # ~1.6 M MACs against 768
    ms = time_onnx({"small": small, "big": big}, rounds=5)
    assert ms["big"] > 3 * ms["small"] > 0


def _onnx_model(name: str, path: Path) -> ResolvedModel:
    return ResolvedModel(name, Preprocessing(), path=path)


def test_a_student_gets_its_teachers_recorded_latency_as_speed_up_when_the_teacher_is_absent(tmp_path):
    student = ComparedModel("s", "student", _onnx_model("s", _matmul_model(tmp_path / "s.onnx", 16, 1)), teacher="t")
    teacher = ComparedModel("t", "teacher", None, recorded={"ms": 100.0, "params": 23_500_000, "mb": 89.6,
                                                             "lfw_flip": 99.02, "lfw_flip_std": 0.4})
    rows = {r.model: r for r in compare([teacher, student], tmp_path / "onnx")}
    s, t = rows["s"], rows["t"]
    assert s.params == 48 * 16 and s.recorded == ()
    assert s.mb == pytest.approx((tmp_path / "s.onnx").stat().st_size / 2**20)
    assert s.speedup == pytest.approx(100.0 / s.ms)
    assert t.ms == 100.0 and t.speedup is None and set(t.recorded) == {"ms", "params", "mb", "lfw_flip"}
    lines = comparison_table([t, s])
    assert "99.02±0.40*" in lines[1].replace(" ", "") and lines[-1].startswith("* recorded")
    assert "studentoft" in lines[2].replace(" ", "")


def test_a_shipped_model_that_says_what_it_is_keeps_that_role_and_its_speed_up(tmp_path):
    """A teacher's own INT8 (manifest role "INT8 of t") is not called its student."""
    q = ComparedModel("t_int8", "INT8 of t", _onnx_model("q", _matmul_model(tmp_path / "q.onnx", 16, 1)), teacher="t")
    teacher = ComparedModel("t", "teacher", None, recorded={"ms": 100.0})
    rows = {r.model: r for r in compare([teacher, q], tmp_path / "onnx")}
    assert rows["t_int8"].speedup == pytest.approx(100.0 / rows["t_int8"].ms)
    line = comparison_table([rows["t"], rows["t_int8"]])[2]
    assert "INT8 of t" in line and "student" not in line


def test_a_registered_backbone_is_exported_for_timing(tmp_path):
    import torch

    from facekd.hub import resolve

    ref = resolve("student5", random_weights=True)
    model = ComparedModel("student5", "student", ref)
    row = compare([model], tmp_path / "onnx")[0]
    # batch norm and the linear layer's batch norm fold into the exported weights: fewer
    # elements than PyTorch's parameters plus buffers, more than the convs alone
    convs = sum(m.weight.numel() for m in ref.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert convs < row.params <= sum(p.numel() for p in ref.backbone.parameters())
    assert (tmp_path / "onnx" / "student5.onnx").is_file() and row.ms > 0


def test_distill_needs_the_dev_photos_and_names_what_is_missing(tmp_path):
    from facekd.experiments.quick import check_distill_data

    (tmp_path / "celeba-10k").mkdir()
    with pytest.raises(FacekdError, match=r"celeba-wild is missing"):
        check_distill_data(tmp_path)
    (tmp_path / "celeba-wild").mkdir()
    check_distill_data(tmp_path)


def test_the_demo_config_loads_with_the_cpu_recipe():
    from facekd.config import load_config
    from facekd.distill.config import DistillConfig
    from facekd.paths import bundled_config

    cfg = load_config(DistillConfig, bundled_config("distill/demo_cpu.yaml"))
    assert cfg.model.backbone == "student5" and cfg.teacher.model == "mobilefacenet"
    assert cfg.data.detector == "yunet" and cfg.eval.every == 0 and cfg.distill.adapter == "lift"
    assert [t.name for t in cfg.distill.terms] == ["hard", "featurenorm"]


def test_shipped_weights_are_checked_against_the_manifest(tmp_path, monkeypatch):
    import facekd.weights as weights

    model = _matmul_model(tmp_path / "tiny.onnx", 8, 1)
    from facekd.download import sha256_of

    entry = {"architecture": "student5", "format": "onnx", "shipped": "tiny.onnx", "sha256": sha256_of(model),
             "teacher": {"model": "mobilefacenet"}, "licence": "test", "reproduce": "a test"}
    detector = {"architecture": "face_detector", "format": "onnx", "shipped": "det.onnx", "sha256": "0" * 64}
    (tmp_path / "manifest.json").write_text(json.dumps({"tiny_student": entry, "a_detector": detector}))
    monkeypatch.setattr(weights, "_manifest_path", lambda: tmp_path / "manifest.json")
    weights.manifest.cache_clear()
    try:
        from facekd.hub import resolve

        assert weights.onnx_models() == ["tiny_student"]  # a shipped detector is no embedder
        assert weights.default_weights_for("student5") is None  # an ONNX student is not weights to load
        r = resolve("tiny_student")
        assert r.path == tmp_path / "tiny.onnx" and r.backbone is None
        shutil.copy(_matmul_model(tmp_path / "other.onnx", 8, 2), tmp_path / "tiny.onnx")
        with pytest.raises(FacekdError, match="tiny.onnx: sha256 .* is not the manifest's"):
            resolve("tiny_student")
    finally:
        weights.manifest.cache_clear()


def test_demo_distill_keeps_only_the_best_student_of_its_own_teacher(tmp_path, monkeypatch):
    import facekd.weights as weights
    from facekd.download import sha256_of
    from facekd.experiments.compare import shipped_students

    entries = {}
    for name, teacher, flip in (("s_from_a", "teacher_a", 96.5), ("s_from_b", "teacher_b", 99.0),
                                ("s2_from_a", "teacher_a", 98.7)):
        model = _matmul_model(tmp_path / f"{name}.onnx", 8, 1)
        entries[name] = {"architecture": "student5", "format": "onnx", "shipped": f"{name}.onnx",
                         "sha256": sha256_of(model), "teacher": {"model": teacher}, "licence": "test",
                         "reproduce": "a test", "lfw": {"flip": flip}}
    (tmp_path / "manifest.json").write_text(json.dumps(entries))
    monkeypatch.setattr(weights, "_manifest_path", lambda: tmp_path / "manifest.json")
    weights.manifest.cache_clear()
    try:
        said = []
        pairs = shipped_students(say=said.append, only_teacher="teacher_a")
        assert [(s.name, t.name) for s, t in pairs] == [("s2_from_a", "teacher_a")]  # 98.7 beats 96.5
        assert any(m.startswith("s_from_b left out") for m in said)
        assert any(m.startswith("s_from_a left out") for m in said)
        assert len(shipped_students(say=said.append)) == 3
    finally:
        weights.manifest.cache_clear()


def test_training_photos_are_aligned_by_the_configured_detector(data_dir, yunet_weights):
    from facekd.align.folder import REPORT_NAME
    from facekd.config import from_dict
    from facekd.train.config import DataCfg
    from facekd.train.data import build_train_set

    cfg = from_dict(DataCfg, {"root": str(data_dir), "train": ["celeba-wild"], "max_identities": 2, "detector": "yunet"})
    data = build_train_set(cfg, "112x96")
    assert len(data) >= 2 and len(data.identities) == 2
    from facekd.evaluation.pairs import aligned_folder_for

    folder = aligned_folder_for(data_dir / "celeba-wild", "112x96", "yunet")
    assert folder.name.endswith("yunet@77px") and data.describe(0).startswith(str(folder))
    report = json.loads((folder / REPORT_NAME).read_text())
    assert report["detector"] == "yunet" and report["aligned"] >= len(data)
    assert not aligned_folder_for(data_dir / "celeba-wild", "112x96", "mtcnn").exists()  # nothing cut by MTCNN


def test_every_shipped_embedder_names_its_teacher_and_no_detector_is_taken_for_one():
    """The real manifest: the demo, the board and `facekd models` treat onnx_models() as
    students with a teacher (shipping the yunet_mtcnn detector made `make demo` stop with
    KeyError 'teacher' until detectors were left out of it)."""
    from facekd.weights import DETECTOR_ARCHITECTURE, manifest, onnx_models

    students = onnx_models()
    assert students and all("model" in manifest()[n]["teacher"] for n in students)
    detectors = [n for n, e in manifest().items() if e.get("architecture") == DETECTOR_ARCHITECTURE]
    assert "yunet_mtcnn" in detectors and not set(detectors) & set(students)
