"""The Python API (facekd.load / embed / verify, facekd.align) on real LFW photos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import facekd
from facekd.errors import FacekdError

SAME = ("Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Aaron_Peirsol/Aaron_Peirsol_0002.jpg")
OTHER = ("AJ_Cook/AJ_Cook_0001.jpg", "Abba_Eban/Abba_Eban_0001.jpg")
STUDENT = "student5_mobilefacenet_casia"  # shipped in weights/ as ONNX, with an LFW threshold


def test_import_facekd_does_not_import_torch_onnxruntime_or_opencv():
    code = "import sys, facekd; print(sorted(m for m in ('torch', 'onnxruntime', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_model_names_itself_and_the_known_ones():
    with pytest.raises(FacekdError, match=r"unknown model 'no_such_model'; known: .*mobilefacenet"):
        facekd.load("no_such_model")


def _photos(lfw_dir: Path, names) -> list[Path]:
    paths = [lfw_dir / n for n in names]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"LFW photos {names} not found in {lfw_dir}")
    return paths


def _check_ordering(emb: np.ndarray) -> None:
    """Rows 0 and 1 are one person, rows 2 and 3 two others: the pair of the same person
    is closer than any pair of different people."""
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cos = emb @ emb.T
    same = cos[0, 1]
    different = [cos[i, j] for i in range(4) for j in range(i + 1, 4) if (i, j) != (0, 1)]
    assert same > max(different) + 0.2, (same, different)


def test_embed_and_verify_real_photos_with_a_shipped_student(lfw_dir, yunet_weights):
    a, b, c, d = _photos(lfw_dir, SAME + OTHER)
    model = facekd.load(STUDENT)
    assert model.threshold is not None and 0 < model.threshold < 1  # stored in the .onnx
    emb = model.embed([a, b, c, d])
    assert emb.shape == (4, 512) and emb.dtype == np.float32
    _check_ordering(emb)
    same, different = model.verify(a, b), model.verify(a, c)
    assert same.same and not different.same
    assert same.threshold == different.threshold == model.threshold
    assert same.similarity == pytest.approx(float(emb[0] @ emb[1]), abs=1e-5)
    # A PIL image and an array give the path's embedding; so does the aligned crop.
    pil, arr = model.embed(Image.open(a)), model.embed(np.asarray(Image.open(a)))
    face = model.align(a)
    crop = model.embed(face.crop, aligned=True)
    for e in (pil, arr, crop):
        assert e.shape == (1, 512) and float(e[0] @ emb[0]) > 0.9999


def test_align_gives_the_crop_and_the_landmarks_in_the_photo(lfw_dir, yunet_weights):
    (a,) = _photos(lfw_dir, SAME[:1])
    face = facekd.align(a)
    assert face.crop.shape == (112, 96, 3) and face.crop.dtype == np.uint8
    assert face.landmarks.shape == (5, 2) and face.detector == "yunet" and face.faces >= 1
    left_eye, right_eye, nose = face.landmarks[:3]
    assert left_eye[0] < nose[0] < right_eye[0]  # an upright LFW face, as seen
    assert ((face.landmarks > 0) & (face.landmarks < 250)).all()  # inside the 250x250 photo
    assert facekd.align(a, template="112x112").crop.shape == (112, 112, 3)


def test_a_photo_without_a_face_and_a_model_without_threshold_are_errors(lfw_dir, yunet_weights, tmp_path):
    model = facekd.load(STUDENT, detectors=("yunet",))
    with pytest.raises(FacekdError, match=r"<array 0>: no face found \(tried yunet\)"):
        model.embed(np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(FacekdError, match="not an aligned 112x96 crop"):
        model.embed(np.zeros((250, 250, 3), np.uint8), aligned=True)
    with pytest.raises(FacekdError, match=r"missing\.jpg: no such file"):
        model.embed(tmp_path / "missing.jpg")


def test_a_registered_backbone_with_its_published_weights(lfw_dir, yunet_weights, mobilefacenet_weights, monkeypatch):
    """"mobilefacenet" resolves to its manifest weights in $FACEKD_WEIGHTS (PyTorch)."""
    monkeypatch.setenv("FACEKD_WEIGHTS", str(mobilefacenet_weights.parent))
    photos = _photos(lfw_dir, SAME + OTHER)
    model = facekd.load("mobilefacenet", allow_download=False)
    assert model.threshold is None
    _check_ordering(model.embed(photos))
    with pytest.raises(FacekdError, match="no verification threshold"):
        model.verify(photos[0], photos[1])
    assert model.verify(photos[0], photos[1], threshold=0.3).same
