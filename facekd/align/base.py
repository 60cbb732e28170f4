"""What every face detector is: a ``Detection`` (box, score, five landmarks), the
``FaceDetector`` interface, the ``DETECTORS`` registry, and the small image rules they
share (upscaling small photos, the most central face). The detectors themselves are in
``facekd.align.detector`` (MTCNN, YuNet) and ``facekd.align.fkdet`` (facekd's own)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from facekd.registry import Registry

# Below this shorter side, photos are upscaled before detection: MTCNN misses faces in
# small crops such as CelebA's 89x109 aligned images, and finds them after a 2x upscale.
UPSCALE_BELOW = 160
MAX_UPSCALE = 4


@dataclass(frozen=True)
class Detection:
    """One detected face, in the coordinates of the image given to the detector."""

    box: np.ndarray  # (4,) x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2) x, y in MTCNN's order


def select_central_face(detections: list[Detection], height: int, width: int) -> Detection:
    """The most central large face: largest box area minus twice its squared offset from
    the image centre (the rule of facenet's ``align_dataset_mtcnn``)."""
    if not detections:
        raise ValueError("no detections to choose from")
    cx, cy = width / 2.0, height / 2.0

    def score(d: Detection) -> float:
        x1, y1, x2, y2 = d.box
        area = (x2 - x1) * (y2 - y1)
        off = ((x1 + x2) / 2 - cx) ** 2 + ((y1 + y2) / 2 - cy) ** 2
        return float(area - 2.0 * off)

    return max(detections, key=score)


def upscale_factor(height: int, width: int) -> int:
    """Integer factor that brings a small photo's shorter side to ``UPSCALE_BELOW``."""
    short = min(height, width)
    if short >= UPSCALE_BELOW:
        return 1
    return min(MAX_UPSCALE, math.ceil(UPSCALE_BELOW / max(short, 1)))


def detection_scale(height: int, width: int, max_side: int) -> float:
    """The factor a photo is resized by before detection: :func:`upscale_factor` for a
    small photo, less where that would take its longer side past ``max_side``."""
    f = float(upscale_factor(height, width))
    return max_side / max(height, width) if max(height, width) * f > max_side else f


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def resize_image(image: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interp = cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA
    return cv2.resize(image, size, interpolation=interp)


class FaceDetector:
    """What every registered detector provides.

    Attributes:
        name: The registry name; recorded in reports and cache keys.
        min_score: A detection scoring below this is not a face (the aligner's rule).
        uses_torch: The detector runs in torch (workers then set torch's thread count).
    """

    name: ClassVar[str] = ""
    min_score: ClassVar[float] = 0.9
    uses_torch: ClassVar[bool] = False

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in an HxWx3 uint8 RGB image."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """Faces for each image."""
        return [self.detect(im) for im in images]

    def faces(self, image: np.ndarray) -> list[Detection]:
        """The detections that count as faces (score at least ``min_score``)."""
        return [d for d in self.detect(image) if d.score >= self.min_score]


DETECTORS: Registry[FaceDetector] = Registry("face detector")
