"""The Python API: load a model by name, embed photos, verify two photos, align a photo.

::

    import facekd

    model = facekd.load("student5_mobilefacenet_casia")   # a model facekd ships
    emb = model.embed(["a.jpg", "b.jpg"])                 # (2, D), L2-normalised
    print(float(emb[0] @ emb[1]))                         # cosine similarity
    v = model.verify("a.jpg", "b.jpg")                    # v.same, v.similarity, v.threshold
    face = facekd.align("a.jpg")                          # face.crop, face.landmarks

Photos may be file paths, PIL images or numpy arrays (HxWx3 uint8 RGB, or HxW gray).
Each photo is detected and aligned to the model's template as ``facekd embed`` does it
(:mod:`facekd.align.photo`: YuNet, then MTCNN where YuNet finds no face; the most
central face of several). A photo without a face is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facekd.align.photo import (
    DEFAULT_DETECTORS,
    Photo,
    PhotoError,
    PhotoFace,
    as_rgb,
    detector_chain,
    find_face,
)
from facekd.image_io import UnreadableImage, read_rgb
from facekd.deploy.photos import Verification, stored_threshold, verify_photos
from facekd.errors import FacekdError
from facekd.hub import resolve
from facekd.preprocessing import Preprocessing, l2_normalize

__all__ = ["Model", "Photo", "PhotoFace", "Verification", "load"]


def _many(photos: Photo | Sequence[Photo]) -> list[Photo]:
    """A single photo as a list of one; a list or tuple of photos as it is."""
    return list(photos) if isinstance(photos, (list, tuple)) else [photos]


class Model:
    """A face-recognition model ready to embed photos (built by :func:`load`).

    Attributes:
        name: What the model is called (its file, or backbone and weights).
        pre: Its preprocessing: alignment template, pixel normalisation.
        threshold: The cosine threshold :meth:`verify` uses (the one stored in an
            exported model, or the one given to :func:`load`); None when there is none.
    """

    def __init__(self, spec: str | Path, *, weights: str | Path | None = None, device: str = "cpu",
                 detectors: Sequence[str] = DEFAULT_DETECTORS, threshold: float | None = None,
                 allow_download: bool = True) -> None:
        resolved = resolve(spec, weights, allow_download=allow_download)
        self.name: str = resolved.name
        self.pre: Preprocessing = resolved.pre
        self._embedder = resolved.embedder(device)
        self._chain = detector_chain(tuple(detectors), device)
        if threshold is None and resolved.path is not None and resolved.path.suffix.lower() == ".onnx":
            threshold = stored_threshold(resolved.path)
        self.threshold: float | None = threshold

    def __repr__(self) -> str:
        return f"Model({self.name!r}, template={self.pre.template!r}, threshold={self.threshold})"

    def align(self, photo: Photo) -> PhotoFace:
        """The most central face of ``photo``, aligned to this model's template.

        Raises:
            FacekdError: The photo cannot be read or holds no face (names it).
        """
        return find_face(photo, self._chain, self.pre.template)

    def embed(self, photos: Photo | Sequence[Photo], *, aligned: bool = False) -> np.ndarray:
        """L2-normalised embeddings of the photos, in order (cosine = dot product).

        Args:
            photos: One photo or a list of them: paths, PIL images or numpy arrays.
            aligned: The photos are crops already aligned to this model's template
                (from :meth:`align` or ``facekd align``): skip detection.

        Returns:
            (N, D) float32, one row per photo (N = 1 for a single photo).

        Raises:
            FacekdError: A photo cannot be read or holds no face; an aligned crop has
                the wrong size.
        """
        items = _many(photos)
        if not items:
            raise FacekdError("no photos to embed")
        if aligned:
            crops = [as_rgb(_read(p), str(p) if isinstance(p, (str, Path)) else f"<array {i}>")
                     for i, p in enumerate(items)]
            want = self.pre.input_size
            for i, c in enumerate(crops):
                if c.shape[:2] != want:
                    raise FacekdError(f"photo {i}: {c.shape[1]}x{c.shape[0]} is not an aligned "
                                      f"{self.pre.template} crop ({want[1]}x{want[0]}); leave aligned=False")
        else:
            crops = [find_face(p, self._chain, self.pre.template, i).crop for i, p in enumerate(items)]
        return l2_normalize(np.asarray(self._embedder(np.stack(crops)), np.float32))

    def verify(self, a: Photo, b: Photo, *, threshold: float | None = None) -> Verification:
        """Whether photos ``a`` and ``b`` show the same person: cosine similarity of
        their embeddings against the threshold.

        Args:
            a, b: The two photos (paths, PIL images or numpy arrays).
            threshold: Overrides the model's stored threshold.

        Raises:
            FacekdError: No threshold (the model stores none and none was given), or a
                photo cannot be used.
        """
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            raise FacekdError(f"{self.name}: no verification threshold stored; pass threshold=... "
                              "(or load an exported model that stores one, `facekd threshold`)")
        fa, fb = (find_face(p, self._chain, self.pre.template, i) for i, p in enumerate((a, b)))
        return verify_photos(self._embedder, fa, fb, threshold)


def _read(photo: Photo) -> Photo:
    """A path read as an RGB array; anything else as it is."""
    if not isinstance(photo, (str, Path)):
        return photo
    try:
        return read_rgb(photo)
    except (UnreadableImage, OSError) as exc:
        raise PhotoError(photo, f"cannot read ({exc})") from None


def load(spec: str | Path, *, weights: str | Path | None = None, device: str = "cpu",
         detectors: Sequence[str] = DEFAULT_DETECTORS, threshold: float | None = None,
         allow_download: bool = True) -> Model:
    """A model by name, ready to embed and verify photos.

    Args:
        spec: What to load, as the command line's ``--model`` takes it: the name of a
            model facekd ships ("student5_mobilefacenet_casia", see
            ``weights/manifest.json``), a registered backbone ("mobilefacenet", with its
            published weights from ``$FACEKD_WEIGHTS`` or the cache), a facekd
            checkpoint, or an ``.onnx`` file.
        weights: For a registered backbone: a weights file or manifest name.
        device: Where PyTorch models and MTCNN run ("cpu", "cuda").
        detectors: Face detectors tried in order per photo.
        threshold: Cosine threshold for :meth:`Model.verify` (default: the one an
            exported model stores).
        allow_download: Whether published weights may be downloaded.

    Raises:
        FacekdError: Unknown name or unreadable file (names it and lists the known names).
    """
    return Model(spec, weights=weights, device=device, detectors=detectors, threshold=threshold,
                 allow_download=allow_download)
