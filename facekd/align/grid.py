"""The per-cell parameterisation of YuNet, which facekd's student detectors share, so the
teacher's raw maps and the student's line up cell by cell (SPEC 4a).

At each stride s in ``STRIDES`` the input (padded to a multiple of 32) is a grid of cells;
cell (r, c) has its prior point at (c·s, r·s) and predicts

- ``cls``, ``obj``: face-class and objectness logits; the detection score is
  sqrt(sigmoid(cls) · sigmoid(obj)) (YuNet's rule in OpenCV's ``FaceDetectorYN``);
- ``bbox`` (4): centre (c + t0)·s, (r + t1)·s, width exp(t2)·s, height exp(t3)·s;
- ``kps`` (10): landmark n at ((c + t[2n])·s, (r + t[2n+1])·s), in MTCNN's order.

Maps are NCHW: per stride, cls and obj (B, 1, h, w), bbox (B, 4, h, w), kps (B, 10, h, w).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STRIDES = (8, 16, 32)
DIVISOR = 32
HEADS = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}

# The face sizes (longer box side, pixels) each stride is trained to find; the ranges
# overlap so a face near a boundary is taught at both.
SIZE_RANGES = {8: (0.0, 72.0), 16: (56.0, 144.0), 32: (112.0, math.inf)}
CENTRE_RADIUS = 1.5  # cells whose prior is within this many strides of a face's centre are its positives


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The input size a (height, width) image is padded to (bottom and right)."""
    return (((height - 1) // DIVISOR + 1) * DIVISOR, ((width - 1) // DIVISOR + 1) * DIVISOR)


@dataclass(frozen=True)
class FaceBoxes:
    """Faces of one image: boxes (n, 4) x1, y1, x2, y2; landmarks (n, 5, 2); whether each
    face's landmarks are known (n,)."""

    boxes: np.ndarray
    landmarks: np.ndarray
    has_landmarks: np.ndarray

    @staticmethod
    def empty() -> "FaceBoxes":
        return FaceBoxes(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, bool))

    def __len__(self) -> int:
        return len(self.boxes)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode(maps: dict[str, list[np.ndarray]], score_threshold: float = 0.3, nms_threshold: float = 0.3,
           top_k: int = 5000, logits: bool = True) -> np.ndarray:
    """Detections of one image from its maps (each (1, C, h, w) or (C, h, w)), after NMS.

    Returns:
        (n, 15) rows: x1, y1, x2, y2, 10 landmark coordinates, score; best first.
    """
    import cv2

    rows = []
    for i, s in enumerate(STRIDES):
        cls = maps["cls"][i].reshape(-1)
        obj = maps["obj"][i].reshape(-1)
        if logits:
            cls, obj = _sigmoid(cls), _sigmoid(obj)
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        keep = np.flatnonzero(score >= score_threshold)
        if keep.size == 0:
            continue
        h, w = maps["cls"][i].shape[-2:]
        bbox = maps["bbox"][i].reshape(4, h * w)[:, keep].T
        kps = maps["kps"][i].reshape(10, h * w)[:, keep].T
        r, c = (keep // w).astype(np.float64), (keep % w).astype(np.float64)
        cx, cy = (c + bbox[:, 0]) * s, (r + bbox[:, 1]) * s
        bw, bh = np.exp(bbox[:, 2]) * s, np.exp(bbox[:, 3]) * s
        pts = np.empty((keep.size, 10))
        pts[:, 0::2] = (kps[:, 0::2] + c[:, None]) * s
        pts[:, 1::2] = (kps[:, 1::2] + r[:, None]) * s
        rows.append(np.column_stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, pts, score[keep]]))
    if not rows:
        return np.zeros((0, 15))
    out = np.concatenate(rows)
    xywh = np.column_stack([out[:, 0], out[:, 1], out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]])
    idx = cv2.dnn.NMSBoxes(xywh.tolist(), out[:, 14].tolist(), score_threshold, nms_threshold, top_k=top_k)
    idx = np.asarray(idx, dtype=int).reshape(-1)
    return out[idx[np.argsort(-out[idx, 14])]]


def assign(faces: FaceBoxes, height: int, width: int) -> dict[str, list[np.ndarray]]:
    """The training targets of one padded image of (height, width) for ``faces``.

    Per stride: ``pos`` (h, w) bool, the positive cells (prior within ``CENTRE_RADIUS``
    strides of a face's centre, inside its box, at a stride whose ``SIZE_RANGES`` holds the
    face; a cell two faces claim goes to the smaller); ``bbox`` (4, h, w) and ``kps``
    (10, h, w) encoded targets there; ``kps_known`` (h, w) whether its face has landmarks.
    """
    out: dict[str, list[np.ndarray]] = {"pos": [], "bbox": [], "kps": [], "kps_known": []}
    boxes = np.asarray(faces.boxes, np.float64)
    sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
    order = np.argsort(-areas)  # larger first, so a smaller face overwrites a shared cell
    for s in STRIDES:
        h, w = height // s, width // s
        pos = np.zeros((h, w), bool)
        tb = np.zeros((4, h, w), np.float32)
        tk = np.zeros((10, h, w), np.float32)
        known = np.zeros((h, w), bool)
        lo, hi = SIZE_RANGES[s]
        for j in order:
            if not (lo <= sizes[j] < hi) or sizes[j] < 4:
                continue
            x1, y1, x2, y2 = boxes[j]
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            c0, c1 = max(0, math.ceil((cx - CENTRE_RADIUS * s) / s)), min(w - 1, math.floor((cx + CENTRE_RADIUS * s) / s))
            r0, r1 = max(0, math.ceil((cy - CENTRE_RADIUS * s) / s)), min(h - 1, math.floor((cy + CENTRE_RADIUS * s) / s))
            if c0 > c1 or r0 > r1:
                continue
            cc, rr = np.meshgrid(np.arange(c0, c1 + 1), np.arange(r0, r1 + 1))
            inside = (cc * s >= x1) & (cc * s <= x2) & (rr * s >= y1) & (rr * s <= y2)
            if not inside.any():  # a face smaller than a cell: its nearest prior
                inside = (np.abs(cc * s - cx) <= s / 2 + 1e-6) & (np.abs(rr * s - cy) <= s / 2 + 1e-6)
            cc, rr = cc[inside], rr[inside]
            pos[rr, cc] = True
            bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
            tb[0, rr, cc] = cx / s - cc
            tb[1, rr, cc] = cy / s - rr
            tb[2, rr, cc] = math.log(bw / s)
            tb[3, rr, cc] = math.log(bh / s)
            lm = np.asarray(faces.landmarks[j], np.float64)
            for n in range(5):
                tk[2 * n, rr, cc] = lm[n, 0] / s - cc
                tk[2 * n + 1, rr, cc] = lm[n, 1] / s - rr
            known[rr, cc] = bool(faces.has_landmarks[j])
        out["pos"].append(pos)
        out["bbox"].append(tb)
        out["kps"].append(tk)
        out["kps_known"].append(known)
    return out
