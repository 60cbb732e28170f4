"""PyTorch backbone -> ONNX file with its preprocessing facts, checked against PyTorch.

The ONNX model takes ``(N, 3, H, W)`` float32 normalised crops (``facekd.preprocessing.to_input``)
and returns ``(N, D)`` embeddings; N is a dynamic axis. Its metadata holds:

- ``facekd``: the :class:`~facekd.preprocessing.Preprocessing` fields as JSON (what
  :class:`~facekd.evaluation.embed.OnnxEmbedder` reads),
- ``facekd.model``: backbone name, input size, embedding size, whether the output is
  L2-normalised, which graph rewrites and which INT8 recipe were applied,
- ``facekd.threshold``: the verification threshold chosen on LFW (``facekd.deploy.threshold``).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facekd.deploy.crops import sample_crops
from facekd.deploy.graph import optimize_graph
from facekd.deploy.quantize import quantize_int8
from facekd.deploy.threshold import choose_threshold, store_threshold
from facekd.io_utils import atomic_write_bytes
from facekd.onnx_metadata import MODEL_META_KEY, ModelInfo, model_metadata, set_metadata
from facekd.errors import FacekdError
from facekd.hub import resolve
from facekd.preprocessing import Preprocessing, cosine_rows, l2_normalize, to_input
from facekd.runtime.onnx import ort_session

# FP32 ONNX Runtime against PyTorch, per embedding: what an exact export keeps.
PARITY_MIN_COSINE = 0.9999
OPSET = 17


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
    import onnx

    net = with_l2_norm(model) if normalize else model
    proto = onnx.load_from_string(_torchscript_export(net.cpu().eval(), input_size, dynamic_batch, opset))
    rewrites = optimize_graph(proto) if optimize else {}
    onnx.checker.check_model(proto)
    metadata = dict(metadata or {})
    if MODEL_META_KEY in metadata:  # record what was rewritten
        metadata[MODEL_META_KEY] = json.dumps({**json.loads(metadata[MODEL_META_KEY]), "rewrites": rewrites})
    set_metadata(proto, metadata)
    atomic_write_bytes(path, proto.SerializeToString())
    return rewrites


def _torchscript_export(net, input_size: tuple[int, int], dynamic_batch: bool, opset: int) -> bytes:
    """``net`` as serialised ONNX from the TorchScript-based exporter (see :func:`export_onnx`)."""
    import torch

    dummy = torch.zeros(2 if dynamic_batch else 1, 3, *input_size)
    axes = {"input": {0: "batch"}, "embedding": {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # "legacy TorchScript-based ONNX export" is deprecated, see export_onnx's docstring.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            net, (dummy,), buf, input_names=["input"], output_names=["embedding"],
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    return buf.getvalue()


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


def _parity_batches(inputs: np.ndarray, bs: int, single_images: int) -> list[np.ndarray]:
    """At batch 1 the first ``single_images`` inputs one by one; otherwise one batch of
    ``bs``, the inputs repeated to fill it."""
    if bs == 1:
        return [inputs[i : i + 1] for i in range(min(single_images, len(inputs)))]
    reps = -(-bs // len(inputs))
    return [np.ascontiguousarray(np.concatenate([inputs] * reps)[:bs])]


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
    import torch

    sess = ort_session(onnx_path, threads=None)
    name = sess.get_inputs()[0].name
    model = model.cpu().eval()
    cos: dict[int, float] = {}
    diff: dict[int, float] = {}
    for bs in batch_sizes:
        worst, largest = 1.0, 0.0
        for x in _parity_batches(inputs, bs, single_images):
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            if normalize:
                ref = l2_normalize(ref)
            out = sess.run(None, {name: x})[0]
            if out.shape != ref.shape:
                raise FacekdError(f"{onnx_path}: ONNX output {out.shape} differs from PyTorch {ref.shape} at batch {bs}")
            worst = min(worst, float(cosine_rows(out, ref).min()))
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


# --- the whole `facekd export` -------------------------------------------------------

NORMALIZE_CHOICES = ("auto", "yes", "no")


@dataclass(frozen=True)
class ExportRequest:
    """What ``facekd export`` was asked to do.

    Attributes:
        model: A facekd checkpoint, or a registered backbone name (with ``weights``).
        weights: Weights file or manifest name for a registered name.
        onnx: Output path. With ``int8``, the INT8 model; the FP32 one goes beside it
            as ``<stem>.fp32.onnx``.
        int8: None, "static" or "dynamic".
        calib: Aligned crops (folder or .fkpack): INT8 calibration and parity faces.
        lfw: LFW data to choose and store the verification threshold on.
        normalize: "auto" (see :func:`default_normalize`), "yes" or "no".
        optimize: Apply the graph rewrites of :mod:`facekd.deploy.graph`.
    """

    model: str
    onnx: Path
    weights: str | None = None
    int8: str | None = None
    calib: Path | None = None
    lfw: Path | None = None
    normalize: str = "auto"
    optimize: bool = True


def load_backbone(model: str, weights: str | None = None):
    """The PyTorch backbone a ``--model`` / ``--weights`` pair names, in eval mode."""
    return resolve(model, weights).require_backbone("export").eval()


def fp32_sibling(path: Path) -> Path:
    """Where the FP32 model goes when ``path`` is to hold the INT8 one."""
    return path.with_name(path.name[: -len(".onnx")] + ".fp32.onnx" if path.name.endswith(".onnx") else path.name + ".fp32.onnx")


def run_export(req: ExportRequest, log=print) -> dict:
    """Exports, checks parity, optionally quantizes and stores an LFW threshold.

    Returns:
        A JSON-ready report: paths, parity, rewrites, INT8 result, threshold.
    """
    if req.normalize not in NORMALIZE_CHOICES:
        raise FacekdError(f"--normalize must be one of {', '.join(NORMALIZE_CHOICES)}")
    if req.int8 == "static" and req.calib is None:
        raise FacekdError("--int8 static calibrates on aligned faces: pass --calib DIR (aligned crops or a .fkpack)")
    net = load_backbone(req.model, req.weights)
    cfg = net.cfg
    pre = cfg.pre
    normalize = default_normalize(pre) if req.normalize == "auto" else req.normalize == "yes"
    calib, probe, real = calibration_and_probe(req.calib, pre, tuple(cfg.input_size))
    out = Path(req.onnx)
    fp32_path = fp32_sibling(out) if req.int8 else out
    info = ModelInfo(
        backbone=cfg.name, input_size=tuple(cfg.input_size), embedding_dim=cfg.embedding_dim, l2_normalized=normalize
    )
    rewrites, parity = _export_checked(net, fp32_path, pre, info, probe, real, optimize=req.optimize)
    report: dict = {
        "model": req.model,
        "backbone": cfg.name,
        "fp32": str(fp32_path),
        "l2_normalized": normalize,
        "rewrites": rewrites,
        "parity": {
            "min_cosine": {str(k): v for k, v in parity.min_cosine.items()},
            "max_abs_diff": {str(k): v for k, v in parity.max_abs_diff.items()},
            "images": parity.images,
            "real_faces": parity.real_faces,
        },
    }
    log(
        f"exported {fp32_path} ({fp32_path.stat().st_size / 1e6:.1f} MB); parity with PyTorch on "
        f"{parity.images} {'aligned faces' if real else 'random inputs (pass --calib DIR for real faces)'}: "
        + ", ".join(f"batch {b} min cosine {c:.6f}" for b, c in parity.min_cosine.items())
    )
    final = fp32_path
    if req.int8:
        probe = probe if real else synthetic_inputs(16, tuple(cfg.input_size))
        report["int8"] = _quantize(fp32_path, out, req.int8, calib, probe, log)
        final = out
    if req.lfw is not None:
        report["threshold"] = _store_lfw_threshold(final, req.lfw, log)
    report["onnx"] = str(final)
    return report


def calibration_and_probe(
    calib_data: Path | None, pre: Preprocessing, input_size: tuple[int, int]
) -> tuple[np.ndarray | None, np.ndarray, bool]:
    """INT8 calibration inputs (None without ``calib_data``), the parity probe, and
    whether the probe holds real faces (else deterministic random inputs).

    Up to 320 crops evenly spaced over ``calib_data``: every fifth is a probe face
    (at most 64), the rest calibrate, so that an INT8 recipe is judged on faces its
    ranges were not fitted to (a source of fewer than 10 crops lends all of them to both).
    """
    if calib_data is None:
        return None, synthetic_inputs(16, input_size), False

    faces = to_input(sample_crops(calib_data, pre.template, 320), pre)
    if len(faces) < 10:
        return faces, faces, True
    held_out = np.zeros(len(faces), dtype=bool)
    held_out[::5] = True
    return faces[~held_out], faces[held_out][:64], True


def _export_checked(net, fp32_path: Path, pre: Preprocessing, info: ModelInfo, probe: np.ndarray, real: bool,
                    optimize: bool) -> tuple[dict[str, int], ParityReport]:
    """Exports ``net`` to ``fp32_path`` only once ONNX Runtime agrees with PyTorch on
    ``probe`` (a model that fails the check never lands there); returns the graph
    rewrites applied and the parity report."""
    tmp = fp32_path.with_name(f".{fp32_path.name}.unchecked")
    rewrites = export_onnx(
        net, tmp, input_size=info.input_size, normalize=info.l2_normalized, optimize=optimize,
        metadata=model_metadata(pre, info),
    )
    try:
        parity = check_parity(net, tmp, probe, normalize=info.l2_normalized, real_faces=real)
        os.replace(tmp, fp32_path)
    finally:
        tmp.unlink(missing_ok=True)
    return rewrites, parity


def _quantize(fp32_path: Path, out: Path, mode: str, calib: np.ndarray | None, probe: np.ndarray, log) -> dict:
    """INT8 ``out`` from ``fp32_path`` by the recipe that pays; its report entry."""
    log(f"quantizing ({mode}); trying each recipe and timing it against FP32 ...")
    res = quantize_int8(fp32_path, out, mode, calib=calib, probe=probe)
    for t in res.tried:
        log(f"  {t['recipe']:<24} {t['ratio']:.2f}x FP32 latency, cosine to FP32 mean {t['cosine_mean']:.4f} -> {t['verdict']}")
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, recipe {res.recipe}, {res.ratio:.2f}x FP32 latency at batch 1, one thread)")
    return res.to_dict() | {"path": str(out)}


def _store_lfw_threshold(model_path: Path, lfw: Path, log) -> dict:
    """Chooses the verification threshold on ``lfw`` with the model's own scores and stores
    it in the model's metadata; its report entry."""
    log(f"choosing the verification threshold on {lfw} ...")
    choice = choose_threshold(model_path, lfw)
    store_threshold(model_path, choice)  # chosen on this model's own scores
    log(
        f"threshold {choice.threshold:.4f} (cosine; right on {choice.accuracy_all_pairs:.2f}% of the {choice.pairs} "
        f"LFW pairs; 10-fold {choice.accuracy_10fold:.2f} ± {choice.std_10fold:.2f}%) stored in {model_path}"
    )
    return asdict(choice)
