"""Every registered face detector on real LFW photos: landmarks on the template, photos
without a face, tiny photos, photos with several faces; YuNet's weights and correction."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facekd.align.aligner import align_image
from facekd.align.detector import (
    DETECTORS,
    YunetDetector,
    build_detector,
    correct_landmarks,
    select_central_face,
)
from facekd.align.folder import AlignOptions, align_folder
from facekd.align.template import TEMPLATES, get_template, similarity_transform
from facekd.errors import FacekdError

FACES = [
    "Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
    "Abel_Pacheco/Abel_Pacheco_0001.jpg",
    "Aaron_Peirsol/Aaron_Peirsol_0002.jpg",
    "Angelina_Jolie/Angelina_Jolie_0001.jpg",
    "Colin_Powell/Colin_Powell_0001.jpg",
]
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


WEIGHTS = Path(os.environ.get("FACEKD_WEIGHTS") or Path(__file__).resolve().parents[2] / "shared" / "weights")


@pytest.fixture(scope="session")
def yunet_file() -> Path:
    p = WEIGHTS / "face_detection_yunet_2023mar.onnx"
    if not p.is_file():
        pytest.skip(f"YuNet model not found at {p} (set FACEKD_WEIGHTS)")
    return p


@pytest.fixture(autouse=True)
def _weights_env(monkeypatch):
    """``build_detector("yunet")`` finds the model by its manifest name in $FACEKD_WEIGHTS."""
    monkeypatch.setenv("FACEKD_WEIGHTS", str(WEIGHTS))


_BUILT: dict = {}


@pytest.fixture(params=DETECTORS.names())
def detector(request, yunet_file):
    if request.param not in _BUILT:  # MTCNN takes seconds to build: once per session
        _BUILT[request.param] = build_detector(request.param)
    return _BUILT[request.param]


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_registry_names_and_unknown_name():
    assert {"mtcnn", "yunet"} <= set(DETECTORS.names())
    with pytest.raises(FacekdError, match="known: .*mtcnn.*yunet"):
        build_detector("retinaface")


def test_manifest_entry_matches_the_shared_file(yunet_file):
    from facekd.download import sha256_of
    from facekd.weights import manifest, resolve_weights

    entry = manifest()["yunet_2023mar"]
    assert entry["sha256"] == YUNET_SHA256 == sha256_of(yunet_file)
    assert entry["url"].endswith("/face_detection_yunet_2023mar.onnx")
    assert resolve_weights("yunet_2023mar", allow_download=False) == yunet_file


def test_landmarks_land_on_the_template(lfw_dir, detector, name="112x96"):
    """Each detector's landmarks on real faces, sent through the fitted similarity, land on
    the template within a few pixels (five real points cannot fit exactly: the nose of a
    turned head moves). The warp is checked by finding the face again in the warped photo
    (the face at template scale with a margin, as detectors expect some context): the
    landmarks are where the similarity sent them, within the detector's own noise.
    (Both templates' geometry: tests/test_align.py.)"""
    import cv2

    template = get_template(name)
    margin = np.array([48.0, 56.0])
    residual, redetect = [], []
    for rel in FACES:
        img = _rgb(lfw_dir / rel)
        face = align_image(img, detector, template)
        assert not face.fallback and face.crop.shape == (112, template.width, 3), rel
        m = similarity_transform(face.landmarks, template.points)
        residual.append(np.linalg.norm(face.landmarks @ m[:, :2].T + m[:, 2] - template.points, axis=1))
        m[:, 2] += margin
        wide = cv2.warpAffine(img, m, (template.width + 96, 112 + 112))
        again = select_central_face(detector.faces(wide), *wide.shape[:2]).landmarks - margin
        redetect.append(np.linalg.norm(again - (face.landmarks @ m[:, :2].T + m[:, 2] - margin), axis=1))
    residual, redetect = np.array(residual), np.array(redetect)
    assert residual.mean() < 4.0 and residual.max() < 9.0, residual.round(2)
    # measured: MTCNN 1.0 px mean (max 2.8), YuNet 2.6 px mean (max 6.0)
    assert redetect.mean() < 4.0 and redetect.max() < 8.0, redetect.round(2)


# MTCNN's landmarks in faces warped by each detector's, px from the template: the mean and
# the largest allowed (measured: YuNet 3.6 / 10.1 with its offset, 4.4 mean without;
# yunet_mtcnn, trained toward MTCNN's landmarks: 2.96 / 8.46).
_MTCNN_AGREEMENT = {"yunet": (4.0, 12.0), "yunet_mtcnn": (3.2, 10.0)}


@pytest.mark.parametrize("name", sorted(_MTCNN_AGREEMENT))
def test_crops_put_mtcnn_landmarks_on_the_template(lfw_dir, yunet_file, name):
    """A photo warped by YuNet's landmarks (or yunet_mtcnn's) is one MTCNN agrees with:
    MTCNN's landmarks in it are within a few pixels of the template (the two detectors'
    landmark conventions differ by a few pixels, docs/BENCHMARKS.md "YuNet detector")."""
    import cv2

    yunet, mtcnn = _BUILT.get(name) or build_detector(name), _BUILT.get("mtcnn") or build_detector("mtcnn")
    template = get_template("112x96")
    margin = np.array([48.0, 56.0])
    errs = []
    for rel in FACES:
        img = _rgb(lfw_dir / rel)
        lm = select_central_face(yunet.faces(img), *img.shape[:2]).landmarks
        m = similarity_transform(lm, template.points + margin)
        wide = cv2.warpAffine(img, m, (96 + 96, 112 + 112))
        found = select_central_face(mtcnn.faces(wide), *wide.shape[:2]).landmarks - margin
        errs.append(np.linalg.norm(found - template.points, axis=1))
    errs = np.array(errs)
    print(f"MTCNN landmarks in {name}-aligned faces, px from the template: mean {errs.mean():.2f}, max {errs.max():.2f}")
    mean, most = _MTCNN_AGREEMENT[name]
    assert errs.mean() < mean and errs.max() < most, errs.round(2)


def test_photo_without_a_face(detector):
    """A flat gray photo and smooth noise: no face, and alignment falls back to the
    central box, as documented (README, Alignment)."""
    rng = np.random.default_rng(0)
    gray = np.full((250, 250, 3), 128, np.uint8)
    noise = np.asarray(Image.fromarray(rng.integers(0, 256, (25, 25, 3), dtype=np.uint8)).resize((250, 250)))
    for img in (gray, noise):
        assert detector.faces(img) == []
        face = align_image(img, detector, get_template("112x96"))
        assert face.fallback and face.faces == 0 and face.landmarks is None


def test_tiny_photo(detector, lfw_dir):
    """An 8x8 photo (even of a face, shrunk) has no findable face: fallback, no error."""
    tiny = np.asarray(Image.open(lfw_dir / FACES[0]).convert("RGB").resize((8, 8)))
    assert detector.faces(tiny) == []
    face = align_image(tiny, detector, get_template("112x96"))
    assert face.fallback and face.crop.shape == (112, 96, 3)


def test_several_faces_the_most_central_is_used(detector, lfw_dir):
    """Three LFW photos side by side: every face is found and the middle one is aligned,
    the face found in that photo alone, shifted 250 px."""
    photos = [_rgb(lfw_dir / rel) for rel in FACES[:3]]
    canvas = np.concatenate(photos, axis=1)  # 250 x 750
    template = get_template("112x96")
    if getattr(detector, "max_side", canvas.shape[1]) < canvas.shape[1]:
        # yunet_mtcnn brings photos down to 160 px (portraits): these faces would be 30 px
        # and one of them is then missed (measured); at the canvas's own size it sees all.
        import copy

        detector = copy.copy(detector)
        detector.max_side = canvas.shape[1]
    together = align_image(canvas, detector, template)
    alone = align_image(photos[1], detector, template)
    assert together.faces >= 3 and not together.fallback
    shift = np.linalg.norm(together.landmarks - [250.0, 0.0] - alone.landmarks, axis=1)
    # The neighbours' faces are 250 px away. Within that, landmarks move with what
    # surrounds the face: MTCNN and YuNet's first pass under 3 px here, YuNet's refining
    # pass (over the face's own surroundings, which now include the neighbours) ~4 px;
    # yunet_mtcnn, trained on faces of about 75 px and run here at 110, 3.4 px.
    assert shift.mean() < (5.0 if detector.name in ("yunet", "yunet_mtcnn") else 3.0), shift.round(2)


def test_correct_landmarks_is_an_offset_in_the_template_frame():
    """Landmarks equal to the template, scaled by 2 and rotated 90 degrees: an offset of
    (+1, 0) template px moves each point by 2 px along the rotated x axis."""
    t = TEMPLATES["112x96"].points
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    img_pts = (2.0 * t) @ rot.T + np.array([300.0, 40.0])
    np.testing.assert_allclose(correct_landmarks(img_pts, np.zeros((5, 2))), img_pts, atol=1e-9)
    moved = correct_landmarks(img_pts, np.tile([1.0, 0.0], (5, 1)))
    np.testing.assert_allclose(moved - img_pts, np.tile(2.0 * rot @ [1.0, 0.0], (5, 1)), atol=1e-9)


def test_yunet_upscales_small_and_downscales_large_photos(lfw_dir, yunet_file):
    """The same face at 0.5x and 4x: landmarks come back in the photo's own coordinates
    (within YuNet's own scale jitter: under 1 px at 0.5x, about 4 px at 4x on this face)."""
    det = YunetDetector(model=yunet_file)
    img = Image.open(lfw_dir / FACES[0]).convert("RGB")
    ref = select_central_face(det.faces(np.asarray(img)), 250, 250).landmarks
    for scale, tol in ((0.5, 2.0), (4.0, 6.0)):
        big = np.asarray(img.resize((round(250 * scale),) * 2, Image.BICUBIC))
        lm = select_central_face(det.faces(big), *big.shape[:2]).landmarks / scale
        assert np.linalg.norm(lm - ref, axis=1).mean() < tol, (scale, lm, ref)


def test_folder_records_the_detector_and_refuses_to_mix(lfw_dir, tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    Image.open(lfw_dir / FACES[0]).save(src / "a" / "x.jpg")
    report = align_folder(src, tmp_path / "dst", AlignOptions(detector="yunet", workers=1))
    assert report.detector == "yunet" and report.aligned == 1
    with pytest.raises(FacekdError, match="detector yunet@77px, not mtcnn"):
        align_folder(src, tmp_path / "dst", AlignOptions(detector="mtcnn", workers=1))
    # A folder of crops from YuNet's first-pass landmarks (before the 77-px refinement)
    # is not continued with the refined ones.
    state = tmp_path / "dst" / ".align_state.jsonl"
    state.write_text(state.read_text().replace('"yunet@77px"', '"yunet"'))
    with pytest.raises(FacekdError, match="detector yunet, not yunet@77px"):
        align_folder(src, tmp_path / "dst", AlignOptions(detector="yunet", workers=1))
    with pytest.raises(FacekdError, match="unknown face detector"):
        align_folder(src, tmp_path / "other", AlignOptions(detector="nope", workers=1))


def test_cache_keys_name_the_detector(tmp_path):
    from facekd.evaluation.pairs import aligned_folder_for

    keys = {d: aligned_folder_for(tmp_path, "112x96", d) for d in DETECTORS.names()}
    assert len(set(keys.values())) == len(keys)
    assert str(keys["mtcnn"]).endswith("112x96-mtcnn") and str(keys["yunet"]).endswith("112x96-yunet@77px")


def test_building_yunet_prints_no_opencv_warning(capfd, yunet_file):
    build_detector("yunet").detect(np.zeros((250, 250, 3), np.uint8))
    assert "setPreferableTarget" not in capfd.readouterr().err
