"""facekd's own face detectors (trained by ``facekd distill-detector``) through ONNX Runtime.

``OnnxFaceDetector`` runs an ONNX file written by ``facekd.detect.export``: the photo
(upscaled when small, downscaled past ``max_side``) padded to a multiple of 32, one pass,
the maps decoded (``facekd.align.grid.decode``). It is what ``--detector PATH.onnx``
builds (none is shipped yet: see docs/guide/detect.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facekd.align.base import Detection, FaceDetector, detection_scale, resize_image
from facekd.align.grid import decode, padded_size
from facekd.errors import FacekdError

KIND = "face_detector"  # the facekd.kind metadata of a detector's ONNX file
DEFAULT_MAX_SIDE = 960  # for a file without facekd.max_side (exported before it was stored)


class OnnxFaceDetector(FaceDetector):
    """A facekd-trained detector (an ONNX file from ``export_detector``) through ONNX Runtime.

    Args:
        model: The ONNX file.
        min_face_size: Smallest face box side kept, in pixels of the (upscaled) image.
        max_side: Longer side photos are brought down to first (None: the one stored in the
            file when it was trained, ``facekd.max_side``, else 960).
        threads: ONNX Runtime intra-op threads (None: 1, as align runs one worker per core).
    """

    name = "fkdet"
    min_score = 0.6
    uses_torch = False

    def __init__(self, model: Path | str, min_face_size: int = 20, max_side: int | None = None,
                 threads: int | None = None) -> None:
        from facekd.runtime.onnx import ort_session

        self.name = str(model)  # recorded and cached under its file (detector_key)
        model = Path(model)
        if not model.is_file():
            raise FacekdError(f"{model}: detector ONNX file not found")
        self._sess = ort_session(model, threads=threads or 1)
        meta = self._sess.get_modelmeta().custom_metadata_map
        if meta.get("facekd.kind") != KIND:
            raise FacekdError(f"{model}: not a facekd face detector (metadata facekd.kind is "
                              f"{meta.get('facekd.kind')!r}, expected {KIND!r}); export one with facekd distill-detector")
        self.path = model
        self.arch = meta.get("facekd.arch", "")
        try:  # the operating score chosen when it was trained (facekd.detect.export)
            self.min_score = float(meta.get("facekd.min_score", type(self).min_score))
        except ValueError:
            raise FacekdError(f"{model}: facekd.min_score metadata is not a number") from None
        if not 0.0 < self.min_score < 1.0:
            raise FacekdError(f"{model}: facekd.min_score {self.min_score} is outside (0, 1)")
        if max_side is None:
            stored = meta.get("facekd.max_side", str(DEFAULT_MAX_SIDE))
            if not stored.isdigit() or int(stored) < 32:
                raise FacekdError(f"{model}: facekd.max_side metadata {stored!r} is not a whole number of at least 32")
            max_side = int(stored)
        self.min_face_size = min_face_size
        self.max_side = max_side

    def maps(self, rgb: np.ndarray) -> dict[str, list[np.ndarray]]:
        """The raw maps of one padded image (H, W divisible by 32)."""
        x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
        out = self._sess.run(None, {"input": x})
        return {k: [out[j * 3 + i][0] for i in range(3)] for j, k in enumerate(("cls", "obj", "bbox", "kps"))}

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in an HxWx3 uint8 RGB image."""
        h, w = image.shape[:2]
        f = detection_scale(h, w, self.max_side)
        img = image if f == 1.0 else resize_image(image, f)
        ih, iw = img.shape[:2]
        ph, pw = padded_size(ih, iw)
        pad = np.zeros((ph, pw, 3), np.uint8)
        pad[:ih, :iw] = img
        rows = decode(self.maps(pad), score_threshold=min(0.3, self.min_score))
        side = np.minimum(rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1])
        rows = rows[side >= self.min_face_size]
        return [Detection(box=r[:4] / f, score=float(r[14]), landmarks=r[4:14].reshape(5, 2) / f) for r in rows]
