"""YuNet's network in PyTorch (a student that starts as its teacher): the port computes
YuNet's maps and hint on a real photo, refuses a file of another layout, and ``init:
yunet`` is only for ``model: yunet``; the side a detector runs at travels in its file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.align.fkdet import OnnxFaceDetector
from facekd.config import from_dict
from facekd.detect.config import DetectorRunCfg, check_config
from facekd.detect.export import export_detector
from facekd.detect.model import DETECTOR_NETS
from facekd.detect.yunet_net import YunetNet, load_yunet_weights
from facekd.errors import FacekdError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
YUNET = Path(os.environ.get("FACEKD_WEIGHTS", SHARED.parent / "weights")) / "face_detection_yunet_2023mar.onnx"
PHOTO = Path(os.environ.get("FACEKD_DATA", SHARED)) / "lfw" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"


@pytest.mark.skipif(not (YUNET.is_file() and PHOTO.is_file()), reason=f"needs {YUNET} and {PHOTO}")
def test_the_port_computes_yunets_maps_and_hint_on_a_real_photo():
    """Against ONNX Runtime running YuNet's own file (BGR in): every map and the stride-8
    neck agree to float rounding, at a size that is not square."""
    from PIL import Image

    from facekd.detect.teacher import YunetMaps
    from facekd.image_io import read_rgb

    rgb = np.asarray(Image.fromarray(read_rgb(PHOTO)).resize((256, 224)))[None]
    want, hint = YunetMaps(YUNET, threads=1)(rgb)
    net = load_yunet_weights(YunetNet(), YUNET).eval()
    assert sum(p.numel() for p in net.parameters()) == 53_104  # every conv weight and bias of the file
    with torch.no_grad():
        feats = net.features(torch.from_numpy(rgb.transpose(0, 3, 1, 2).astype(np.float32)))
        got = net.maps(feats)
    for k, maps in want.items():
        for s, (a, b) in enumerate(zip(maps, got[k])):
            assert a.shape == tuple(b.shape), (k, s)
            assert np.abs(a - b.numpy()).max() < 1e-4 * max(1.0, np.abs(a).max()), (k, s)
    assert np.abs(hint - feats[0].numpy()).max() < 1e-4 * np.abs(hint).max()
    assert float(torch.sigmoid(got["cls"][0]).max()) > 0.9  # it sees the face


def test_a_file_of_another_layout_is_refused_by_count(tmp_path):
    path = export_detector(DETECTOR_NETS.build("fkdet_s").eval(), "fkdet_s", tmp_path / "s.onnx", size=64)
    with pytest.raises(FacekdError, match=r"s\.onnx: \d+ convolutions, YuNet's network has 53"):
        load_yunet_weights(YunetNet(), path)
    with pytest.raises(FacekdError, match="not found"):
        load_yunet_weights(YunetNet(), tmp_path / "missing.onnx")


def test_init_yunet_is_only_for_the_yunet_network():
    check_config(from_dict(DetectorRunCfg, {"model": "yunet", "init": "yunet"}))
    with pytest.raises(FacekdError, match="init: yunet starts from YuNet's own weights, which only model: yunet has"):
        check_config(from_dict(DetectorRunCfg, {"model": "fkdet_s", "init": "yunet"}))


def test_the_side_a_detector_runs_at_travels_in_its_file(tmp_path):
    net = DETECTOR_NETS.build("fkdet_s").eval()
    path = export_detector(net, "fkdet_s", tmp_path / "d.onnx", size=64, max_side=160)
    assert OnnxFaceDetector(path).max_side == 160
    assert OnnxFaceDetector(path, max_side=320).max_side == 320  # an explicit side wins
    plain = export_detector(net, "fkdet_s", tmp_path / "p.onnx", size=64)
    assert OnnxFaceDetector(plain).max_side == 960

    import onnx

    m = onnx.load(str(path))
    for e in m.metadata_props:
        if e.key == "facekd.max_side":
            e.value = "big"
    onnx.save(m, str(tmp_path / "bad.onnx"))
    with pytest.raises(FacekdError, match=r"bad\.onnx: facekd.max_side metadata 'big'"):
        OnnxFaceDetector(tmp_path / "bad.onnx")
