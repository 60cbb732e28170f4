"""A teacher's own crop of a photo: its geometry applied to the same detection the
student's crop came from, never a resize or padding of the student's crop.

Three kinds of geometry:

- ``template``: facekd's similarity warp of the five MTCNN landmarks onto a template
  (the students' 112x96 / 112x112 crops);
- ``box``: FaceNet's crop (davidsandberg/facenet ``align_dataset_mtcnn.py``): MTCNN's box
  grown by ``margin`` photo pixels (half on each side), clipped to the photo, cut and
  resized to a ``size`` x ``size`` square without keeping the aspect ratio;
- ``dlib_chip``: dlib's 150x150 chip (``dlib.get_face_chip``) from dlib's own 5-point
  shape predictor run inside MTCNN's box.

Each geometry is also a facekd template (its name and crop size) so that folders and
packs of its crops are recognised by size; the template's landmarks are where MTCNN's
landmarks fall in such a crop on average over LFW, which makes ``facekd align
--template NAME`` (a similarity warp) a close stand-in when only the landmarks are kept.

How it works for packs: a teacher that wants another geometry gets a *teacher pack
beside the student pack*: the same photos, in the same order and under the same
relative names, cut by :func:`cut_folder` from the detections that
:func:`detect_folder` stored once (``detections.json``); ``teacher.crops`` in a
distillation config names it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from facekd.align.aligner import MIN_SCORE, box_crop, fallback_detection  # noqa: F401  (box_crop: re-exported)
from facekd.align.detector import Detection, build_detector, select_central_face
from facekd.align.template import TEMPLATES, Template, get_template, warp_to_template
from facekd.errors import FacekdError
from facekd.image_io import read_rgb
from facekd.io_utils import atomic_write_json
from facekd.registry import Registry
from facekd.teachers.dlib_resnet import import_dlib, shape_predictor_path
from facekd.workers import run_in_workers

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CropGeometry:
    """How a teacher cuts its input from a photo and a detection.

    Attributes:
        name: Registry name; also the template name of its crops.
        kind: "template", "box" or "dlib_chip".
        height, width: Crop size.
        margin: ``box``: photo pixels added around MTCNN's box (half per side).
        padding: ``dlib_chip``: dlib's padding around its landmark template.
        mean_landmarks: Where MTCNN's five landmarks fall in such a crop on average
            (LFW), the template's points for a similarity-warp stand-in.
    """

    name: str
    kind: str
    height: int
    width: int
    margin: float = 0.0
    padding: float = 0.25
    mean_landmarks: tuple[tuple[float, float], ...] = ()

    @property
    def template(self) -> Template:
        if self.kind == "template" or self.name in TEMPLATES:  # facekd's own (facenet160: a box template)
            return get_template(self.name)
        return Template(self.name, self.height, self.width, self.mean_landmarks)


CROPS: Registry[CropGeometry] = Registry("crop geometry")


def register_crop(geometry: CropGeometry) -> CropGeometry:
    """Registers ``geometry``; a box or chip geometry also becomes a facekd template."""
    CROPS.register(geometry.name)(lambda: geometry)
    if geometry.kind != "template":
        TEMPLATES.setdefault(geometry.name, geometry.template)
    return geometry


for _name in ("112x96", "112x112"):
    _t = get_template(_name)
    register_crop(CropGeometry(_name, "template", _t.height, _t.width))

# Mean MTCNN landmarks in each crop, measured over LFW's pair photos with facekd's MTCNN
# detections (pixel centres, cv2.resize convention): 7,699 photos for facenet160, every
# 10th (770) for dlib150, whose chips need dlib's landmarks.
_F160 = get_template("facenet160")  # the box geometry is an alignment template (facekd.align.template)
FACENET_160 = register_crop(CropGeometry(
    "facenet160", "box", _F160.height, _F160.width, margin=_F160.box_margin, mean_landmarks=_F160.landmarks,
))
DLIB_150 = register_crop(CropGeometry(
    "dlib150", "dlib_chip", 150, 150, padding=0.25,
    mean_landmarks=((47.5, 46.0), (102.6, 45.9), (74.5, 78.6), (50.5, 106.2), (99.6, 106.1)),
))


def choose_face(
    detections: list[Detection], height: int, width: int, min_score: float = MIN_SCORE
) -> Detection | None:
    """The face facekd's aligner would use (None: it falls back to the central box);
    ``min_score`` is the detector's (``FaceDetector.min_score``)."""
    faces = [d for d in detections if d.score >= min_score]
    return select_central_face(faces, height, width) if faces else None


class DlibChipper:
    """dlib's 5-point shape predictor and ``get_face_chip``, run inside a given box."""

    def __init__(self) -> None:
        self._dlib = import_dlib()
        self._predictor = self._dlib.shape_predictor(str(shape_predictor_path()))

    def __call__(self, image: np.ndarray, box: np.ndarray, size: int, padding: float) -> np.ndarray:
        dlib = self._dlib
        rect = dlib.rectangle(*(int(round(v)) for v in box))
        shape = self._predictor(np.ascontiguousarray(image), rect)
        return np.asarray(dlib.get_face_chip(np.ascontiguousarray(image), shape, size=size, padding=padding))


class Cutter:
    """Cuts crops of one geometry from (photo, detection) pairs."""

    def __init__(self, geometry: CropGeometry | str) -> None:
        self.geometry = CROPS.build(geometry) if isinstance(geometry, str) else geometry
        self._chipper = DlibChipper() if self.geometry.kind == "dlib_chip" else None

    def __call__(self, image: np.ndarray, detection: Detection | None) -> np.ndarray:
        g = self.geometry
        det = detection or fallback_detection(*image.shape[:2])
        if g.kind == "template":
            return warp_to_template(image, det.landmarks, g.template)
        if g.kind == "box":
            return box_crop(image, det.box, g.margin, g.height)
        return self._chipper(image, det.box, g.height, g.padding)


# --- stored detections: one detection per photo, shared by every teacher ----------------

DETECTIONS_NAME = "detections.json"


def save_detections(path: Path, detections: dict[str, Detection | None]) -> None:
    """Writes {relative path: chosen detection or None (fallback)} as JSON."""
    atomic_write_json(path, {
        rel: None if d is None else {"box": d.box.tolist(), "landmarks": d.landmarks.tolist(), "score": d.score}
        for rel, d in detections.items()
    })


def load_detections(path: Path) -> dict[str, Detection | None]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FacekdError(f"{path}: cannot read stored detections ({exc})") from None
    return {
        rel: None if d is None else Detection(np.asarray(d["box"]), float(d["score"]), np.asarray(d["landmarks"]))
        for rel, d in raw.items()
    }


_DETECT: dict = {}


def _init_detect(detector: str, threads: int) -> None:
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")  # see facekd.align.folder
    import torch

    torch.set_num_threads(threads)
    _DETECT["detector"] = build_detector(detector)


def _detect_chunk(args: tuple[str, list[str]]) -> list[tuple[str, Detection | None]]:
    src, rels = args
    det = _DETECT["detector"]
    out = []
    for rel in rels:
        img = read_rgb(Path(src) / rel)
        out.append((rel, choose_face(det.detect(img), *img.shape[:2], det.min_score)))
    return out


def detect_photos(
    src: Path, files: list[str], detector: str = "mtcnn", workers: int = 0, progress: Progress | None = None
) -> dict[str, Detection | None]:
    """The face facekd's aligner would choose in each photo (None: fallback), found once
    so every teacher's crop comes from the same detection; ``workers`` processes
    (0: one per core)."""
    workers = workers or os.cpu_count() or 1
    chunks = [(str(src), files[i : i + 16]) for i in range(0, len(files), 16)]
    found: dict[str, Detection | None] = {}
    for part in run_in_workers(_detect_chunk, chunks, workers, what=f"detect faces in {src}",
                               initializer=_init_detect, initargs=(detector, 1)):
        found.update(part)
        if progress:
            progress(len(found), len(files))
    return found


def cut_folder(
    src: Path, dst: Path, files: Iterable[str], detections: dict[str, Detection | None], geometry: CropGeometry | str,
    progress: Progress | None = None, jpeg_quality: int = 95,
) -> int:
    """Writes each photo's crop of ``geometry`` under ``dst`` with the same relative name.

    Returns:
        How many photos had no detection (central fallback).
    """
    from PIL import Image

    cut = Cutter(geometry)
    files = list(files)
    fallbacks = 0
    for k, rel in enumerate(files):
        if rel not in detections:
            raise FacekdError(f"{rel}: no stored detection (run the detection over {src} first)")
        det = detections[rel]
        fallbacks += det is None
        crop = cut(read_rgb(src / rel), det)
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(out, quality=jpeg_quality)
        if progress:
            progress(k + 1, len(files))
    return fallbacks
