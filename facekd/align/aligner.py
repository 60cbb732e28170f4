"""From a photo to an aligned crop: detect, choose one face, warp; fall back honestly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facekd.align.detector import FaceDetector, select_central_face
from facekd.align.template import Template, warp_to_template

# Where a face's five landmarks sit, as fractions of width and height, in an LFW-style
# loose crop centred on the face: the mean MTCNN landmarks over deep-funneled LFW
# (250x250), made left-right symmetric. Used only when MTCNN finds no face.
CENTRAL_LANDMARKS = np.array(
    [[0.4160, 0.4520], [0.5840, 0.4520], [0.5000, 0.5460], [0.4265, 0.6350], [0.5735, 0.6350]]
)

# A detection below this MTCNN score is treated as no face at all.
MIN_SCORE = 0.9


@dataclass(frozen=True)
class AlignedFace:
    """The crop and how it was obtained."""

    crop: np.ndarray  # template.height x template.width x 3 uint8
    fallback: bool  # True: no face found, the central box was used
    faces: int  # faces MTCNN found (0 on fallback)
    score: float  # MTCNN score of the chosen face (0 on fallback)


def central_landmarks(height: int, width: int) -> np.ndarray:
    """The fallback landmarks for an image of ``height`` x ``width``."""
    return CENTRAL_LANDMARKS * np.array([width, height], dtype=np.float64)


def align_detected(image: np.ndarray, detections: list, template: Template) -> AlignedFace:
    """Aligns ``image`` given its detections (see :meth:`FaceDetector.detect`)."""
    h, w = image.shape[:2]
    faces = [d for d in detections if d.score >= MIN_SCORE]
    if not faces:
        crop = warp_to_template(image, central_landmarks(h, w), template)
        return AlignedFace(crop=crop, fallback=True, faces=0, score=0.0)
    face = select_central_face(faces, h, w)
    crop = warp_to_template(image, face.landmarks, template)
    return AlignedFace(crop=crop, fallback=False, faces=len(faces), score=face.score)


def align_image(image: np.ndarray, detector: FaceDetector, template: Template) -> AlignedFace:
    """Detects faces in an HxWx3 uint8 RGB image and warps the most central one."""
    return align_detected(image, detector.detect(image), template)
