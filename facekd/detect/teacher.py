"""The detection teachers: YuNet's raw maps and hint tensor (for the distillation terms),
and teachers' final detections per photo as labels (cached).

YuNet's ONNX graph (``yunet_2023mar``) ends in Transpose/Reshape/Sigmoid nodes fixed to a
640x640 input; ``YunetMaps`` cuts the graph before them, so ONNX Runtime runs it at any
size divisible by 32 and returns the per-cell logits and regressions NCHW (the layout of
``facekd.align.grid``), plus ``HINT_TENSOR``, the stride-8 neck feature the heads read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from facekd.align.detector import build_detector, detector_key
from facekd.align.grid import STRIDES, FaceBoxes
from facekd.errors import FacekdError
from facekd.image_io import read_rgb
from facekd.io_utils import atomic_write_json
from facekd.runtime.onnx import ort_session
from facekd.weights import resolve_weights

# The head convolutions' outputs in yunet_2023mar.onnx (before transpose and sigmoid),
# per map and stride 8, 16, 32.
YUNET_MAP_TENSORS = {
    "cls": ("258", "260", "262"),
    "obj": ("270", "272", "274"),
    "bbox": ("264", "266", "268"),
    "kps": ("276", "278", "280"),
}
HINT_TENSOR = "256"  # stride-8 neck output, 64 channels, after ReLU: what every stride-8 head reads
HINT_CHANNELS = 64


def _cut_yunet(path: Path) -> bytes:
    """YuNet's graph up to its raw maps and hint, with a dynamic batch, height and width."""
    import onnx

    model = onnx.load(str(path))
    outputs = [t for names in YUNET_MAP_TENSORS.values() for t in names] + [HINT_TENSOR]
    graph = model.graph
    wanted, needed = set(outputs), set(outputs)
    keep = []
    for node in reversed(graph.node):  # walk back from the outputs
        if needed & set(node.output):
            keep.append(node)
            needed |= set(node.input)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    del graph.output[:]
    for name in outputs:
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    used = {i for n in keep for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]
    dims = graph.input[0].type.tensor_type.shape.dim
    for d, p in zip(dims, ("N", None, "H", "W")):
        if p:
            d.ClearField("dim_value")
            d.dim_param = p
    assert wanted <= {o for n in keep for o in n.output}
    return model.SerializeToString()


class YunetMaps:
    """YuNet's raw maps on batches of images.

    Args:
        model: The ONNX file (default: manifest entry ``yunet_2023mar``).
        threads: ONNX Runtime intra-op threads (None: its default).
    """

    def __init__(self, model: Path | str | None = None, threads: int | None = None) -> None:
        if model is None:
            model = resolve_weights("yunet_2023mar")
        model = Path(model)
        if not model.is_file():
            raise FacekdError(f"{model}: YuNet model file not found")
        self._sess = ort_session(_cut_yunet(model), threads=threads)
        self._names = [o.name for o in self._sess.get_outputs()]

    def __call__(self, rgb: np.ndarray) -> tuple[dict[str, list[np.ndarray]], np.ndarray]:
        """Maps and hint for a batch (B, H, W, 3) uint8 RGB, H and W divisible by 32.

        Returns:
            ({"cls"|"obj"|"bbox"|"kps": [per stride (B, C, h, w)]}, hint (B, 64, H/8, W/8)).
        """
        if rgb.ndim != 4 or rgb.shape[1] % 32 or rgb.shape[2] % 32:
            raise ValueError(f"YuNet maps need (B, H, W, 3) with H, W divisible by 32, got {rgb.shape}")
        x = np.ascontiguousarray(rgb[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)  # BGR, 0-255
        got = dict(zip(self._names, self._sess.run(None, {"input": x})))
        maps = {k: [got[t] for t in names] for k, names in YUNET_MAP_TENSORS.items()}
        return maps, got[HINT_TENSOR]


# --- labels: a teacher's final detections per photo --------------------------------


def detect_labels(detector, rgb: np.ndarray, min_score: float | None = None) -> FaceBoxes:
    """A facekd.align detector's faces in ``rgb`` as training labels."""
    thr = detector.min_score if min_score is None else min_score
    found = [d for d in detector.detect(rgb) if d.score >= thr]
    if not found:
        return FaceBoxes.empty()
    return FaceBoxes(np.array([d.box for d in found], np.float32), np.array([d.landmarks for d in found], np.float32),
                     np.ones(len(found), bool))


def label_cache_key(detector_name: str, files: list[str]) -> str:
    h = hashlib.sha256(detector_name.encode())
    for f in files:
        h.update(f.encode() + b"\0")
    return h.hexdigest()[:16]


def load_or_label(photos: list[Path], root: Path, detector_name: str, cache_dir: Path, progress=None) -> list[FaceBoxes]:
    """The faces ``detector_name`` finds in each photo, from ``cache_dir`` when labelled
    before (one JSON file per detector and photo list, written atomically)."""
    rel = [str(p.relative_to(root)) for p in photos]
    key = detector_key(detector_name)
    path = cache_dir / f"labels-{detector_name}-{label_cache_key(key, rel)}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("detector") == key and data.get("files") == rel:
                return [_faces_from_json(f) for f in data["faces"]]
        except (ValueError, KeyError, TypeError):
            pass  # relabel below: a cache that does not read is rebuilt, never trusted
    det = build_detector(detector_name)
    faces = []
    for i, p in enumerate(photos):
        faces.append(detect_labels(det, read_rgb(p)))
        if progress:
            progress(i + 1, len(photos))
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"detector": key, "files": rel, "faces": [_faces_to_json(f) for f in faces]})
    return faces


def _faces_to_json(f: FaceBoxes) -> list:
    return [[*map(float, b), *map(float, lm.reshape(-1))] for b, lm in zip(f.boxes, f.landmarks)]


def _faces_from_json(rows: list) -> FaceBoxes:
    if not rows:
        return FaceBoxes.empty()
    a = np.asarray(rows, np.float32)
    return FaceBoxes(a[:, :4], a[:, 4:14].reshape(-1, 5, 2), np.ones(len(a), bool))


__all__ = ["HINT_CHANNELS", "STRIDES", "YunetMaps", "detect_labels", "load_or_label"]
