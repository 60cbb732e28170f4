"""PyTorch backbone -> ONNX file with its preprocessing facts, checked against PyTorch.

The ONNX model takes ``(N, 3, H, W)`` float32 normalised crops (``facekd.embed.to_input``)
and returns ``(N, D)`` embeddings; N is a dynamic axis. Its metadata holds:

- ``facekd``: the :class:`~facekd.embed.Preprocessing` fields as JSON (what
  :class:`~facekd.embed.OnnxEmbedder` reads),
- ``facekd.model``: backbone name, input size, embedding size, whether the output is
  L2-normalised, which graph rewrites and which INT8 recipe were applied,
- ``facekd.threshold``: the verification threshold chosen on LFW (``facekd.deploy.threshold``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from facekd.embed import ONNX_META_KEY, Preprocessing
from facekd.errors import FacekdError

MODEL_META_KEY = "facekd.model"
THRESHOLD_META_KEY = "facekd.threshold"
# FP32 ONNX Runtime against PyTorch, per embedding (issue 5).
PARITY_MIN_COSINE = 0.9999
OPSET = 17


@dataclass(frozen=True)
class ModelInfo:
    """What facekd records about an exported model (metadata key ``facekd.model``)."""

    backbone: str
    input_size: tuple[int, int]
    embedding_dim: int
    l2_normalized: bool
    rewrites: dict[str, int] = field(default_factory=dict)
    int8: str | None = None  # INT8 recipe name, None for FP32

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        d = json.loads(text)
        d["input_size"] = tuple(d["input_size"])
        return cls(**d)


def default_normalize(pre: Preprocessing) -> bool:
    """Whether the exported embedding is L2-normalised, as the model's config implies.

    Normalised, so a client needs only a dot product, unless the model's LFW recipe
    subtracts a mean embedding first (MobileFaceNet): that needs the raw embedding.
    """
    return not pre.subtract_fold_mean


def with_l2_norm(model):
    """``model`` followed by L2 normalisation of its embedding, as one module."""
    from torch import nn

    class L2Normalized(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return nn.functional.normalize(self.inner(x), dim=1)

    return L2Normalized(model)


def export_onnx(
    model,
    path: Path | str,
    *,
    input_size: tuple[int, int],
    dynamic_batch: bool = True,
    normalize: bool = False,
    optimize: bool = True,
    metadata: dict[str, str] | None = None,
    opset: int = OPSET,
) -> dict[str, int]:
    """Exports ``model`` (eval mode, CPU) to ``path`` atomically.

    Uses the TorchScript-based exporter (``dynamo=False``): it gives a clean graph
    (Conv, PRelu, Add, ...) with batch-norm folded into the convolutions, and the
    ``torch.export`` one needs ``onnxscript``, which facekd does not install. Its
    deprecation warning is silenced here.

    Args:
        model: A backbone returning ``(N, D)`` embeddings.
        path: The ``.onnx`` file to write.
        input_size: (height, width) of the crops.
        dynamic_batch: Make the batch axis dynamic (otherwise fixed at 1).
        normalize: L2-normalise the embedding inside the graph.
        optimize: Apply the exact rewrites of :mod:`facekd.deploy.graph`.
        metadata: Extra ``metadata_props`` (key -> string).
        opset: ONNX opset.

    Returns:
        How many nodes each graph rewrite changed (empty without ``optimize``).
    """
    import io

    import onnx
    import torch

    from facekd.deploy.graph import optimize_graph
    from facekd.io_utils import atomic_write_bytes

    net = with_l2_norm(model) if normalize else model
    net = net.cpu().eval()
    dummy = torch.zeros(2 if dynamic_batch else 1, 3, *input_size)
    axes = {"input": {0: "batch"}, "embedding": {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # "legacy TorchScript-based ONNX export" is deprecated, see the docstring.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            net, (dummy,), buf, input_names=["input"], output_names=["embedding"],
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    rewrites = optimize_graph(proto) if optimize else {}
    onnx.checker.check_model(proto)
    set_metadata(proto, metadata or {})
    atomic_write_bytes(path, proto.SerializeToString())
    return rewrites


def set_metadata(proto, entries: dict[str, str]) -> None:
    """Sets (or replaces) ``metadata_props`` entries of an ONNX ModelProto."""
    keep = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


def read_metadata(path: Path | str) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, without loading its weights into a session."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def update_metadata(path: Path | str, entries: dict[str, str]) -> None:
    """Rewrites ``path`` atomically with ``entries`` added to its metadata."""
    import onnx

    from facekd.io_utils import atomic_write_bytes

    proto = onnx.load(str(path))
    set_metadata(proto, entries)
    atomic_write_bytes(path, proto.SerializeToString())


def model_metadata(pre: Preprocessing, info: ModelInfo) -> dict[str, str]:
    """The facekd metadata entries for a model with this preprocessing and info."""
    return {ONNX_META_KEY: json.dumps(asdict(pre)), MODEL_META_KEY: json.dumps(asdict(info))}


@dataclass(frozen=True)
class ParityReport:
    """ONNX Runtime against PyTorch on the same inputs.

    Attributes:
        min_cosine: Lowest cosine similarity between the two embeddings of an input,
            per batch size checked.
        max_abs_diff: Largest absolute difference of an embedding value, per batch size.
        images: Inputs compared.
        real_faces: Whether the inputs were aligned face crops (else random values).
    """

    min_cosine: dict[int, float]
    max_abs_diff: dict[int, float]
    images: int
    real_faces: bool

    @property
    def worst(self) -> float:
        return min(self.min_cosine.values())


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def check_parity(
    model,
    onnx_path: Path | str,
    inputs: np.ndarray,
    *,
    normalize: bool = False,
    batch_sizes: tuple[int, ...] = (1, 64),
    real_faces: bool = True,
    min_cosine: float = PARITY_MIN_COSINE,
    single_images: int = 4,
) -> ParityReport:
    """Runs ONNX Runtime and PyTorch on ``inputs`` and compares the embeddings.

    At batch 1 the first ``single_images`` inputs are run one at a time; at a larger
    batch size the inputs are repeated to fill one batch.

    Args:
        model: The PyTorch backbone that was exported (without the normalisation).
        onnx_path: The exported model.
        inputs: (N, 3, H, W) float32, already normalised (``to_input``).
        normalize: Whether the export L2-normalised (compare to normalised PyTorch).
        batch_sizes: Batch sizes to check.
        real_faces: Recorded in the report: whether ``inputs`` are face crops.
        min_cosine: Raise when any embedding's cosine falls below this.

    Raises:
        FacekdError: A cosine below ``min_cosine``.
    """
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    model = model.cpu().eval()
    cos: dict[int, float] = {}
    diff: dict[int, float] = {}
    for bs in batch_sizes:
        if bs == 1:
            batches = [inputs[i : i + 1] for i in range(min(single_images, len(inputs)))]
        else:
            reps = -(-bs // len(inputs))
            batches = [np.ascontiguousarray(np.concatenate([inputs] * reps)[:bs])]
        worst, largest = 1.0, 0.0
        for x in batches:
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            if normalize:
                ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
            out = sess.run(None, {name: x})[0]
            if out.shape != ref.shape:
                raise FacekdError(f"{onnx_path}: ONNX output {out.shape} differs from PyTorch {ref.shape} at batch {bs}")
            worst = min(worst, float(_cosine_rows(out, ref).min()))
            largest = max(largest, float(np.abs(out - ref).max()))
        cos[bs], diff[bs] = worst, largest
    report = ParityReport(min_cosine=cos, max_abs_diff=diff, images=len(inputs), real_faces=real_faces)
    if report.worst < min_cosine:
        bad = ", ".join(f"batch {b}: {c:.6f}" for b, c in cos.items())
        raise FacekdError(f"{onnx_path}: ONNX Runtime disagrees with PyTorch (lowest cosine {bad}; need >= {min_cosine})")
    return report


def synthetic_inputs(count: int, input_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Deterministic stand-ins for normalised crops when no faces are at hand."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(count, 3, *input_size)).astype(np.float32)
