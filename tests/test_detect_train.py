"""The detector distillation (issue 26): YuNet's cell parameterisation, the SPEC 4a terms
on hand-computed values, the training frames' geometry, and a tiny resumable run."""

from __future__ import annotations

import json
import math
import re
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.align.grid import FaceBoxes, assign, decode
from facekd.detect.data import FrameOptions, LabelledPhotos, frame_rng, make_frame
from facekd.detect.losses import DET_TERMS, BoundedReg, DetBatch, DetectionObjective, WeightedSoftCE, fm_nms
from facekd.detect.model import DETECTOR_NETS

SHARED = Path(os.environ.get("FACEKD_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
YUNET = Path(os.environ.get("FACEKD_WEIGHTS", SHARED.parent / "weights")) / "face_detection_yunet_2023mar.onnx"


def _empty_maps(h: int, w: int, logit: float = -30.0) -> dict[str, list[np.ndarray]]:
    sizes = [(h // s, w // s) for s in (8, 16, 32)]
    return {"cls": [np.full((1, a, b), logit) for a, b in sizes], "obj": [np.full((1, a, b), logit) for a, b in sizes],
            "bbox": [np.zeros((4, a, b)) for a, b in sizes], "kps": [np.zeros((10, a, b)) for a, b in sizes]}


def test_decode_follows_yunets_rule_on_one_cell():
    maps = _empty_maps(64, 64)
    maps["cls"][0][0, 2, 3] = maps["obj"][0][0, 2, 3] = 30.0
    maps["bbox"][0][:, 2, 3] = [0.5, 0.5, math.log(4), math.log(2)]
    maps["kps"][0][:, 2, 3] = np.arange(10) / 10
    rows = decode(maps)
    assert rows.shape == (1, 15)
    # centre ((3 + .5) * 8, (2 + .5) * 8) = (28, 20), size (4 * 8, 2 * 8) = (32, 16)
    np.testing.assert_allclose(rows[0, :4], [12, 12, 44, 28], atol=1e-9)
    np.testing.assert_allclose(rows[0, 4:6], [(3 + 0.0) * 8, (2 + 0.1) * 8])
    np.testing.assert_allclose(rows[0, 12:14], [(3 + 0.8) * 8, (2 + 0.9) * 8])
    assert rows[0, 14] == pytest.approx(1.0)


def test_assign_then_decode_returns_the_face():
    lm = np.array([[[26, 28], [38, 28], [32, 34], [27, 40], [37, 40]]], np.float32)
    faces = FaceBoxes(np.array([[16, 16, 48, 48]], np.float32), lm, np.ones(1, bool))
    t = assign(faces, 64, 64)
    # a 32 px face belongs to stride 8; priors within 12 px of (32, 32): columns and rows 3..5
    assert t["pos"][0].sum() == 9 and t["pos"][1].sum() == 0 and t["pos"][2].sum() == 0
    assert np.argwhere(t["pos"][0]).min(0).tolist() == [3, 3] and np.argwhere(t["pos"][0]).max(0).tolist() == [5, 5]
    np.testing.assert_allclose(t["bbox"][0][:, 4, 4], [0, 0, math.log(4), math.log(4)], atol=1e-6)
    maps = _empty_maps(64, 64)
    for i in range(3):
        maps["cls"][i] = np.where(t["pos"][i], 30.0, -30.0)[None]
        maps["obj"][i] = maps["cls"][i]
        maps["bbox"][i], maps["kps"][i] = t["bbox"][i], t["kps"][i]
    rows = decode(maps)
    assert len(rows) == 1  # nine identical boxes, one after NMS
    np.testing.assert_allclose(rows[0, :4], [16, 16, 48, 48], atol=1e-4)
    np.testing.assert_allclose(rows[0, 4:14].reshape(5, 2), lm[0], atol=1e-4)


@pytest.mark.skipif(not YUNET.is_file(), reason=f"YuNet weights not at {YUNET}")
def test_yunet_maps_decode_like_opencv():
    import cv2

    from facekd.align.grid import padded_size
    from facekd.detect.teacher import YunetMaps

    photo = SHARED / "cmu-mit-faces" / "images" / "voyager.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} missing")
    bgr = cv2.imread(str(photo))
    h, w = bgr.shape[:2]
    ph, pw = padded_size(h, w)
    padded = np.zeros((ph, pw, 3), np.uint8)
    padded[:h, :w] = bgr[:, :, ::-1]
    maps, hint = YunetMaps(YUNET)(padded[None])
    assert hint.shape == (1, 64, ph // 8, pw // 8)
    mine = decode({k: [m[0] for m in v] for k, v in maps.items()})
    det = cv2.FaceDetectorYN.create(str(YUNET), "", (w, h), 0.3, 0.3, 5000)
    _, ref = det.detect(bgr)
    ref = ref.copy()
    ref[:, 2:4] += ref[:, :2]
    assert len(mine) == len(ref) >= 5
    np.testing.assert_allclose(mine[np.argsort(mine[:, 0])], ref[np.argsort(ref[:, 0])], atol=1e-3)


def _batch(s_box, t_box, y_box, z_s=0.0, z_t=0.0) -> DetBatch:
    """One positive cell at stride 8 of a 32x32 frame (4x4, 2x2, 1x1 cells)."""
    sizes = [(4, 4), (2, 2), (1, 1)]
    pos = [torch.zeros(1, a, b, dtype=torch.bool) for a, b in sizes]
    pos[0][0, 1, 1] = True

    def maps(box, z):
        m = {"cls": [torch.full((1, 1, a, b), z) for a, b in sizes], "obj": [torch.full((1, 1, a, b), z) for a, b in sizes],
             "bbox": [torch.zeros(1, 4, a, b) for a, b in sizes], "kps": [torch.zeros(1, 10, a, b) for a, b in sizes]}
        m["bbox"][0][0, :, 1, 1] = torch.tensor(box)
        return m

    y = [torch.zeros(1, 4, a, b) for a, b in sizes]
    y[0][0, :, 1, 1] = torch.tensor(y_box)
    return DetBatch(student=maps(s_box, z_s), guided=torch.zeros(1, 8, 4, 4), pos=pos, box_t=y,
                    kps_t=[torch.zeros(1, 10, a, b) for a, b in sizes],
                    kps_known=[torch.zeros(1, a, b, dtype=torch.bool) for a, b in sizes], teacher=maps(t_box, z_t))


def test_bounded_regression_is_zero_once_the_student_beats_the_teacher():
    term = BoundedReg(margin=0.0)
    # ||s - y||^2 = 1 > ||t - y||^2 = 0.25: the student pays its own squared error
    assert float(term(_batch([1, 0, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 0]))) == pytest.approx(1.0)
    # the teacher is worse (4): nothing to learn from the bound
    assert float(term(_batch([1, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]))) == 0.0
    # a margin m = 3.5 makes 1 + 3.5 > 4 true again
    assert float(BoundedReg(margin=3.5)(_batch([1, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]))) == pytest.approx(1.0)


def test_weighted_soft_ce_weighs_background_by_1_5():
    b = _batch([0] * 4, [0] * 4, [0] * 4, z_s=0.0, z_t=0.0)
    cells = 16 + 4 + 1
    # per cell and head: -(1 * 0.5 * log 0.5 + 1.5 * 0.5 * log 0.5) = 1.25 ln 2; two heads; one positive
    assert float(WeightedSoftCE()(b)) == pytest.approx(2 * cells * 1.25 * math.log(2), rel=1e-5)
    assert float(WeightedSoftCE(w_background=1.0)(b)) == pytest.approx(2 * cells * math.log(2), rel=1e-5)


def test_hard_objectness_scaled_and_hint_by_hand():
    # student box (1, 0, 0, 0), teacher (0.5, 0, 0, 0), label 0, every logit 0; 21 cells, one positive
    b = _batch([1, 0, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 0], z_s=0.0, z_t=0.0)
    objective = DetectionObjective([("hard", 1.0, {}), ("objectness_scaled", 1.0, {}), ("hint", 1.0, {})],
                                   student_channels=8)
    hard, scaled, hint = objective.terms
    # hard: BCE at logit 0 is ln 2 on both heads of every cell; smooth-L1(1, beta .05) = 1 - .025
    assert float(hard(b)) == pytest.approx(42 * math.log(2) + 0.975, rel=1e-6)
    # objectness_scaled: o_T = .5 everywhere: 21 ln 2 (objectness) + .5 * 21 ln 2 (class)
    # + .5 * smooth-L1(1 - .5) on the one cell where the boxes differ (.5 - .025)
    assert float(scaled(b)) == pytest.approx(31.5 * math.log(2) + 0.5 * 0.475, rel=1e-6)
    # hint: with the adaptation conv zeroed, the mean square of the teacher's neck
    b.hint = torch.arange(64 * 16, dtype=torch.float32).reshape(1, 64, 4, 4) / 1000
    with torch.no_grad():
        hint.adapt.weight.zero_()
        hint.adapt.bias.zero_()
        got = float(hint(b))
    assert got == pytest.approx(sum((i / 1000) ** 2 for i in range(1024)) / 1024, rel=1e-5)


def test_fm_nms_keeps_the_peak_of_each_neighbourhood():
    obj = torch.full((1, 1, 4, 4), -10.0)
    obj[0, 0, 0, 1], obj[0, 0, 1, 1], obj[0, 0, 2, 3] = 1.0, 3.0, 2.0
    out = fm_nms({"obj": [obj]})["obj"][0][0, 0]
    assert (out > -10).nonzero().tolist() == [[1, 1], [2, 3]]  # 3 rules its 3x3 block; 2 is a peak of its own
    assert float(out[0, 1]) == -30.0  # the 1 beside the 3 is zeroed (objectness 0: logit -30)


def test_objective_names_its_terms_and_refuses_none():
    from facekd.errors import FacekdError

    obj = DetectionObjective([("hard", 1.0, {}), ("bounded_reg", 0.5, {})], student_channels=8)
    loss, parts = obj(_batch([1, 0, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 0]))
    assert set(parts) == {"hard", "bounded_reg"} and parts["bounded_reg"] == pytest.approx(0.5)
    with pytest.raises(FacekdError, match="at least one term"):
        DetectionObjective([], student_channels=8)
    with pytest.raises(FacekdError, match="unknown detection loss term 'chen'"):
        DetectionObjective([("chen", 1.0, {})], student_channels=8)


def _white_square_photos() -> LabelledPhotos:
    img = np.zeros((100, 80, 3), np.uint8)
    img[30:60, 20:50] = 255
    lm = np.array([[[25, 35], [45, 35], [35, 45], [27, 55], [43, 55]]], np.float32)
    return LabelledPhotos([img], [FaceBoxes(np.array([[20, 30, 50, 60]], np.float32), lm, np.ones(1, bool))], ["x"])


def _white_inside(frame: np.ndarray, box: np.ndarray) -> float:
    x1, y1, x2, y2 = np.round(box).astype(int)
    inner = frame[max(y1 + 2, 0):min(y2 - 2, frame.shape[0]), max(x1 + 2, 0):min(x2 - 2, frame.shape[1]), 0]
    return float((inner > 128).mean()) if inner.size else 0.0


def test_frames_move_labels_with_the_pixels():
    """A white square labelled as a face stays under its label through scaling, placing
    and flipping; its landmarks keep the left eye on the left."""
    photos = _white_square_photos()
    one = FrameOptions(size=128, grid_weights=(1.0,), zoom=(0.5, 1.0), grey=0.0, jitter=0.0)
    for i in range(20):
        frame, faces = make_frame(photos, one, frame_rng(0, 0, i))
        assert frame.shape == (128, 128, 3) and len(faces) == 1  # the photo fits: the square is whole
        assert _white_inside(frame, faces.boxes[0]) == 1.0, i
        assert faces.landmarks[0, 0, 0] < faces.landmarks[0, 1, 0]
        assert (frame[..., 0] > 128).sum() == pytest.approx(np.prod(faces.boxes[0, 2:] - faces.boxes[0, :2]), rel=0.2)
    mosaic = FrameOptions(size=128, grid_weights=(0.0, 0.5, 0.5), grey=0.0, jitter=0.0)
    for i in range(20):
        frame, faces = make_frame(photos, mosaic, frame_rng(0, 1, i))
        for box in faces.boxes:  # kept faces show at least min_visible (0.6) of their box
            assert _white_inside(frame, box) >= 0.5, (i, box)


def test_distill_detector_runs_resumes_and_exports(tmp_path):
    """Two epochs straight equal one epoch, a stop, and --resume, bit for bit; the ONNX
    detector then runs inside facekd's detector registry."""
    if not (SHARED / "celeba-wild").is_dir() or not YUNET.is_file():
        pytest.skip("needs ../shared/data/celeba-wild and the YuNet weights")
    from facekd.align.detector import build_detector
    from facekd.config import load_config
    from facekd.detect.config import DetectorRunCfg
    from facekd.detect.train import SCORE_GRID, train_detector
    from facekd.errors import FacekdError

    sets = ["data.limit=6", "data.labeller=yunet", "data.unlabelled=[]", "train.frames_per_epoch=16",
            "train.batch_size=8", "train.threads=1", "train.precision=fp32", "frames.size=128", "train.epochs=2"]
    cfg = load_config(DetectorRunCfg, Path(__file__).resolve().parents[1] / "configs" / "detect" / "fkdet_s.yaml", sets)
    a = train_detector(cfg, tmp_path / "a", log=lambda *_: None)

    class Stop(Exception):
        pass

    def stop_after_first_epoch(line: str) -> None:
        if line.startswith('{"epoch": 1,'):
            raise Stop  # the epoch's checkpoint is written before its line is logged

    with pytest.raises(Stop):
        train_detector(cfg, tmp_path / "b", log=stop_after_first_epoch)
    assert not (tmp_path / "b" / "detector.onnx").exists()
    written = (tmp_path / "b" / "config.yaml").read_bytes()
    other = load_config(DetectorRunCfg, Path(__file__).resolve().parents[1] / "configs" / "detect" / "fkdet_s.yaml",
                        sets + ["train.lr=0.01", "train.epochs=3"])
    with pytest.raises(FacekdError, match=r"different config \(train.lr\)"):  # a longer run may resume, another lr not
        train_detector(other, tmp_path / "b", resume=True, log=lambda *_: None)
    assert (tmp_path / "b" / "config.yaml").read_bytes() == written
    b = train_detector(cfg, tmp_path / "b", resume=True, log=lambda *_: None)
    assert a.read_bytes() == b.read_bytes()
    assert [r["epoch"] for r in map(json.loads, (tmp_path / "b" / "history.jsonl").read_text().splitlines())] == [1, 2]
    det = build_detector(str(a))
    assert det.name == str(a)
    record = json.loads((tmp_path / "a" / "record.json").read_text())
    assert det.min_score == record["min_score"] and record["min_score"] in SCORE_GRID
    assert isinstance(det.detect(np.zeros((250, 250, 3), np.uint8)), list)  # untrained: may find nothing, must run
    assert det.max_side == 960
    # A finished run resumed with another max_side trains nothing and is exported again with it.
    small = load_config(DetectorRunCfg, Path(__file__).resolve().parents[1] / "configs" / "detect" / "fkdet_s.yaml",
                        sets + ["max_side=160"])
    c = train_detector(small, tmp_path / "b", resume=True, log=lambda *_: None)
    assert build_detector(str(c)).max_side == 160
    assert [r["epoch"] for r in map(json.loads, (tmp_path / "b" / "history.jsonl").read_text().splitlines())] == [1, 2]


def test_a_foreign_onnx_is_not_taken_for_a_detector(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from facekd.align.detector import build_detector
    from facekd.errors import FacekdError

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["out"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 32, 32])])
    path = tmp_path / "embedder.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(FacekdError, match="not a facekd face detector"):
        build_detector(str(path))
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(FacekdError, match="broken.onnx"):
        build_detector(str(tmp_path / "broken.onnx"))


@pytest.mark.parametrize("config, reason", [
    ("model: fkdet_x\n", "unknown detector network 'fkdet_x'"),
    ("teacher: none\nterms: [{name: hint}]\n", r"terms \['hint'\] need YuNet's maps"),
    ("teacher: none\nfm_nms: true\n", "fm_nms works on YuNet's maps"),
    ("frames: {size: 250}\n", "multiple of 32"),
])
def test_a_bad_detector_config_fails_before_writing(tmp_path, capsys, config, reason):
    from facekd.cli.main import main

    path = tmp_path / "bad.yaml"
    path.write_text(config)
    assert main(["distill-detector", str(path), "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert re.search(reason, err) and str(path) in err, err
    assert not (tmp_path / "run").exists()



@pytest.mark.parametrize("name", DETECTOR_NETS.names())
def test_every_detector_net_gives_yunets_maps_and_exports(name, tmp_path):
    from facekd.align.fkdet import OnnxFaceDetector
    from facekd.detect.export import export_detector
    from facekd.detect.model import output_names

    net = DETECTOR_NETS.build(name)
    assert sum(p.numel() for p in net.parameters()) <= 53_104  # at most YuNet's (its 2023mar file: 53,104)
    out = net(torch.rand(2, 3, 64, 96) * 255)
    want = [(2, c, 64 // s, 96 // s) for c in (1, 1, 4, 10) for s in (8, 16, 32)]
    assert [tuple(t.shape) for t in out] == want and len(output_names()) == len(want)
    path = export_detector(net, name, tmp_path / "d.onnx", size=64, min_score=0.4)  # checks ORT against torch
    det = OnnxFaceDetector(path)
    assert det.arch == name and det.min_score == 0.4


@pytest.mark.parametrize("name", DET_TERMS.names())
def test_every_detection_term_is_a_finite_loss_that_reaches_the_student(name):
    b = _batch([1.0, 0.5, 0.2, 0.1], [0.5, 0, 0, 0], [0, 0, 0, 0], z_s=0.3, z_t=-0.4)
    b.hint = torch.rand(1, 64, 4, 4)
    for m in b.student.values():
        for t in m:
            t.requires_grad_(True)
    b.guided.requires_grad_(True)
    term = DetectionObjective([(name, 1.0, {})], student_channels=8).terms[0]
    value = term(b)
    assert torch.isfinite(value) and float(value) >= 0
    value.backward()
    grads = [t.grad for m in b.student.values() for t in m if t.grad is not None] + [b.guided.grad]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), f"{name} does not reach the student"
