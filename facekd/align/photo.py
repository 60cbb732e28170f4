"""Photos to aligned faces: a chain of face detectors tried in order, the most central
face, and the warp onto an embedder's template; also the Python API's ``facekd.align``.

Each photo is detected and aligned exactly as ``facekd align`` does it, by a chain of
detectors tried in order (default: YuNet, the fast one, then MTCNN for a photo where
YuNet finds no face); the result names the detector that found the face. One difference
from ``facekd align``: a photo where no detector finds a face is an error here (``align``
falls back to the central box, which suits a dataset, not a decision about one photo).
With several faces, the most central large one is used (``select_central_face``, the
rule ``align`` follows) and the result says how many faces there were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from facekd.align.detector import (
    FaceDetector,
    build_detector,
    check_detector,
    select_central_face,
)
from facekd.align.template import get_template, warp_to_template
from facekd.image_io import UnreadableImage, read_rgb
from facekd.errors import FacekdError

if TYPE_CHECKING:  # PIL is only a possible input type here
    from PIL import Image

Photo = Union[str, Path, "Image.Image", np.ndarray]
"""A photo: a file path, a PIL image, or a numpy array (HxWx3 uint8 RGB, or HxW gray)."""

# YuNet first (milliseconds); MTCNN only for the photos where YuNet finds no face.
DEFAULT_DETECTORS = ("yunet", "mtcnn")


class PhotoError(FacekdError):
    """A photo that cannot be used: unreadable, or without a face. Names the photo."""

    def __init__(self, photo: Path | str, reason: str) -> None:
        super().__init__(f"{photo}: {reason}")
        self.photo = str(photo)
        self.reason = reason


@dataclass(frozen=True)
class PhotoFace:
    """The face used from one photo."""

    photo: str
    crop: np.ndarray  # H x W x 3 uint8, aligned to the model's template
    faces: int  # faces detected (the most central one is used)
    score: float  # the detector's score of the face used
    detector: str  # the detector that found it
    landmarks: np.ndarray | None = None  # (5, 2) x, y in the photo (eyes, nose tip, mouth corners)


class DetectorChain:
    """Detectors tried in order for each photo; each is built on first use, so a run
    where YuNet finds every face never loads MTCNN (nor torch).

    Args:
        detectors: Registered detector names, e.g. ``("yunet", "mtcnn")``, or detectors
            already built.
        device: Device for detectors that use one (MTCNN).
    """

    def __init__(self, detectors: Sequence[str | FaceDetector] = DEFAULT_DETECTORS, device: str = "cpu") -> None:
        if not detectors:
            raise FacekdError("name at least one face detector")
        self._built: dict[str, FaceDetector] = {}
        for d in detectors:
            if isinstance(d, FaceDetector):
                self._built[d.name] = d
            else:
                check_detector(d)  # an unknown name fails now, listing the known ones
        self.names = tuple(d.name if isinstance(d, FaceDetector) else d for d in detectors)
        self.device = device

    @classmethod
    def parse(cls, spec: str, device: str = "cpu") -> DetectorChain:
        """From a command-line value: ``"yunet,mtcnn"``, ``"mtcnn"``."""
        return cls([n.strip() for n in spec.split(",") if n.strip()], device=device)

    def get(self, name: str) -> FaceDetector:
        if name not in self._built:
            self._built[name] = build_detector(name, device=self.device)
        return self._built[name]


def align_photo(path: Path | str, detectors: DetectorChain, template: str) -> PhotoFace:
    """Reads, detects and aligns one photo with the first detector that finds a face.

    Raises:
        PhotoError: The file is missing or not an image, or no detector finds a face
            scoring at least its ``min_score``.
    """
    path = Path(path)
    if not path.is_file():
        raise PhotoError(path, "no such file")
    try:
        image = read_rgb(path)
    except UnreadableImage as exc:
        raise PhotoError(path, f"unreadable ({exc})") from None
    except OSError as exc:
        raise PhotoError(path, f"cannot read file ({exc.strerror or exc})") from None
    return align_image(image, path, detectors, template)


def align_image(image: np.ndarray, photo: Path | str, detectors: DetectorChain, template: str) -> PhotoFace:
    """Like :func:`align_photo` for a photo already decoded (HxWx3 uint8 RGB), e.g. an
    upload; ``photo`` names it in the result and in errors.

    Raises:
        PhotoError: No detector finds a face scoring at least its ``min_score``.
    """
    for name in detectors.names:
        detector = detectors.get(name)
        faces = detector.faces(image)
        if faces:
            face = select_central_face(faces, *image.shape[:2])
            crop = warp_to_template(image, face.landmarks, get_template(template))
            return PhotoFace(
                photo=str(photo), crop=crop, faces=len(faces), score=float(face.score), detector=detector.name,
                landmarks=np.asarray(face.landmarks, np.float32),
            )
    raise PhotoError(photo, f"no face found (tried {', '.join(detectors.names)})")


def as_rgb(photo: Photo, name: str) -> np.ndarray:
    """An in-memory photo (PIL image or array) as HxWx3 uint8 RGB; ``name`` names it in errors."""
    if not isinstance(photo, np.ndarray):
        if not hasattr(photo, "convert"):
            raise PhotoError(name, f"a photo is a path, a PIL image or a numpy array, not {type(photo).__name__}")
        photo = np.asarray(photo.convert("RGB"))
    if photo.dtype != np.uint8:
        raise PhotoError(name, f"a photo array must be uint8 (0..255), not {photo.dtype}")
    if photo.ndim == 2:
        photo = np.repeat(photo[:, :, None], 3, axis=2)
    if photo.ndim != 3 or photo.shape[2] not in (3, 4):
        raise PhotoError(name, f"a photo array must be HxWx3 RGB (or HxW gray), not {photo.shape}")
    return np.ascontiguousarray(photo[:, :, :3])


def find_face(photo: Photo, detectors: DetectorChain, template: str, index: int = 0) -> PhotoFace:
    """:func:`align_photo` for a path, :func:`align_image` for an image in memory (named
    ``<array index>``)."""
    if isinstance(photo, (str, Path)):
        return align_photo(photo, detectors, template)
    name = f"<array {index}>"
    return align_image(as_rgb(photo, name), name, detectors, template)


@lru_cache(maxsize=8)
def detector_chain(detectors: tuple[str, ...] = DEFAULT_DETECTORS, device: str = "cpu") -> DetectorChain:
    """One shared chain per choice of detectors: each detector is built once, on first use."""
    return DetectorChain(detectors, device=device)


def align(photo: Photo, *, template: str = "112x96", detectors: Sequence[str] = DEFAULT_DETECTORS,
          device: str = "cpu") -> PhotoFace:
    """Detects the most central face of ``photo`` and aligns it to ``template``
    (``facekd.align(photo)``).

    Args:
        photo: A path, a PIL image or a numpy array (HxWx3 uint8 RGB).
        template: Alignment template: "112x96" (facekd's students, MobileFaceNet),
            "112x112" (ArcFace-style models), "facenet160", ...
        detectors: Face detectors tried in order.
        device: Where MTCNN runs, when it is used.

    Returns:
        The aligned crop (``.crop``, HxWx3 uint8 RGB), the five landmarks in the photo
        (``.landmarks``: eyes, nose tip, mouth corners), the detector and its score, and
        how many faces the photo holds.

    Raises:
        PhotoError: The photo cannot be read or holds no face (a FacekdError naming it).
    """
    return find_face(photo, detector_chain(tuple(detectors), device), template)
