"""MTCNN face detection (facenet-pytorch) and the choice of one face per photo."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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


class FaceDetector:
    """Finds faces and their five landmarks with facenet-pytorch's MTCNN.

    Args:
        device: Torch device for MTCNN ("cpu", "cuda").
        min_face_size: Smallest face, in pixels of the (upscaled) image.
        thresholds: MTCNN's P-, R- and O-net score thresholds.
    """

    def __init__(
        self,
        device: str = "cpu",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
    ) -> None:
        from facenet_pytorch import MTCNN  # heavy; loaded when a detector is made

        self._mtcnn = MTCNN(
            keep_all=True, min_face_size=min_face_size, thresholds=list(thresholds), device=device
        )

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in an HxWx3 uint8 RGB image, small images upscaled first."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """Faces for each image; images of one size are detected in one batch."""
        out: list[list[Detection]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape[:2], []).append(i)
        for (h, w), idx in groups.items():
            f = upscale_factor(h, w)
            batch = [images[i] for i in idx]
            if f > 1:
                import cv2

                batch = [cv2.resize(im, (w * f, h * f), interpolation=cv2.INTER_CUBIC) for im in batch]
            boxes, probs, points = self._mtcnn.detect(np.stack(batch), landmarks=True)
            for j, i in enumerate(idx):
                if boxes[j] is None:
                    continue
                out[i] = [
                    Detection(box=np.asarray(b, np.float64) / f, score=float(p), landmarks=np.asarray(l, np.float64) / f)
                    for b, p, l in zip(boxes[j], probs[j], points[j])
                ]
        return out
