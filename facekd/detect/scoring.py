"""Face detectors scored on the CMU+MIT set (``facekd.detect.cmumit``): recall,
precision, average precision and landmark error.

**Matching rule.** The boxes are too loose for a box-IoU rule, so detections are matched
by landmarks: a detection matches an annotated face when the mean distance between its
eyes and nose tip and the face's annotated eyes and nose tip is below ``max_distance``
(0.5) times the face's annotated inter-ocular distance (IOD). Detections are taken in
order of score (the whole set's detections, every score the detector returns); each
takes the nearest unmatched face within the limit, and each face is matched at most
once; a detection that matches nothing is a false positive, a face nothing matches is
missed. Why 0.5: over the set, YuNet's and MTCNN's detections of annotated faces lie at
most 0.54 IOD from them and every other detection at least 1.5 IOD from any annotated
face, and annotated faces are at least 1.35 IOD apart, so the rule cannot give one face's
detection to its neighbour.

**Figures.** Recall and precision at the detector's own operating score
(``FaceDetector.min_score``: what ``facekd align`` keeps); average precision (AP) as the
area under the precision-recall curve over all detections, with recall counted over all
annotated faces: scikit-learn's step-wise sum ``sum_k (R_k - R_{k-1}) P_k`` over the
score thresholds (``precision_recall_curve``), with its recall (of matched detections)
scaled by matched / annotated faces, so faces no detection finds count as missed (where
``average_precision_score`` alone ignores them: it equals this AP times annotated /
matched faces); landmark error (NME) of the faces matched at the operating score: the
distance between each detected and annotated point over the face's IOD, per point and
averaged over the five.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facekd.align.base import Detection, FaceDetector
from facekd.detect.cmumit import SIZE_BINS, CmuMit, read_photo
from facekd.io_utils import atomic_write_json

POINTS = ("left eye", "right eye", "nose tip", "left mouth corner", "right mouth corner")
MATCH_DISTANCE = 0.5  # times the annotated inter-ocular distance (module docstring)
_MATCHED_POINTS = 3  # eyes and nose tip decide a match


# --- matching ------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoMatch:
    """A photo's detections matched to its annotated faces (in the detections' order).

    Attributes:
        scores: (D,) each detection's score.
        face: (D,) the annotated face each detection matched, -1 for none.
        point_error: (D, 5) distance of each landmark from the annotated one over the
            face's IOD (NaN where unmatched).
        face_iod: (n,) the annotated faces' IOD (pixels).
    """

    scores: np.ndarray
    face: np.ndarray
    point_error: np.ndarray
    face_iod: np.ndarray


def match_photo(detections: Sequence[Detection], landmarks: np.ndarray,
                max_distance: float = MATCH_DISTANCE) -> PhotoMatch:
    """Matches one photo's detections to its annotated faces (the module's rule): greedy
    in order of score, each detection to the nearest unmatched face whose eyes and nose
    tip lie on average less than ``max_distance`` x the face's IOD from its own.

    Args:
        detections: What a detector returned for the photo (any scores).
        landmarks: (n, 5, 2) the annotated faces, facekd's order.
        max_distance: The limit, in units of each face's inter-ocular distance.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    n, d = len(landmarks), len(detections)
    iod = np.linalg.norm(landmarks[:, 0] - landmarks[:, 1], axis=1)
    scores = np.array([det.score for det in detections], dtype=np.float64)
    face = np.full(d, -1, dtype=np.int64)
    point_error = np.full((d, 5), np.nan)
    taken = np.zeros(n, dtype=bool)
    # stable: equal scores keep the detector's order, so the result does not depend on the sort
    for i in np.argsort(-scores, kind="stable"):
        if taken.all():
            break
        pts = np.asarray(detections[i].landmarks, dtype=np.float64).reshape(5, 2)
        dist = np.linalg.norm(landmarks[:, :_MATCHED_POINTS] - pts[:_MATCHED_POINTS], axis=2).mean(axis=1) / iod
        dist[taken] = np.inf
        j = int(np.argmin(dist))
        if dist[j] < max_distance:
            taken[j] = True
            face[i] = j
            point_error[i] = np.linalg.norm(landmarks[j] - pts, axis=1) / iod[j]
    return PhotoMatch(scores=scores, face=face, point_error=point_error, face_iod=iod)


def precision_recall(scores: np.ndarray, matched: np.ndarray, faces: int) -> tuple[np.ndarray, np.ndarray]:
    """The precision-recall curve over the set with recall over all ``faces`` annotated:
    scikit-learn's ``precision_recall_curve`` of the detections (matched = positive), its
    recall scaled by matched detections / ``faces``. Returns ``(recall, precision)``,
    recall decreasing to the point (0, 1), as scikit-learn orders them."""
    from sklearn.metrics import precision_recall_curve

    scores = np.asarray(scores, dtype=np.float64)
    matched = np.asarray(matched, dtype=bool)
    found = int(matched.sum())
    if found == 0 or faces == 0:
        return np.zeros(1), np.ones(1)
    precision, recall, _ = precision_recall_curve(matched, scores)
    return recall * (found / faces), precision


def average_precision(scores: np.ndarray, matched: np.ndarray, faces: int) -> float:
    """Area under :func:`precision_recall`'s curve: ``sum_k (R_k - R_{k-1}) P_k`` over the
    score thresholds (scikit-learn's step-wise AP, no interpolation), recall over all
    ``faces``, so a face no detection matches counts against it; 0 when nothing matched."""
    recall, precision = precision_recall(scores, matched, faces)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


# --- scoring a detector -----------------------------------------------------------------


@dataclass(frozen=True)
class SizeRecall:
    """Recall at the operating score for faces whose IOD is in ``[low, high)`` pixels."""

    low: float
    high: float
    faces: int
    found: int

    @property
    def recall(self) -> float | None:
        return self.found / self.faces if self.faces else None


@dataclass(frozen=True)
class DetectionScore:
    """A detector's figures on the set (see the module docstring for each).

    Attributes:
        detector: The name it was built under.
        min_score: The operating score: detections below it are not faces.
        max_distance: The matching limit, times the annotated IOD.
        photos: Photos in the set.
        faces: Annotated faces.
        detections: Detections at the operating score.
        found: Annotated faces matched at the operating score.
        recall: ``found / faces``.
        precision: ``found / detections`` (0 when there are none).
        ap: Average precision over every score the detector returned.
        nme: Mean landmark error of the faces found, over their IOD (None: none found).
        nme_per_point: The same per point, in ``POINTS`` order.
        by_size: Recall at the operating score by the faces' IOD (``SIZE_BINS``).
        curve_recall: The precision-recall curve (recall over all faces).
        curve_precision: Its precision.
        seconds: Detection time over the set, decoding excluded (0: not timed).
    """

    detector: str
    min_score: float
    max_distance: float
    photos: int
    faces: int
    detections: int
    found: int
    recall: float
    precision: float
    ap: float
    nme: float | None
    nme_per_point: tuple[float, ...] | None
    by_size: tuple[SizeRecall, ...]
    curve_recall: tuple[float, ...] = field(repr=False)
    curve_precision: tuple[float, ...] = field(repr=False)
    seconds: float = 0.0

    @property
    def photos_per_second(self) -> float | None:
        return self.photos / self.seconds if self.seconds > 0 else None

    def to_dict(self) -> dict:
        return {
            "detector": self.detector, "min_score": self.min_score, "max_distance": self.max_distance,
            "photos": self.photos, "faces": self.faces, "detections": self.detections, "found": self.found,
            "recall": self.recall, "precision": self.precision, "ap": self.ap, "nme": self.nme,
            "nme_per_point": None if self.nme_per_point is None else dict(zip(POINTS, self.nme_per_point)),
            "recall_by_iod": [
                {"iod_px": [s.low, None if math.isinf(s.high) else s.high], "faces": s.faces, "found": s.found,
                 "recall": s.recall} for s in self.by_size
            ],
            "seconds": self.seconds, "photos_per_second": self.photos_per_second,
            "curve": {"recall": list(self.curve_recall), "precision": list(self.curve_precision)},
        }


def score_detections(data: CmuMit, detections: Sequence[Sequence[Detection]], detector: str, min_score: float,
                     max_distance: float = MATCH_DISTANCE, seconds: float = 0.0) -> DetectionScore:
    """Scores a detector's detections, one list per photo of ``data`` in its order.

    Args:
        data: The annotated set.
        detections: Every detection the detector returned for each photo.
        detector: Its name, for the record.
        min_score: Its operating score (``FaceDetector.min_score``).
        max_distance: The matching limit (module docstring).
        seconds: How long detecting took, for photos/s.
    """
    if len(detections) != len(data.photos):
        raise ValueError(f"{len(detections)} detection lists for {len(data.photos)} photos")
    matches = [match_photo(d, p.landmarks, max_distance) for p, d in zip(data.photos, detections)]
    scores = np.concatenate([m.scores for m in matches]) if matches else np.zeros(0)
    face = np.concatenate([m.face for m in matches]) if matches else np.zeros(0, np.int64)
    errors = np.concatenate([m.point_error for m in matches]) if matches else np.zeros((0, 5))
    kept = scores >= min_score
    hit = kept & (face >= 0)
    faces = data.faces
    recall, precision = precision_recall(scores, face >= 0, faces)
    found_iod = np.concatenate([m.face_iod[m.face[(m.scores >= min_score) & (m.face >= 0)]] for m in matches]) \
        if matches else np.zeros(0)
    all_iod = data.iods()
    by_size = tuple(
        SizeRecall(lo, hi, int(((all_iod >= lo) & (all_iod < hi)).sum()), int(((found_iod >= lo) & (found_iod < hi)).sum()))
        for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:])
    )
    per_point = errors[hit].mean(axis=0) if hit.any() else None
    return DetectionScore(
        detector=detector, min_score=float(min_score), max_distance=float(max_distance), photos=len(data.photos),
        faces=faces, detections=int(kept.sum()), found=int(hit.sum()),
        recall=float(hit.sum() / faces) if faces else 0.0,
        precision=float(hit.sum() / kept.sum()) if kept.any() else 0.0,
        ap=average_precision(scores, face >= 0, faces),
        nme=None if per_point is None else float(per_point.mean()),
        nme_per_point=None if per_point is None else tuple(float(x) for x in per_point),
        by_size=by_size, curve_recall=tuple(float(x) for x in recall),
        curve_precision=tuple(float(x) for x in precision), seconds=float(seconds),
    )


def evaluate_detector(detector: FaceDetector, data: CmuMit, name: str | None = None,
                      max_distance: float = MATCH_DISTANCE,
                      progress: Callable[[int, int], None] | None = None) -> DetectionScore:
    """Runs ``detector`` over every photo of ``data`` and scores it.

    Photos are decoded first; then one photo is detected once untimed (a first call
    builds kernels and caches), and the detections of every photo, one at a time, are
    timed: photos/s is detection only, with the threads the detector sets itself.

    Args:
        detector: Built as the user's commands build it (``build_detector(name)``).
        data: The annotated set.
        name: Its name in the record (default ``detector.name``).
        max_distance: The matching limit.
        progress: Called with (done, total) after each photo.
    """
    images = [read_photo(data, p) for p in data.photos]
    if images:
        detector.detect(images[0])
    detections: list[list[Detection]] = []
    seconds = 0.0
    for k, image in enumerate(images, 1):
        start = time.perf_counter()
        detections.append(detector.detect(image))
        seconds += time.perf_counter() - start
        if progress:
            progress(k, len(images))
    return score_detections(data, detections, name or detector.name, detector.min_score, max_distance, seconds)


@dataclass(frozen=True)
class CmuMitReport:
    """What ``facekd eval detect`` records: the figures of each detector, how they were
    measured, and on what."""

    data: str
    command: str
    machine: dict
    date: str
    scores: tuple[DetectionScore, ...]
    face_sizes: dict
    protocol: str = (
        "CMU+MIT test set, photos as 3-channel RGB; detectors built as facekd align builds them; a detection "
        "matches an annotated face when its eyes and nose tip lie on average < max_distance x the face's "
        "inter-ocular distance from the annotated ones (greedy by score, one detection per face); recall and "
        "precision at the detector's min_score; AP = step-wise area under the precision-recall curve over "
        "all detections, recall over all annotated faces; NME = landmark error of faces found at min_score "
        "over their inter-ocular distance; photos/s = detection only, one photo at a time, one process"
    )

    def to_dict(self) -> dict:
        return {
            "data": self.data, "command": self.command, "machine": self.machine, "date": self.date,
            "protocol": self.protocol, "face_sizes": self.face_sizes,
            "detectors": [s.to_dict() for s in self.scores],
        }

    def write(self, path: Path | str) -> None:
        atomic_write_json(path, self.to_dict())
