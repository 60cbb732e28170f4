"""Face detectors with five landmarks (a registry: ``mtcnn``, ``yunet``, ``yunet_mtcnn``) and the choice of
one face per photo.

Public API for anyone who cuts crops from photos::

    det = build_detector("yunet")            # or "mtcnn"
    faces = det.detect(rgb)                  # list[Detection], landmarks in MTCNN's order
    face = select_central_face(faces, *rgb.shape[:2])
    crop = warp_to_template(rgb, face.landmarks, get_template("112x96"))  # facekd.align.template

Every detector returns landmarks in the same order (left eye, right eye, nose tip, left
and right mouth corner, left/right as seen in the image) and in the coordinates of the
image it was given, and states as data the score at which a detection counts as a face
(``min_score``) and whether it runs its neural network in torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facekd.align.template import TEMPLATES, similarity_transform
from facekd.errors import FacekdError

from facekd.align.base import (  # noqa: F401  (the public API of facekd.align.detector)
    DETECTORS,
    MAX_UPSCALE,
    UPSCALE_BELOW,
    Detection,
    FaceDetector,
    box_iou,
    detection_scale,
    resize_image,
    select_central_face,
    upscale_factor,
)




# A detector whose landmarks changed keeps its name and gets a new revision here, so
# crops cut with the old landmarks are never reused as if they were the new ones.
REVISIONS = {"yunet": "77px"}


def is_detector_file(name: str) -> bool:
    """Whether ``name`` names a trained detector's ONNX file rather than a registry entry."""
    return name.lower().endswith(".onnx")


def detector_key(name: str) -> str:
    """The name crops of detector ``name`` are recorded and cached under (its registry
    name, plus its revision when its landmarks changed since it was first shipped; for a
    detector file, its file name and the start of its sha256)."""
    if is_detector_file(name):
        import hashlib  # on use: the command line imports this module on every start (cli/args.py)

        path = Path(name)
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        except OSError as exc:
            raise FacekdError(f"{path}: cannot read the detector file ({exc.strerror or exc})") from None
        return f"fkdet:{path.name}@{digest}"
    return f"{name}@{REVISIONS[name]}" if name in REVISIONS else name


def check_detector(name: str) -> None:
    """Fails now, with the known names, when ``name`` is neither a registered detector
    nor an existing ``.onnx`` file."""
    if is_detector_file(name):
        if not Path(name).is_file():
            raise FacekdError(f"{name}: detector ONNX file not found")
        return
    DETECTORS.get(name)


def build_detector(name: str, **kwargs) -> FaceDetector:
    """The detector registered as ``name`` ("mtcnn", "yunet"), e.g. ``device="cuda"``,
    or a detector trained by ``facekd distill-detector`` given as its ``.onnx`` file.

    Every factory accepts ``device`` and ``min_face_size`` (pixels, in the upscaled image).
    """
    if is_detector_file(name):
        from facekd.align.fkdet import OnnxFaceDetector  # on use: see detector_key

        return OnnxFaceDetector(name, min_face_size=kwargs.get("min_face_size", 20))
    return DETECTORS.build(name, **kwargs)


@DETECTORS.register("yunet_mtcnn")
def _yunet_mtcnn(device: str = "cpu", min_face_size: int = 20) -> FaceDetector:
    """facekd's own detector, shipped in ``weights/``: YuNet's network started from YuNet's
    weights and trained toward MTCNN's landmarks (``configs/detect/yunet_ft.yaml``), one
    pass with photos brought down to 160 px (docs/guide/distill-detector.md)."""
    from facekd.align.fkdet import OnnxFaceDetector  # on use: see detector_key
    from facekd.weights import resolve_weights

    det = OnnxFaceDetector(resolve_weights("yunet_mtcnn"), min_face_size=min_face_size)
    det.name = "yunet_mtcnn"
    return det


# MTCNN's time and memory grow with the photo's pixels (its first P-net pass runs at
# 12 / min_face_size of full size): 4 Mpx took about 5 s and 1 GB on 2 cores of the Intel
# Xeon of docs/guide/detect.md.
MTCNN_MAX_SIDE = 2048


class MtcnnDetector(FaceDetector):
    """Finds faces and their five landmarks with facenet-pytorch's MTCNN.

    Photos whose shorter side is below ``UPSCALE_BELOW`` are upscaled first; photos whose
    longer side exceeds ``max_side`` are downscaled first, which bounds time and memory
    (an 8000x8000 photo took 30 s and 4 GB at full size on 2 Xeon cores, and a
    folder's chunk of them is detected as one batch); a face that is then smaller than
    ``min_face_size`` is not found.

    Args:
        device: Torch device for MTCNN ("cpu", "cuda").
        min_face_size: Smallest face, in pixels of the (rescaled) image.
        thresholds: MTCNN's P-, R- and O-net score thresholds.
        max_side: Longer side photos are brought down to before detection.
    """

    name = "mtcnn"
    min_score = 0.9
    uses_torch = True

    def __init__(
        self,
        device: str = "cpu",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        max_side: int = MTCNN_MAX_SIDE,
    ) -> None:
        # heavy (torch): imported only when MTCNN is chosen
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise FacekdError(f"MTCNN needs facenet-pytorch, which does not import ({exc}); it is one of facekd's "
                              "requirements: pip install -e . (or choose --detector yunet)") from None

        self._mtcnn = MTCNN(
            keep_all=True, min_face_size=min_face_size, thresholds=list(thresholds), device=device
        )
        self.max_side = max_side
        self.min_face_size = min_face_size

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in an HxWx3 uint8 RGB image, small images upscaled and large ones
        downscaled first."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """Faces for each image; images of one size are detected in one batch."""
        out: list[list[Detection]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape[:2], []).append(i)
        for (h, w), idx in groups.items():
            f = detection_scale(h, w, self.max_side)
            if min(h, w) * f < self.min_face_size:
                continue  # no face of min_face_size fits (and MTCNN fails on an image it cannot scan)
            batch = [images[i] for i in idx]
            if f != 1.0:
                batch = [resize_image(im, f) for im in batch]
            boxes, probs, points = self._mtcnn.detect(np.stack(batch), landmarks=True)
            for j, i in enumerate(idx):
                if boxes[j] is None:
                    continue
                out[i] = [
                    Detection(box=np.asarray(b, np.float64) / f, score=float(p), landmarks=np.asarray(l, np.float64) / f)
                    for b, p, l in zip(boxes[j], probs[j], points[j])
                ]
        return out


@DETECTORS.register("mtcnn")
def _mtcnn(device: str = "cpu", min_face_size: int = 20) -> FaceDetector:
    """MTCNN from facenet-pytorch: the reference the crops of SPEC 1 are cut with; slow
    (its first pass runs over the whole photo at several scales)."""
    return MtcnnDetector(device=device, min_face_size=min_face_size)


# What YuNet's landmarks differ by from MTCNN's is mostly a steady difference of
# convention (the two were trained on different annotations): MTCNN's landmarks sit, on
# the same faces, this far from YuNet's, in pixels of the 112x96 template frame fitted to
# YuNet's (mean over 1,324 LFW photos; mostly the mouth corners, which MTCNN puts ~2.5 px
# lower). With one pass only (``refine_face_px=()``), add this one: MobileFaceNet on
# LFW 98.68% -> 98.82% (docs/BENCHMARKS.md, "YuNet detector").
YUNET_TO_MTCNN_OFFSET = np.array(
    [[0.747, 1.039], [-0.489, 0.475], [0.203, 0.602], [0.073, 2.648], [0.087, 2.337]]
)

# YuNet's landmarks are steadiest when the face box is 60-90 px and move with scale
# beyond. The default takes each face's from one more pass over its surroundings scaled
# so the face is 77 px (a small image, cheaper than the first pass), then adds the offset measured
# for that pass: held out on LFW 2.93 px from MTCNN's against 3.49 for one pass, and
# the reference MobileFaceNet at 98.95% flip on LFW (MTCNN 99.07, one pass 98.82) at
# 5.4x MTCNN's align speed.
# Two passes at 66 and 88 px (``REFINE_FACE_PX``, ``REFINED_TO_MTCNN_OFFSET``) land at
# 2.69 px and 98.93% (whole photo scaled) for a third pass (docs/BENCHMARKS.md).
ONE_PASS_FACE_PX = (77.0,)
ONE_PASS_TO_MTCNN_OFFSET = np.array(
    [[1.097, 1.440], [-0.056, 0.874], [0.775, 0.645], [0.665, 2.001], [0.767, 1.874]]
)
REFINE_FACE_PX = (66.0, 88.0)
REFINED_TO_MTCNN_OFFSET = np.array(
    [[1.380, 1.145], [0.197, 0.579], [1.085, 0.474], [0.728, 2.277], [0.794, 1.753]]
)


class YunetDetector(FaceDetector):
    """YuNet (Wu et al., "YuNet: A Tiny Millisecond-level Face Detector", MIR 2023) through
    OpenCV's ``cv2.FaceDetectorYN``: 53k parameters (the 2023mar file), five landmarks, a few ms per photo.

    Photos whose shorter side is below ``UPSCALE_BELOW`` are upscaled as for MTCNN; photos
    whose longer side exceeds ``max_side`` are downscaled first (speed; a face that fills
    less than ``min_face_size`` pixels after that is not looked for). With
    ``refine_face_px``, each face larger than those sizes gets its landmarks from a pass
    over its surroundings scaled so the face has those sizes (averaged over the sizes);
    a face is refined on its own, so it gets the same landmarks alone or beside others
    (the ``REFINE_MAX_FACES`` largest of a photo).
    Then ``offset`` is added.

    Args:
        model: The ONNX file; default: manifest entry ``yunet_2023mar`` (``$FACEKD_WEIGHTS``,
            the cache, else a verified download).
        min_face_size: Smallest face box side kept, in pixels of the (upscaled) image.
        max_side: Longer side photos are brought down to before detection.
        refine_face_px: Face sizes the landmarks are taken at (default ``ONE_PASS_FACE_PX``;
            ``REFINE_FACE_PX`` for two; () for the first pass's landmarks, then with
            ``offset=YUNET_TO_MTCNN_OFFSET``).
        offset: (5, 2) landmark offset in the template frame (see ``correct_landmarks``);
            None for none.
        threads: OpenCV threads (None: OpenCV's default, every core).
    """

    name = "yunet"
    min_score = 0.6
    uses_torch = False
    # Boxes scoring below this are dropped inside OpenCV (faster NMS); the aligner's
    # own rule is ``min_score``.
    _detector_score = 0.3
    REFINE_MAX_FACES = 5  # the largest faces of a photo get refined landmarks (a crowd stays cheap)

    def __init__(
        self,
        model: Path | str | None = None,
        min_face_size: int = 20,
        max_side: int = 960,
        refine_face_px: tuple[float, ...] = ONE_PASS_FACE_PX,
        offset: np.ndarray | None = ONE_PASS_TO_MTCNN_OFFSET,
        threads: int | None = None,
    ) -> None:
        import cv2

        if model is None:
            from facekd.weights import resolve_weights  # on use: its downloader (ssl, urllib) slows every start

            model = resolve_weights("yunet_2023mar")
        model = Path(model)
        if not model.is_file():
            raise FacekdError(f"{model}: YuNet model file not found")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise FacekdError(f"OpenCV {cv2.__version__} has no FaceDetectorYN; install opencv-python-headless>=4.8")
        if threads is not None:
            cv2.setNumThreads(threads)
        # OpenCV 5 warns on every creation that its new graph engine ignores the (default)
        # target; nothing is wrong, so that one warning is kept off the user's terminal.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._det = cv2.FaceDetectorYN.create(str(model), "", (320, 320), self._detector_score, 0.3, 5000)
        finally:
            cv2.utils.logging.setLogLevel(level)
        self._size: tuple[int, int] = (320, 320)
        self.min_face_size = min_face_size
        self.max_side = max_side
        self.refine_face_px = tuple(refine_face_px)
        self.offset = None if offset is None else np.asarray(offset, dtype=np.float64)

    def _pass(self, bgr: np.ndarray, f: float) -> np.ndarray:
        """Rows (x1, y1, x2, y2, 10 landmark coordinates, score) in ``bgr``'s coordinates,
        detected on ``bgr`` scaled by ``f``."""
        img = bgr if f == 1.0 else resize_image(bgr, f)
        size = (img.shape[1], img.shape[0])
        if size != self._size:
            self._det.setInputSize(size)
            self._size = size
        _, rows = self._det.detect(img)
        if rows is None:
            return np.zeros((0, 15))
        rows = np.asarray(rows, dtype=np.float64).copy()
        rows[:, 2:4] += rows[:, 0:2]  # x, y, w, h -> x1, y1, x2, y2
        rows[:, :14] /= f
        return rows

    def _refine(self, bgr: np.ndarray, box: np.ndarray, px: float, f: float) -> np.ndarray | None:
        """The landmarks of the face in ``box`` from a pass over its surroundings (the box
        grown by its size on every side) scaled so the face is ``px`` pixels; None when
        that would not shrink it below the first pass's scale ``f``, or the face is not
        found again."""
        side = float(max(box[2] - box[0], box[3] - box[1]))
        g = px / side
        if g >= f:
            return None
        h, w = bgr.shape[:2]
        x0, y0 = max(0, int(box[0] - side)), max(0, int(box[1] - side))
        x1, y1 = min(w, int(np.ceil(box[2] + side))), min(h, int(np.ceil(box[3] + side)))
        rows = self._pass(np.ascontiguousarray(bgr[y0:y1, x0:x1]), g)
        if len(rows) == 0:
            return None
        rows[:, [0, 2, 4, 6, 8, 10, 12]] += x0
        rows[:, [1, 3, 5, 7, 9, 11, 13]] += y0
        ious = [box_iou(box, o[:4]) for o in rows]
        best = int(np.argmax(ious))
        return rows[best, 4:14].reshape(5, 2) if ious[best] > 0.5 else None

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in an HxWx3 uint8 RGB image."""
        h, w = image.shape[:2]
        f = detection_scale(h, w, self.max_side)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        rows = self._pass(bgr, f)
        side = np.minimum(rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1]) * f
        rows = rows[side >= self.min_face_size]
        if len(rows) == 0:
            return []
        landmarks = rows[:, 4:14].reshape(-1, 5, 2)
        if self.refine_face_px:
            sizes = np.maximum(rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1])
            for i in np.argsort(-sizes)[: self.REFINE_MAX_FACES]:
                found = [lm for px in self.refine_face_px if (lm := self._refine(bgr, rows[i, :4], px, f)) is not None]
                if found:
                    landmarks[i] = np.mean(found, axis=0)
        out = []
        for r, lm in zip(rows, landmarks):
            if self.offset is not None and np.any(self.offset):
                lm = correct_landmarks(lm, self.offset)
            out.append(Detection(box=r[:4].copy(), score=float(r[14]), landmarks=lm))
        return out


def correct_landmarks(landmarks: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Moves five landmarks by ``offset`` (5, 2), given in pixels of the 112x96 template
    frame fitted to them, and returns them in image coordinates.

    A template-frame offset does not depend on the face's size or roll in the photo, so
    one offset measured over LFW applies to any photo.
    """
    ref = TEMPLATES["112x96"].points
    m = similarity_transform(landmarks, ref)  # image -> template frame
    a, t = m[:, :2], m[:, 2]
    in_frame = landmarks @ a.T + t + offset
    return (in_frame - t) @ np.linalg.inv(a).T


@DETECTORS.register("yunet")
def _yunet(device: str = "cpu", min_face_size: int = 20) -> FaceDetector:
    """YuNet (OpenCV's face detector, ``yunet_2023mar.onnx``): about 5x MTCNN's speed,
    its landmarks mapped to MTCNN's convention."""
    # OpenCV's wheel runs YuNet on the CPU (a few ms a photo); ``device`` is for MTCNN.
    del device
    return YunetDetector(min_face_size=min_face_size)
