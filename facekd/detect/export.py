"""A trained student detector as an ONNX file: dynamic batch, height and width, facekd
metadata (``facekd.kind = face_detector``, the architecture, the map layout), checked
against PyTorch before it is written (atomically). ``facekd.align.fkdet`` runs it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from facekd.align.fkdet import DEFAULT_MAX_SIDE, KIND
from facekd.align.grid import STRIDES
from facekd.detect.model import output_names
from facekd.errors import FacekdError
from facekd.io_utils import atomic_write_bytes
from facekd.runtime.onnx import ort_session


def export_detector(model, arch: str, path: Path, size: int = 256, min_score: float = 0.6,
                    max_side: int = DEFAULT_MAX_SIDE) -> Path:
    """Exports ``model`` to ``path`` (atomically) and checks ONNX Runtime against PyTorch.

    ``min_score`` is stored as the detector's operating score (``facekd.min_score``): a
    distilled detector's scores are calibrated by its training, so each gets its own.
    ``max_side`` (``facekd.max_side``) is the longer side photos are brought down to
    before its pass."""
    import onnx
    import torch

    model = model.eval()
    x = torch.rand(1, 3, size, size) * 255
    names = output_names()
    buf = io.BytesIO()
    axes = {"input": {0: "N", 2: "H", 3: "W"}, **{n: {0: "N", 2: f"h{n}", 3: f"w{n}"} for n in names}}
    torch.onnx.export(model, (x,), buf, input_names=["input"], output_names=names, dynamic_axes=axes,
                      opset_version=17, dynamo=False)
    m = onnx.load_from_string(buf.getvalue())
    meta = {"facekd.kind": KIND, "facekd.arch": arch, "facekd.min_score": f"{min_score:.4f}", "facekd.max_side": str(int(max_side)),
            "facekd.input": "RGB, 0-255, NCHW, H and W divisible by 32",
            "facekd.maps": json.dumps({"strides": list(STRIDES), "outputs": names,
                                       "score": "sqrt(sigmoid(cls) * sigmoid(obj))"})}
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    data = m.SerializeToString()
    sess = ort_session(data, threads=None)
    x2 = torch.rand(2, 3, size + 32, size) * 255
    got = sess.run(None, {"input": x2.numpy()})
    with torch.no_grad():
        want = model(x2)
    worst = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
    if worst > 1e-3:
        raise FacekdError(f"{path}: ONNX Runtime differs from PyTorch by {worst:.2e} on the exported detector")
    atomic_write_bytes(path, data)
    return Path(path)
