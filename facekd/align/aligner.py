"""From a photo to an aligned crop: detect, choose one face, warp; fall back honestly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facekd.align.detector import Detection, FaceDetector, select_central_face
from facekd.align.template import Template, warp_to_template
from facekd.errors import FacekdError

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


def fallback_detection(height: int, width: int) -> Detection:
    """Where facekd's aligner puts a face it did not find: the central landmarks, and a
    box around them shaped like MTCNN's (the landmarks' spread, grown as MTCNN's boxes
    are on LFW)."""
    lm = central_landmarks(height, width)
    (x1, y1), (x2, y2) = lm.min(0), lm.max(0)
    w, h = x2 - x1, y2 - y1
    box = np.array([x1 - 0.55 * w, y1 - 0.95 * h, x2 + 0.55 * w, y2 + 0.6 * h])
    return Detection(box=box, score=0.0, landmarks=lm)


def box_crop(image: np.ndarray, box: np.ndarray, margin: float, size: int) -> np.ndarray:
    """FaceNet's crop: ``box`` (x1, y1, x2, y2) grown by ``margin`` pixels, truncated to
    whole pixels and clipped as facenet's aligner does, resized to ``size`` square."""
    import cv2  # see warp_to_template

    h, w = image.shape[:2]
    x1 = int(max(box[0] - margin / 2, 0))
    y1 = int(max(box[1] - margin / 2, 0))
    x2 = int(min(box[2] + margin / 2, w))
    y2 = int(min(box[3] + margin / 2, h))
    if x2 <= x1 or y2 <= y1:
        raise FacekdError(f"empty face box {box.tolist()} in a {w}x{h} photo")
    return cv2.resize(image[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR)


def cut_face(image: np.ndarray, face: Detection, template: Template) -> np.ndarray:
    """The crop of ``face`` in ``template``'s geometry: a similarity warp of its
    landmarks, or FaceNet's box crop when the template has a ``box_margin``."""
    if template.box_margin is None:
        return warp_to_template(image, face.landmarks, template)
    return box_crop(image, face.box, template.box_margin, template.height)


def align_detected(
    image: np.ndarray, detections: list[Detection], template: Template, min_score: float = MIN_SCORE
) -> AlignedFace:
    """Aligns ``image`` given its detections (see :meth:`FaceDetector.detect`); detections
    scoring below ``min_score`` (the detector's ``min_score``) do not count."""
    h, w = image.shape[:2]
    faces = [d for d in detections if d.score >= min_score]
    if not faces:
        crop = cut_face(image, fallback_detection(h, w), template)
        return AlignedFace(crop=crop, fallback=True, faces=0, score=0.0)
    face = select_central_face(faces, h, w)
    crop = cut_face(image, face, template)
    return AlignedFace(crop=crop, fallback=False, faces=len(faces), score=face.score, landmarks=face.landmarks)


def align_image(image: np.ndarray, detector: FaceDetector, template: Template) -> AlignedFace:
    """Detects faces in an HxWx3 uint8 RGB image and warps the most central one."""
    return align_detected(image, detector.detect(image), template, detector.min_score)
