"""`facekd embed` / `facekd verify` on real LFW photos with the exported reference MobileFaceNet."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facekd.cli import main
from facekd.deploy.threshold import ThresholdChoice, store_threshold

# The threshold `facekd export --lfw` chose for this FP32 export on the q85 LFW pack
# (docs/BENCHMARKS.md); stored here directly so the test needs no 6,000-pair evaluation.
MOBILEFACENET_THRESHOLD = 0.2865


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory, mobilefacenet_weights):
    out = tmp_path_factory.mktemp("model") / "plain.onnx"
    assert main(["export", "--model", "mobilefacenet", "--weights", str(mobilefacenet_weights), "--onnx", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def onnx_model(plain_model):
    import shutil

    out = plain_model.with_name("mfn.onnx")
    shutil.copyfile(plain_model, out)
    choice = ThresholdChoice(
        threshold=MOBILEFACENET_THRESHOLD, rule="test", data="test", pairs=0, accuracy_all_pairs=0.0,
        accuracy_10fold=0.0, std_10fold=0.0, fold_thresholds=[],
    )
    store_threshold(out, choice)
    return out


def _verify(a, b, model, tmp_path) -> tuple[int, dict]:
    out = tmp_path / "v.json"
    rc = main(["verify", str(a), str(b), "--model", str(model), "--json", str(out)])
    return rc, json.loads(out.read_text())


def test_same_person(onnx_model, lfw_dir, tmp_path):
    rc, res = _verify(lfw_dir / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg", lfw_dir / "Aaron_Peirsol/Aaron_Peirsol_0002.jpg", onnx_model, tmp_path)
    assert rc == 0
    assert res["same"] is True
    assert res["threshold"] == pytest.approx(MOBILEFACENET_THRESHOLD)
    assert res["similarity"] > res["threshold"] + 0.1  # not a coin toss


def test_different_people(onnx_model, lfw_dir, tmp_path):
    rc, res = _verify(lfw_dir / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg", lfw_dir / "Aaron_Eckhart/Aaron_Eckhart_0001.jpg", onnx_model, tmp_path)
    assert rc == 0
    assert res["same"] is False
    assert res["similarity"] < res["threshold"]


def test_photo_without_a_face_is_named(onnx_model, lfw_dir, tmp_path, capsys):
    from PIL import Image

    gray = tmp_path / "gray.jpg"
    Image.new("RGB", (250, 250), (128, 128, 128)).save(gray)
    rc, res = _verify(lfw_dir / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg", gray, onnx_model, tmp_path)
    assert rc == 1
    assert res["photo"] == str(gray)
    assert "no face" in res["error"] and str(gray) in res["error"]
    assert "no face found" in capsys.readouterr().err


def test_unreadable_photo_is_named(onnx_model, lfw_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    rc, res = _verify(bad, lfw_dir / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg", onnx_model, tmp_path)
    assert rc == 1 and res["photo"] == str(bad) and "unreadable" in res["error"]


def test_embed_writes_normalised_embeddings_in_order(onnx_model, lfw_dir, tmp_path):
    photos = [lfw_dir / f"Aaron_Peirsol/Aaron_Peirsol_000{i}.jpg" for i in (1, 2)] + [lfw_dir / "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"]
    out = tmp_path / "emb.npy"
    assert main(["embed", *map(str, photos), "--model", str(onnx_model), "--out", str(out)]) == 0
    emb = np.load(out)
    assert emb.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    same, diff = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert same > MOBILEFACENET_THRESHOLD > diff


def test_verify_without_a_threshold_says_how_to_get_one(plain_model, lfw_dir, capsys):
    a = lfw_dir / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
    assert main(["verify", str(a), str(a), "--model", str(plain_model)]) == 1
    assert "--lfw" in capsys.readouterr().err
