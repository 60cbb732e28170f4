"""Training frames for the detectors: labelled photos pasted into square frames.

Each frame is a k x k grid (k drawn from ``grid_weights``: one photo, 2x2, 3x3, so faces
of many sizes appear), each cell one photo scaled to cover the cell times a random zoom
(``zoom``) and cut at a random place; then a horizontal flip (landmarks swapped left for
right), a grey frame (CMU+MIT is greyscale) and brightness/contrast jitter. A face is
kept when its centre is in the cell and at least ``min_visible`` of its box is; its
box and landmarks move with the photo.

Frames are a pure function of (seed, epoch, index): a resumed run sees the same frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.align.grid import FaceBoxes
from facekd.detect.teacher import load_or_label
from facekd.errors import FacekdError
from facekd.image_io import read_rgb

FLIP_ORDER = [1, 0, 2, 4, 3]  # MTCNN's order mirrored: eyes and mouth corners swap


@dataclass(frozen=True)
class FrameOptions:
    """How frames are made (see the module docstring)."""

    size: int = 256
    grid_weights: tuple[float, ...] = (0.5, 0.35, 0.15)  # P(k = 1, 2, 3)
    zoom: tuple[float, float] = (0.6, 1.6)
    min_visible: float = 0.6
    flip: float = 0.5
    grey: float = 0.2
    jitter: float = 0.25


@dataclass
class LabelledPhotos:
    """Photos in memory with their faces (the labels: ground truth or a teacher's)."""

    images: list[np.ndarray]
    faces: list[FaceBoxes]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def __add__(self, other: "LabelledPhotos") -> "LabelledPhotos":
        return LabelledPhotos(self.images + other.images, self.faces + other.faces, self.sources + other.sources)


def _paste(frame: np.ndarray, img: np.ndarray, faces: FaceBoxes, cell: tuple[int, int, int, int], zoom: float,
           rng: np.random.Generator, min_visible: float) -> tuple[np.ndarray, np.ndarray]:
    """Pastes ``img`` into ``cell`` (x, y, w, h) of ``frame``; returns the faces kept
    (boxes (n, 4), landmarks (n, 5, 2)) in frame coordinates."""
    import cv2

    x0, y0, cw, ch = cell
    h, w = img.shape[:2]
    scale = max(cw / w, ch / h) * zoom
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    # where the resized photo's top-left lands, relative to the cell: the photo covers
    # the cell when it is larger, and sits anywhere inside it when smaller
    ox = rng.integers(min(0, cw - nw), max(0, cw - nw) + 1)
    oy = rng.integers(min(0, ch - nh), max(0, ch - nh) + 1)
    sx0, sy0 = max(0, -ox), max(0, -oy)
    dx0, dy0 = max(0, ox), max(0, oy)
    pw, ph = min(nw - sx0, cw - dx0), min(nh - sy0, ch - dy0)
    frame[y0 + dy0:y0 + dy0 + ph, x0 + dx0:x0 + dx0 + pw] = resized[sy0:sy0 + ph, sx0:sx0 + pw]
    if len(faces) == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32)
    shift = np.array([x0 + ox, y0 + oy], np.float32)
    boxes = faces.boxes * scale + np.tile(shift, 2)
    lms = faces.landmarks * scale + shift
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    vx = np.clip(boxes[:, 2], x0 + dx0, x0 + dx0 + pw) - np.clip(boxes[:, 0], x0 + dx0, x0 + dx0 + pw)
    vy = np.clip(boxes[:, 3], y0 + dy0, y0 + dy0 + ph) - np.clip(boxes[:, 1], y0 + dy0, y0 + dy0 + ph)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    keep = ((cx >= x0 + dx0) & (cx < x0 + dx0 + pw) & (cy >= y0 + dy0) & (cy < y0 + dy0 + ph)
            & (vx * vy / area >= min_visible))
    return boxes[keep], lms[keep]


def make_frame(photos: LabelledPhotos, opts: FrameOptions, rng: np.random.Generator) -> tuple[np.ndarray, FaceBoxes]:
    """One training frame (size x size x 3 uint8 RGB) and its faces."""
    import cv2

    s = opts.size
    frame = np.zeros((s, s, 3), np.uint8)
    k = int(rng.choice(len(opts.grid_weights), p=np.asarray(opts.grid_weights) / sum(opts.grid_weights))) + 1
    edges = np.linspace(0, s, k + 1).round().astype(int)
    boxes, lms = [], []
    for gy in range(k):
        for gx in range(k):
            i = int(rng.integers(len(photos)))
            zoom = float(np.exp(rng.uniform(np.log(opts.zoom[0]), np.log(opts.zoom[1]))))
            cell = (edges[gx], edges[gy], edges[gx + 1] - edges[gx], edges[gy + 1] - edges[gy])
            b, lm = _paste(frame, photos.images[i], photos.faces[i], cell, zoom, rng, opts.min_visible)
            boxes.append(b)
            lms.append(lm)
    box = np.concatenate(boxes).astype(np.float32)
    lm = np.concatenate(lms).astype(np.float32)
    if rng.random() < opts.flip:
        frame = np.ascontiguousarray(frame[:, ::-1])
        box = np.stack([s - box[:, 2], box[:, 1], s - box[:, 0], box[:, 3]], axis=1)
        lm = lm[:, FLIP_ORDER]
        lm[..., 0] = s - lm[..., 0]
    if rng.random() < opts.grey:
        g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        frame = np.repeat(g[:, :, None], 3, axis=2)
    if opts.jitter > 0:  # contrast a, brightness b, through a lookup table
        a = 1.0 + rng.uniform(-opts.jitter, opts.jitter)
        b = 255.0 * rng.uniform(-opts.jitter, opts.jitter) / 2
        frame = cv2.LUT(frame, np.clip(np.arange(256) * a + b, 0, 255).astype(np.uint8))
    return frame, FaceBoxes(box, lm, np.ones(len(box), bool))


def frame_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def load_photos(folders: list[str], root, labeller: str, cache, limit: int | None = None, progress=None) -> LabelledPhotos:
    """Every photo under ``root/<folder>`` for each folder, read into memory, labelled by
    ``labeller``'s final detections (cached; see ``facekd.detect.teacher.load_or_label``)."""
    root = Path(root)
    out = LabelledPhotos([], [], [])
    for folder in folders:
        d = root / folder
        photos = sorted(p for p in d.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not photos:
            raise FacekdError(f"{d}: no photos (.jpg, .png) to train the detector on")
        if "lfw" in d.resolve().parts or (d / "pairs.txt").exists():
            raise FacekdError(f"{d}: LFW is the test set; the detector is never trained on it")
        if "cmu-mit-faces" in d.resolve().parts:
            raise FacekdError(f"{d}: CMU+MIT is the detection test set; the detector is never trained on it")
        if limit:
            photos = photos[:limit]
        faces = load_or_label(photos, root, labeller, Path(cache), progress)
        out = out + LabelledPhotos([read_rgb(p) for p in photos], faces, [folder] * len(photos))
    return out
