"""Alignment templates and the 5-point similarity transform.

The landmark order everywhere is MTCNN's: left eye, right eye, nose tip, left mouth
corner, right mouth corner (left/right as seen in the image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facekd.errors import FacekdError

# SphereFace / Wen et al. (ECCV 2016) template for 112x96 crops (x, y).
_SPHEREFACE_112x96 = (
    (30.2946, 51.6963),
    (65.5318, 51.5014),
    (48.0252, 71.7366),
    (33.5493, 92.3655),
    (62.7299, 92.2041),
)


@dataclass(frozen=True)
class Template:
    """Where the five landmarks land in an aligned crop of ``height`` x ``width``.

    ``box_margin`` set: the crop is not a similarity warp but FaceNet's box crop (the
    detector's box grown by ``box_margin`` photo pixels, half per side, clipped, resized
    to ``height`` x ``width``); ``landmarks`` are then where the landmarks fall on average.
    """

    name: str
    height: int
    width: int
    landmarks: tuple[tuple[float, float], ...]
    box_margin: float | None = None

    @property
    def key(self) -> str:
        """Names the geometry, not just the size: folders of crops are kept apart by it."""
        return self.name if self.box_margin is None else f"{self.name}-box{self.box_margin:g}"

    @property
    def points(self) -> np.ndarray:
        return np.asarray(self.landmarks, dtype=np.float64)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.height, self.width


TEMPLATES: dict[str, Template] = {
    "112x96": Template("112x96", 112, 96, _SPHEREFACE_112x96),
    # ArcFace: the same template shifted 8 px right, in a 112x112 crop.
    "112x112": Template("112x112", 112, 112, tuple((x + 8.0, y) for x, y in _SPHEREFACE_112x96)),
    # FaceNet's (davidsandberg/facenet) 160x160 crop of MTCNN's box grown by 32 px; the
    # landmarks are the mean MTCNN landmarks in such crops over LFW's 7,699 pair photos.
    "facenet160": Template(
        "facenet160", 160, 160,
        ((55.8, 66.4), (109.4, 65.4), (83.1, 91.1), (60.0, 113.4), (107.4, 112.5)),
        box_margin=32.0,
    ),
}


class TemplateMismatch(FacekdError):
    """A crop aligned to one template cannot be converted to another (see :func:`adapt_crop`)."""


def get_template(name: str) -> Template:
    """The template called ``name`` ("112x96", "112x112", "facenet160", or a teacher crop
    size registered by :mod:`facekd.teachers.crops`)."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise FacekdError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}") from None


def template_for_size(height: int, width: int) -> Template | None:
    """The template whose crop size is ``height`` x ``width``, if any."""
    for t in TEMPLATES.values():
        if (t.height, t.width) == (height, width):
            return t
    return None


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama (1991), "Least-squares estimation of transformation parameters between
    two point patterns", without reflection.

    Args:
        src: (N, 2) points, N >= 2.
        dst: (N, 2) points.

    Returns:
        A 2x3 matrix M with ``dst ~= M[:, :2] @ src + M[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (N, 2) arrays with N >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("source points are all the same point")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def warp_to_template(image: np.ndarray, landmarks: np.ndarray, template: Template) -> np.ndarray:
    """Warps an RGB image so that ``landmarks`` land on the template's points.

    Args:
        image: HxWx3 uint8 array.
        landmarks: (5, 2) landmark coordinates in ``image`` (x, y).
        template: Target template.

    Returns:
        A template.height x template.width x 3 uint8 crop.
    """
    import cv2  # opencv ships with albumentations; imported here to keep import time low

    m = similarity_transform(landmarks, template.points)
    return cv2.warpAffine(
        image, m, (template.width, template.height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def adapt_crop(crop: np.ndarray, have: Template, want: Template) -> np.ndarray:
    """Converts a crop aligned to ``have`` into one aligned to ``want``.

    Works when the two templates differ by a whole-pixel translation, as 112x112
    (ArcFace) and 112x96 (SphereFace) do: columns are cut or zero-padded.
    """
    if have == want:
        return crop
    shift = want.points - have.points
    dx, dy = shift[0]
    whole_px = abs(dx - round(dx)) < 1e-6 and abs(dy) < 1e-6
    if not np.allclose(shift, shift[0], atol=1e-6) or not whole_px or have.height != want.height:
        raise TemplateMismatch(f"cannot convert a {have.name} crop to the {want.name} template")
    dx = int(round(dx))
    out = np.zeros((want.height, want.width, crop.shape[2]), dtype=crop.dtype)
    # want column c holds have column c - dx
    lo, hi = max(0, dx), min(want.width, have.width + dx)
    out[:, lo:hi] = crop[:, lo - dx : hi - dx]
    return out
