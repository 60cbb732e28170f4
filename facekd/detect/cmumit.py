"""Face detectors measured on the CMU+MIT frontal-face test set (Rowley, Baluja & Kanade;
Sung & Poggio): recall, precision, average precision and landmark error against its
annotated faces.

The set (``$FACEKD_DATA/cmu-mit-faces``): ``images/*.jpg`` (130 greyscale scene photos,
13 with no face), ``landmarks.txt`` (one face a line: ``file lx ly rx ry nx ny mlx mly
mcx mcy mrx mry``, eyes, nose tip, mouth left corner, centre, right corner) and
``boxes.txt`` (``file x1 y1 x2 y2``, boxes padded from the landmarks, about 3x the eye
distance wide: looser than any detector's, some past the image edge). This module is
the one reader of those files.

**Left and right.** The annotation's "l" is the eye on the image's left when the face
is upright: it is image-left in 507 of the 511 faces; the other 4 are upside-down faces
on playing cards, where "l" lies on the image's right. That is facekd's order (left eye,
right eye, nose tip, left and right mouth corner, as seen in the image of the upright
face; ``facekd.align.detector``), so the points map over as they are: l eye, r eye, nose,
mouth left, mouth right; the mouth centre is kept beside them.

How detectors are matched and scored on it: ``facekd.detect.scoring``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.image_io import UnreadableImage, read_rgb
from facekd.errors import FacekdError
from facekd.io_utils import read_text_file

LANDMARKS_FILE = "landmarks.txt"
BOXES_FILE = "boxes.txt"
IMAGES_DIR = "images"
# Inter-ocular distance bins (pixels of the photo) that recall is broken down by.
SIZE_BINS = (0.0, 10.0, 15.0, 20.0, 40.0, math.inf)


@dataclass(frozen=True)
class AnnotatedPhoto:
    """One photo of the set and its annotated faces (none for a photo without faces).

    Attributes:
        file: The file name under ``images/``.
        landmarks: (n, 5, 2) x, y in facekd's order (``POINTS``).
        mouth_centre: (n, 2) the annotated mouth centre.
        boxes: (n, 4) x1, y1, x2, y2 from ``boxes.txt``, None when the set has none.
    """

    file: str
    landmarks: np.ndarray
    mouth_centre: np.ndarray
    boxes: np.ndarray | None = None

    @property
    def iod(self) -> np.ndarray:
        """(n,) inter-ocular distance of each face, pixels."""
        return np.linalg.norm(self.landmarks[:, 0] - self.landmarks[:, 1], axis=1)


@dataclass(frozen=True)
class CmuMit:
    """The test set: its folder and every photo, annotated faces or none."""

    root: Path
    photos: tuple[AnnotatedPhoto, ...]

    @property
    def faces(self) -> int:
        return sum(len(p.landmarks) for p in self.photos)

    def image_path(self, photo: AnnotatedPhoto) -> Path:
        return self.root / IMAGES_DIR / photo.file

    def iods(self) -> np.ndarray:
        """Inter-ocular distance of every annotated face, in photo order."""
        return np.concatenate([p.iod for p in self.photos]) if self.photos else np.zeros(0)


def _numbers(fields: list[str], path: Path, lineno: int) -> np.ndarray:
    try:
        values = np.array([float(v) for v in fields], dtype=np.float64)
    except ValueError:
        raise FacekdError(f"{path}, line {lineno}: coordinates must be numbers, got {' '.join(fields)!r}") from None
    if not np.all(np.isfinite(values)):
        raise FacekdError(f"{path}, line {lineno}: coordinates must be finite, got {' '.join(fields)!r}")
    return values


def _lines(path: Path, width: int, what: str) -> list[tuple[int, str, np.ndarray]]:
    """``(line number, file, values)`` of each non-blank line of ``path``, which must hold a
    file name and ``width`` numbers (``what`` says which)."""
    text = read_text_file(path, "annotation file")
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != width + 1:
            raise FacekdError(f"{path}, line {lineno}: expected a file name and {width} numbers ({what}), "
                              f"got {len(fields)} fields")
        rows.append((lineno, fields[0], _numbers(fields[1:], path, lineno)))
    return rows


def read_landmarks(path: Path | str) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """``landmarks.txt``: for each file, its faces in file order as ``(landmarks (5, 2) in
    facekd's order, mouth centre (2,))``.

    Raises:
        FacekdError: A malformed line (field count, a value that is not a finite number,
            both eyes at one point), naming the file and the line.
    """
    path = Path(path)
    faces: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for lineno, name, v in _lines(path, 12, "lx ly rx ry nx ny mlx mly mcx mcy mrx mry"):
        pts = v.reshape(6, 2)  # l eye, r eye, nose, mouth left, mouth centre, mouth right
        if np.allclose(pts[0], pts[1]):
            raise FacekdError(f"{path}, line {lineno}: both eyes at ({pts[0, 0]:g}, {pts[0, 1]:g})")
        faces.setdefault(name, []).append((pts[[0, 1, 2, 3, 5]], pts[4]))
    return faces


def read_boxes(path: Path | str) -> dict[str, list[np.ndarray]]:
    """``boxes.txt``: for each file, its face boxes (x1, y1, x2, y2) in file order.

    Raises:
        FacekdError: A malformed line, or a box with x2 <= x1 or y2 <= y1, naming the file
            and the line.
    """
    path = Path(path)
    boxes: dict[str, list[np.ndarray]] = {}
    for lineno, name, v in _lines(path, 4, "x1 y1 x2 y2"):
        if v[2] <= v[0] or v[3] <= v[1]:
            raise FacekdError(f"{path}, line {lineno}: an empty box ({' '.join(f'{x:g}' for x in v)})")
        boxes.setdefault(name, []).append(v)
    return boxes


def read_cmumit(root: Path | str) -> CmuMit:
    """The set in ``root``: every photo under ``images/`` with its annotated faces from
    ``landmarks.txt`` (and ``boxes.txt`` when present).

    Raises:
        FacekdError: The folder, its images or its landmarks are missing; an annotation
            names a photo that is not there; the two annotation files disagree on how many
            faces a photo has; or a line is malformed.
    """
    root = Path(root)
    images = root / IMAGES_DIR
    if not images.is_dir():
        raise FacekdError(f"{root}: not a CMU+MIT folder (no {IMAGES_DIR}/ in it)")
    landmarks = read_landmarks(root / LANDMARKS_FILE)
    boxes = read_boxes(root / BOXES_FILE) if (root / BOXES_FILE).is_file() else None
    files = sorted(p.name for p in images.iterdir() if p.is_file() and not p.name.startswith("."))
    missing = sorted(set(landmarks) - set(files))
    if missing:
        raise FacekdError(f"{root / LANDMARKS_FILE}: names photos not in {images}: {', '.join(missing[:5])}")
    if boxes is not None:
        for name in sorted(set(landmarks) | set(boxes)):
            if len(boxes.get(name, [])) != len(landmarks.get(name, [])):
                raise FacekdError(f"{root / BOXES_FILE}: {name} has {len(boxes.get(name, []))} boxes but "
                                  f"{len(landmarks.get(name, []))} faces in {LANDMARKS_FILE}")
    photos = []
    for name in files:
        faces = landmarks.get(name, [])
        photos.append(AnnotatedPhoto(
            file=name,
            landmarks=np.array([f[0] for f in faces]).reshape(-1, 5, 2),
            mouth_centre=np.array([f[1] for f in faces]).reshape(-1, 2),
            boxes=None if boxes is None else np.array(boxes.get(name, [])).reshape(-1, 4),
        ))
    return CmuMit(root=root, photos=tuple(photos))


def read_photo(data: CmuMit, photo: AnnotatedPhoto) -> np.ndarray:
    """A photo of the set as HxWx3 uint8 RGB (the greyscale copied to three channels)."""
    path = data.image_path(photo)
    try:
        return read_rgb(path)
    except UnreadableImage as exc:
        raise FacekdError(f"{path}: unreadable ({exc})") from None
    except OSError as exc:
        raise FacekdError(f"{path}: cannot read file ({exc.strerror or exc})") from None



def face_sizes(data: CmuMit) -> dict:
    """How large the annotated faces are: IOD percentiles and counts by ``SIZE_BINS``."""
    iod = data.iods()
    pct = (0, 5, 25, 50, 75, 95, 100)
    return {
        "iod_px_percentiles": dict(zip((f"p{p}" for p in pct), (float(x) for x in np.percentile(iod, pct))))
        if len(iod) else {},
        "faces_by_iod_px": [
            {"iod_px": [lo, None if math.isinf(hi) else hi], "faces": int(((iod >= lo) & (iod < hi)).sum())}
            for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:])
        ],
    }
