"""From a photo to an aligned crop: detect, choose one face, warp; fall back honestly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facekd.align.detector import Detection, FaceDetector, select_central_face
from facekd.align.template import Template, warp_to_template

# Where a face's five landmarks sit, as fractions of width and height, in an LFW-style
# loose crop centred on the face: the mean MTCNN landmarks over deep-funneled LFW
# (250x250), made left-right symmetric. Used only when the detector finds no face.
CENTRAL_LANDMARKS = np.array(
    [[0.4160, 0.4520], [0.5840, 0.4520], [0.5000, 0.5460], [0.4265, 0.6350], [0.5735, 0.6350]]
)

# A detection below this MTCNN score is treated as no face at all (each detector states
# its own as ``FaceDetector.min_score``; this is MTCNN's).
MIN_SCORE = 0.9


@dataclass(frozen=True)
class AlignedFace:
    """The crop and how it was obtained."""

    crop: np.ndarray  # template.height x template.width x 3 uint8
    fallback: bool  # True: no face found, the central box was used
    faces: int  # faces the detector found (0 on fallback)
    score: float  # detector score of the chosen face (0 on fallback)
    landmarks: np.ndarray | None = None  # (5, 2) of the chosen face in the photo (None on fallback)


def central_landmarks(height: int, width: int) -> np.ndarray:
    """The fallback landmarks for an image of ``height`` x ``width``."""
    return CENTRAL_LANDMARKS * np.array([width, height], dtype=np.float64)


def align_detected(
    image: np.ndarray, detections: list[Detection], template: Template, min_score: float = MIN_SCORE
) -> AlignedFace:
    """Aligns ``image`` given its detections (see :meth:`FaceDetector.detect`); detections
    scoring below ``min_score`` (the detector's ``min_score``) do not count."""
    h, w = image.shape[:2]
    faces = [d for d in detections if d.score >= min_score]
    if not faces:
        crop = warp_to_template(image, central_landmarks(h, w), template)
        return AlignedFace(crop=crop, fallback=True, faces=0, score=0.0)
    face = select_central_face(faces, h, w)
    crop = warp_to_template(image, face.landmarks, template)
    return AlignedFace(crop=crop, fallback=False, faces=len(faces), score=face.score, landmarks=face.landmarks)


def align_image(image: np.ndarray, detector: FaceDetector, template: Template) -> AlignedFace:
    """Detects faces in an HxWx3 uint8 RGB image and warps the most central one."""
    return align_detected(image, detector.detect(image), template, detector.min_score)
