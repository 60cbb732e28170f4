"""Alignment on real LFW photos: geometry, the awkward inputs of a real folder, resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facekd.align.aligner import align_image
from facekd.align.detector import FaceDetector, build_detector, select_central_face
from facekd.align.folder import REPORT_NAME, STATE_NAME, AlignOptions, align_folder
from facekd.align.template import get_template, similarity_transform

FACE = "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
OTHER = "Abel_Pacheco/Abel_Pacheco_0001.jpg"


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return build_detector("mtcnn")


@pytest.mark.parametrize("name", ["112x96", "112x112"])
def test_detected_landmarks_land_on_the_template(lfw_dir, detector, name):
    """Align a real face, detect it again in the crop: its landmarks are where the fitted
    similarity sends the original ones (a least-squares fit cannot put a real face's five
    points exactly on the template, so that residual is checked separately)."""
    template = get_template(name)
    img = np.asarray(Image.open(lfw_dir / FACE).convert("RGB"))
    face = align_image(img, detector, template)
    assert not face.fallback and face.crop.shape == (112, template.width, 3)
    original = select_central_face(detector.detect(img), *img.shape[:2]).landmarks
    m = similarity_transform(original, template.points)
    expected = original @ m[:, :2].T + m[:, 2]
    again = detector.detect(face.crop)
    assert again, "no face found in the aligned crop"
    err = np.linalg.norm(select_central_face(again, 112, template.width).landmarks - expected, axis=1)
    assert err.mean() < 2.5 and err.max() < 4.0, err  # MTCNN re-detection noise is ~1-3 px
    residual = np.linalg.norm(expected - template.points, axis=1)
    assert residual.mean() < 5.0, residual


def _make_messy_folder(lfw_dir: Path, src: Path) -> None:
    ok, bad = src / "ok", src / "bad"
    ok.mkdir(parents=True)
    bad.mkdir()
    face = Image.open(lfw_dir / FACE).convert("RGB")
    shutil.copy(lfw_dir / FACE, ok / "a.jpg")
    face.convert("L").save(ok / "gray.jpg")
    face.convert("CMYK").save(ok / "cmyk.jpg")
    rgba = face.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(ok / "rgba.png")
    deep = (np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(ok / "deep.png")  # 16-bit grayscale PNG
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated; "rotate 90 CCW to view" brings it upright
    face.transpose(Image.Transpose.ROTATE_270).save(ok / "rotated.jpg", exif=exif.tobytes(), quality=95)
    two = Image.new("RGB", (500, 250))
    two.paste(face, (0, 0))
    two.paste(Image.open(lfw_dir / OTHER).convert("RGB"), (250, 0))
    two.save(ok / "two.jpg")
    Image.new("RGB", (8, 8), (120, 100, 90)).save(ok / "tiny.jpg")
    (bad / "empty.jpg").write_bytes(b"")
    data = (lfw_dir / FACE).read_bytes()
    (bad / "cut.jpg").write_bytes(data[: len(data) // 3])
    (bad / "text.jpg").write_text("hello")
    (bad / "notes.doc").write_bytes(b"\x00\x01binary")
    (src / "pairs.txt").write_text("1 1\n")


def test_messy_folder_is_reported_and_resumes(lfw_dir, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _make_messy_folder(lfw_dir, src)
    report = align_folder(src, dst, AlignOptions(workers=1))

    assert report.images == 12
    reasons = {u.file: u.reason for u in report.unreadable}
    assert set(reasons) == {"bad/empty.jpg", "bad/cut.jpg", "bad/text.jpg", "bad/notes.doc"}
    assert "empty" in reasons["bad/empty.jpg"]
    assert "truncated" in reasons["bad/cut.jpg"]
    assert "not an image" in reasons["bad/text.jpg"] and "not an image" in reasons["bad/notes.doc"]
    assert report.fallback_files == ["ok/tiny.jpg"]
    assert report.aligned == 7 and report.fallback == 1
    assert report.multiple_faces >= 1
    assert report.metadata_copied == ["pairs.txt"] and (dst / "pairs.txt").read_text() == "1 1\n"
    on_disk = json.loads((dst / REPORT_NAME).read_text())
    assert on_disk == report.to_json() and on_disk["aligned"] == 7
    assert on_disk["unreadable"][0] == {"file": report.unreadable[0].file, "reason": report.unreadable[0].reason}

    crops = {n: np.asarray(Image.open(dst / "ok" / n).convert("RGB"), dtype=float) for n in
             ["a.jpg", "gray.jpg", "cmyk.jpg", "rgba.png", "deep.png", "rotated.jpg", "two.jpg", "tiny.jpg"]}
    assert all(c.shape == (112, 96, 3) for c in crops.values())
    # The same face, whatever the file's format or orientation: crops agree closely.
    ref = crops["a.jpg"].mean(axis=2)
    for n in ["gray.jpg", "cmyk.jpg", "rotated.jpg", "deep.png", "two.jpg"]:
        diff = np.abs(crops[n].mean(axis=2) - ref).mean()
        assert diff < 12, (n, diff)
    assert not (dst / "bad").exists() or not any((dst / "bad").iterdir())

    # Resume: lose one crop and tear the state file's last line, as a crash would.
    (dst / "ok" / "gray.jpg").unlink()
    with (dst / STATE_NAME).open("a") as f:
        f.write('{"file": "ok/a.j')
    again = align_folder(src, dst, AlignOptions(workers=1))
    assert again.resumed == 7  # 8 crops written earlier, one lost
    assert again.processed == 5  # the lost crop and the 4 unreadable files, retried
    assert again.aligned == 7 and (dst / "ok" / "gray.jpg").is_file()


def test_worker_pool_matches_single_process(lfw_dir, tmp_path):
    src = tmp_path / "src"
    for rel in [FACE, OTHER]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lfw_dir / rel, src / rel)
    one = align_folder(src, tmp_path / "one", AlignOptions(workers=1))
    pool = align_folder(src, tmp_path / "pool", AlignOptions(workers=2))
    assert one.aligned == pool.aligned == 2
    for rel in [FACE, OTHER]:
        a = np.asarray(Image.open(tmp_path / "one" / rel), dtype=float)
        b = np.asarray(Image.open(tmp_path / "pool" / rel), dtype=float)
        assert np.abs(a - b).mean() < 1.0


def test_worker_pool_reports_a_detector_that_cannot_start(lfw_dir, tmp_path):
    """A detector that fails inside the workers (here: a device that does not exist) is an
    error naming the detector, not a pool that restarts its workers forever."""
    from facekd.errors import FacekdError

    from facekd.align.folder import CHUNK

    src = tmp_path / "src"
    src.mkdir()
    for i in range(CHUNK + 1):  # more than one chunk, or align_folder uses one process
        shutil.copy(lfw_dir / FACE, src / f"face_{i}.jpg")
    with pytest.raises(FacekdError, match="detector 'mtcnn' \\(device nosuchdevice\\) cannot start"):
        align_folder(src, tmp_path / "out", AlignOptions(workers=2, device="nosuchdevice"))


def test_bad_folders_are_refused(tmp_path):
    from facekd.errors import FacekdError

    with pytest.raises(FacekdError, match="does not exist"):
        align_folder(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "src").mkdir()
    with pytest.raises(FacekdError, match="must not be the source folder or inside it"):
        align_folder(tmp_path / "src", tmp_path / "src" / "aligned")
