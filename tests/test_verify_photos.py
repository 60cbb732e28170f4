"""`facekd embed` / `facekd verify` on real LFW photos with the exported reference MobileFaceNet,
with the default detector chain (YuNet, then MTCNN) and each detector alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facekd.cli import main
from facekd.deploy.threshold import ThresholdChoice, store_threshold

WEIGHTS = Path(os.environ.get("FACEKD_WEIGHTS") or Path(__file__).resolve().parents[2] / "shared" / "weights")
PEIRSOL = "Aaron_Peirsol/Aaron_Peirsol_000{}.jpg"

# The threshold `facekd export --lfw` chose for this FP32 export on the q85 LFW pack
# (docs/BENCHMARKS.md); stored here directly so the test needs no 6,000-pair evaluation.
MOBILEFACENET_THRESHOLD = 0.2865


@pytest.fixture(autouse=True)
def _weights_env(monkeypatch):
    """YuNet, verify's first detector, is found by its manifest name in $FACEKD_WEIGHTS."""
    if not (WEIGHTS / "face_detection_yunet_2023mar.onnx").is_file():
        pytest.skip(f"YuNet model not found in {WEIGHTS} (set FACEKD_WEIGHTS)")
    monkeypatch.setenv("FACEKD_WEIGHTS", str(WEIGHTS))


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory, mobilefacenet_weights):
    out = tmp_path_factory.mktemp("model") / "plain.onnx"
    args = ["export", "--model", "mobilefacenet", "--weights", str(mobilefacenet_weights), "--onnx", str(out)]
    assert main([*args, "--no-threshold"]) == 0
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


def _verify(a, b, model, tmp_path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "v.json"
    rc = main(["verify", str(a), str(b), "--model", str(model), "--json", str(out), *extra])
    return rc, json.loads(out.read_text())


@pytest.mark.parametrize("detector", ["yunet,mtcnn", "yunet", "mtcnn"])
def test_same_person(onnx_model, lfw_dir, tmp_path, detector):
    a, b = lfw_dir / PEIRSOL.format(1), lfw_dir / PEIRSOL.format(2)
    rc, res = _verify(a, b, onnx_model, tmp_path, "--detector", detector)
    assert rc == 0
    assert res["same"] is True
    assert res["threshold"] == pytest.approx(MOBILEFACENET_THRESHOLD)
    assert res["similarity"] > res["threshold"] + 0.1  # not a coin toss
    assert res["detectors"] == [detector.split(",")[0]] * 2  # YuNet finds both: MTCNN is never asked


def test_mtcnn_is_asked_where_yunet_finds_no_face(lfw_dir):
    """The chain's order: a YuNet that cannot find this face (min_face_size beyond the
    photo) hands the photo to MTCNN, and the result says MTCNN found it."""
    from facekd.align.detector import YunetDetector
    from facekd.deploy.photos import DetectorChain, align_photo

    chain = DetectorChain([YunetDetector(min_face_size=1000), "mtcnn"])
    face = align_photo(lfw_dir / PEIRSOL.format(1), chain, "112x96")
    assert face.detector == "mtcnn" and face.crop.shape == (112, 96, 3)


def test_several_faces_use_the_most_central(onnx_model, lfw_dir, tmp_path, capsys):
    """Three photos side by side, Peirsol in the middle: verify uses him and says 3 faces."""
    row = [Image.open(lfw_dir / p).convert("RGB") for p in
           ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", PEIRSOL.format(1), "Abel_Pacheco/Abel_Pacheco_0001.jpg"]]
    group = Image.new("RGB", (750, 250))
    for i, im in enumerate(row):
        group.paste(im, (250 * i, 0))
    group.save(tmp_path / "group.jpg", quality=95)
    rc, res = _verify(tmp_path / "group.jpg", lfw_dir / PEIRSOL.format(2), onnx_model, tmp_path)
    assert rc == 0 and res["same"] is True and res["faces"][0] == 3
    assert "3 faces found; used the most central one" in capsys.readouterr().err


@pytest.mark.parametrize("detector", ["yunet,mtcnn", "mtcnn"])
def test_tiny_photo_is_named(onnx_model, lfw_dir, tmp_path, detector):
    tiny = tmp_path / "tiny.jpg"
    Image.open(lfw_dir / PEIRSOL.format(1)).resize((8, 8)).save(tiny)
    rc, res = _verify(lfw_dir / PEIRSOL.format(1), tiny, onnx_model, tmp_path, "--detector", detector)
    assert rc == 1 and res["photo"] == str(tiny)
    assert f"no face found (tried {', '.join(detector.split(','))})" in res["error"]


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
    assert "no face found (tried yunet, mtcnn)" in res["error"] and str(gray) in res["error"]
    assert "no face found" in capsys.readouterr().err


def test_unreadable_photo_is_named(onnx_model, lfw_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    rc, res = _verify(bad, lfw_dir / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg", onnx_model, tmp_path)
    assert rc == 1 and res["photo"] == str(bad) and "unreadable" in res["error"]


def test_embed_writes_normalised_embeddings_in_order(onnx_model, lfw_dir, tmp_path, capsys):
    photos = [lfw_dir / f"Aaron_Peirsol/Aaron_Peirsol_000{i}.jpg" for i in (1, 2)] + [lfw_dir / "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"]
    out = tmp_path / "emb.npy"
    assert main(["embed", *map(str, photos), "--model", str(onnx_model), "--out", str(out)]) == 0
    emb = np.load(out)
    assert emb.shape == (3, 128)
    assert "face found by yunet" in capsys.readouterr().out
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    same, diff = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert same > MOBILEFACENET_THRESHOLD > diff


def test_verify_without_a_threshold_names_the_command(plain_model, lfw_dir, capsys, monkeypatch, tmp_path):
    a = lfw_dir / PEIRSOL.format(1)
    monkeypatch.setenv("FACEKD_DATA", str(lfw_dir.parent))
    assert main(["verify", str(a), str(a), "--model", str(plain_model)]) == 1
    assert f"`facekd threshold {plain_model} --lfw {lfw_dir}`" in capsys.readouterr().err
    monkeypatch.setenv("FACEKD_DATA", str(tmp_path))  # no LFW there: the command says what to give
    assert main(["verify", str(a), str(a), "--model", str(plain_model)]) == 1
    assert f"`facekd threshold {plain_model} --lfw LFW_FOLDER_WITH_PAIRS_TXT`" in capsys.readouterr().err


def _mini_lfw(lfw_dir: Path, root: Path) -> Path:
    """An LFW-shaped folder: 2 folds of 2 same + 2 different pairs over real LFW photos."""
    same = [("Aaron_Peirsol", 1, 2), ("Aaron_Peirsol", 3, 4), ("Colin_Powell", 1, 2), ("Colin_Powell", 3, 4)]
    diff = [("Aaron_Eckhart", 1, "Abel_Pacheco", 1), ("Aaron_Peirsol", 1, "Colin_Powell", 1),
            ("Abel_Pacheco", 1, "Colin_Powell", 2), ("Aaron_Eckhart", 1, "Aaron_Peirsol", 2)]
    lines = ["2 2"]
    for f in range(2):
        lines += [f"{n} {i} {j}" for n, i, j in same[2 * f : 2 * f + 2]]
        lines += [f"{a} {i} {b} {j}" for a, i, b, j in diff[2 * f : 2 * f + 2]]
    lfw = root / "lfw"
    for line in lines[1:]:
        parts = line.split()
        for name, idx in ([(parts[0], parts[1]), (parts[0], parts[2])] if len(parts) == 3 else [(parts[0], parts[1]), (parts[2], parts[3])]):
            rel = f"{name}/{name}_{int(idx):04d}.jpg"
            (lfw / name).mkdir(parents=True, exist_ok=True)
            if not (lfw / rel).exists():
                (lfw / rel).symlink_to(lfw_dir / rel)
    (lfw / "pairs.txt").write_text("\n".join(lines) + "\n")
    return lfw


def test_export_stores_a_threshold_when_it_finds_lfw(mobilefacenet_weights, lfw_dir, tmp_path, monkeypatch, capsys):
    """$FACEKD_DATA/lfw exists: export says so, chooses the threshold on it, and a first
    verify then runs without --threshold."""
    lfw = _mini_lfw(lfw_dir, tmp_path / "data")
    monkeypatch.setenv("FACEKD_DATA", str(lfw.parent))
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "mobilefacenet", "--weights", str(mobilefacenet_weights), "--onnx", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"LFW found at {lfw}" in said and "stored in" in said
    rc, res = _verify(lfw_dir / PEIRSOL.format(1), lfw_dir / PEIRSOL.format(2), out, tmp_path)
    assert rc == 0 and res["same"] is True
    # 8 pairs a clean model separates: the chosen threshold lies between the two groups
    assert 0.0 < res["threshold"] < res["similarity"]


def test_export_without_lfw_names_the_command(mobilefacenet_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACEKD_DATA", str(tmp_path))  # holds no lfw/
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "mobilefacenet", "--weights", str(mobilefacenet_weights), "--onnx", str(out)]) == 0
    said = capsys.readouterr().out
    assert "no LFW found" in said and f"facekd threshold {out} --lfw LFW_FOLDER_WITH_PAIRS_TXT" in said
