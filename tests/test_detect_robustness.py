"""Bad photos through `facekd align` (a folder), `facekd embed` and `facekd verify`, with
each of MTCNN and YuNet: a photo with no face, a corrupt photo, an 8,000 x 8,000 photo
(64 Mpx, the most facekd decodes) and one pixel row past that limit each get a clear
result or a one-line error naming the photo, never a traceback or a hang."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facekd.align.detector import MTCNN_MAX_SIDE, build_detector
from facekd.cli import main
from facekd.image_io import MAX_PIXELS

DETECTORS = ("mtcnn", "yunet")
HUGE = 8000
assert HUGE * HUGE <= MAX_PIXELS  # the largest photo facekd decodes


@pytest.fixture(scope="module")
def bad_photos(tmp_path_factory) -> dict[str, Path]:
    """no face (a smooth gradient), corrupt (a JPEG cut in half), not an image, 8000x8000
    and 8001x8000 (solid colour: JPEG keeps them about 1 MB)."""
    d = tmp_path_factory.mktemp("bad")
    ramp = np.linspace(0, 255, 640, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (480, 1))] * 3, axis=2)).save(d / "noface.jpg")
    whole = (d / "noface.jpg").read_bytes()
    (d / "corrupt.jpg").write_bytes(whole[: len(whole) // 2])
    (d / "notanimage.jpg").write_bytes(b"this is not a photo\n" * 50)
    Image.new("RGB", (HUGE, HUGE), (120, 130, 140)).save(d / "huge.jpg", quality=50)
    Image.new("RGB", (HUGE + 1, HUGE), (120, 130, 140)).save(d / "toolarge.jpg", quality=50)
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture(autouse=True)
def _weights(yunet_weights):
    """YuNet found in $FACEKD_WEIGHTS (conftest's fixture; skipped without it)."""


@pytest.mark.parametrize("detector", DETECTORS)
def test_align_folder_reports_each_bad_photo(bad_photos, tmp_path, detector, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("noface", "corrupt", "notanimage", "huge", "toolarge"):
        (src / f"{name}.jpg").symlink_to(bad_photos[name])
    started = time.perf_counter()
    assert main(["align", str(src), str(tmp_path / "dst"), "--detector", detector, "--workers", "1"]) == 0
    assert time.perf_counter() - started < 120  # bounded: MTCNN took 30 s per 64 Mpx photo before its downscale
    report = json.loads((tmp_path / "dst" / "align_report.json").read_text())
    assert report["images"] == 5 and report["aligned"] == 0
    # no face: the central-box fallback crop, listed as such
    assert sorted(report["fallback_files"]) == ["huge.jpg", "noface.jpg"]
    assert Image.open(tmp_path / "dst" / "huge.jpg").size == (96, 112)
    reasons = {u["file"]: u["reason"] for u in report["unreadable"]}
    assert reasons["corrupt.jpg"].startswith("truncated or corrupt image data")
    assert reasons["notanimage.jpg"] == "not an image (no known image format)"
    assert reasons["toolarge.jpg"] == f"image too large ({HUGE + 1}x{HUGE} pixels)"
    out = capsys.readouterr().out
    assert "2 central-box fallbacks, 3 unreadable" in out and "unreadable: corrupt.jpg: truncated" in out


@pytest.fixture(scope="module")
def model_args(mobilefacenet_weights) -> list[str]:
    return ["--model", "mobilefacenet", "--weights", str(mobilefacenet_weights)]


@pytest.mark.parametrize("detector", DETECTORS)
def test_embed_names_every_bad_photo(bad_photos, model_args, detector, capsys):
    photos = [bad_photos[n] for n in ("noface", "corrupt", "huge", "toolarge")]
    assert main(["embed", *map(str, photos), *model_args, "--detector", detector]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("facekd: error:")]
    expected = [
        f"facekd: error: {bad_photos['noface']}: no face found (tried {detector})",
        f"facekd: error: {bad_photos['corrupt']}: unreadable (truncated or corrupt image data (",  # PIL's words follow
        f"facekd: error: {bad_photos['huge']}: no face found (tried {detector})",
        f"facekd: error: {bad_photos['toolarge']}: unreadable (image too large ({HUGE + 1}x{HUGE} pixels))",
    ]
    assert len(lines) == len(expected)
    for line, start in zip(lines, expected):
        assert line.startswith(start)


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("pair", [("noface", "huge"), ("corrupt", "noface")])
def test_verify_fails_closed_on_bad_photos(bad_photos, model_args, tmp_path, detector, pair, capsys):
    out = tmp_path / "v.json"
    a, b = (bad_photos[n] for n in pair)
    rc = main(["verify", str(a), str(b), *model_args, "--detector", detector, "--threshold", "0.3",
               "--json", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"facekd: error: {a}: " in err and f"facekd: error: {b}: " in err
    res = json.loads(out.read_text())
    assert res["photo"] == str(b) and "same" not in res
    assert res["error"] == f"{b}: no face found (tried {detector})"


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (3, HUGE), (30, HUGE)])
def test_slivers_and_specks_have_no_face(detector, shape):
    """Photos too small (after the detector's rescaling) to hold a face of its
    ``min_face_size``; MTCNN's P-net failed on them (torch.cat of no scales)."""
    assert build_detector(detector).detect(np.full((*shape, 3), 120, np.uint8)) == []


def test_mtcnn_detects_a_64_megapixel_photo_downscaled(lfw_dir):
    """A real face blown up to 8000x8000: MTCNN sees it at most ``MTCNN_MAX_SIDE`` wide and
    returns its landmarks in the photo's own coordinates (32x those on the 250 px photo)."""
    photo = Image.open(lfw_dir / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg").convert("RGB")
    small = np.asarray(photo)
    big = np.asarray(photo.resize((HUGE, HUGE), Image.BILINEAR))
    det = build_detector("mtcnn")
    seen: list[tuple[int, ...]] = []
    inner = det._mtcnn.detect

    def spy(images, landmarks):  # a test double recording what MTCNN is given
        seen.append(np.asarray(images).shape)
        return inner(images, landmarks=landmarks)

    det._mtcnn.detect = spy
    (face_small,) = det.faces(small)
    (face_big,) = det.faces(big)
    assert seen[-1][1:3] == (MTCNN_MAX_SIDE, MTCNN_MAX_SIDE)
    iod = np.linalg.norm(face_big.landmarks[0] - face_big.landmarks[1])
    assert iod == pytest.approx(32 * np.linalg.norm(face_small.landmarks[0] - face_small.landmarks[1]), rel=0.05)
    assert np.abs(face_big.landmarks - 32 * face_small.landmarks).max() < 0.1 * iod
