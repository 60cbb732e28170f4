"""INT8 through onnxruntime's quantization tools, never slower than FP32.

A quantization recipe says which operators become INT8 and how. Which recipe pays off
depends on the network and the CPU, so ``quantize_int8`` tries the candidates of a mode
on this machine, keeps those whose embeddings stay close to FP32, times each against
the FP32 model (batch 1, one thread, rounds interleaved) and ships the fastest; when
none is faster than FP32 by a margin it refuses, naming what it tried.

What the dev CPU (AVX2, no VNNI) showed, ORT 1.32 profiler at batch 1, one thread:

- Static QDQ with every supported operator (``qdq_all``) suits plain CNNs: the 5-conv
  student runs at about 0.65x its FP32 time.
- On MobileFaceNet the same recipe is slower than FP32 and loses accuracy: depthwise
  3x3 convs (9 MACs per output) run slower as ``QLinearConv`` than FP32's NCHWc
  kernels, the stem (27 MACs per output) and the 7x6 global depthwise conv lose the
  most precision, and every PReLU (no integer kernel) pays a DequantizeLinear and a
  QuantizeLinear. ``qdq_wide_convs`` keeps convs with fewer than 64 MACs per output in
  FP32 and quantizes only the wide pointwise ones: faster than FP32, and the embedding
  cosine to FP32 rises from 0.977 to 0.995 on LFW faces.

What the Intel CPU with AMX showed on MobileFaceNet with every PReLU replaced by a ReLU
(``facekd.models.surgery``), per tensor with onnxruntime's ``qdq_loss_debug``: no single
layer breaks, the error grows layer by layer because a few activation values stretch
each per-tensor uint8 range (the first depthwise conv's output reaches 36 where its mean
is 0.4). ``qdq_all_mean_range`` sets each range from the mean of small calibration
batches' extremes instead of the global ones and keeps the embedding head in FP32:
cosine to FP32 0.63 -> 0.99 on held-out faces, LFW flip 98.68 against FP32's 98.73, at
0.57x the FP32 latency.

The ``_int8_prelu`` recipes then run each PReLU between two quantised convs in INT8 as
well (``facekd.deploy.int8_prelu``): on an AMD EPYC with AVX-512 VNNI, MobileFaceNet's INT8
went from 0.73x to 0.45x its FP32 at the same cosine (docs/front.md, "A PReLU kept in
INT8"). They are tried only on graphs that have PReLUs.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from facekd.deploy.graph import PRELU_PREFIX
from facekd.deploy.int8_prelu import flip_steep_slopes, integer_prelu
from facekd.onnx_metadata import MODEL_META_KEY, ModelInfo, read_metadata, set_metadata
from facekd.errors import FacekdError
from facekd.io_utils import atomic_write_bytes
from facekd.preprocessing import cosine_rows
from facekd.registry import Registry
from facekd.runtime.onnx import ort_session
from facekd.runtime.timing import measure_latency, median_ratio

# An INT8 model must beat FP32 by this much (median latency ratio), so that noise on a
# shared CPU does not let a model that is no faster through.
MAX_RATIO = 0.95
# Mean cosine between INT8 and FP32 embeddings of the probe faces that a recipe must keep.
MIN_COSINE = 0.99
# The operators that make up an embedder's head (QuantRecipe.fp32_head).
HEAD_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class QuantRecipe:
    """One way to quantize a model with onnxruntime.

    Attributes:
        name: Registry name, recorded in the model's metadata.
        static: Static (calibrated activations, QDQ format) or dynamic (weights only,
            activations quantized at run time).
        op_types: Operator types to quantize; empty: every type ORT can.
        min_conv_macs: Convs with fewer multiply-accumulates per output value
            (``in_channels / groups * kh * kw``) stay FP32.
        per_channel: Per-output-channel weight scales.
        reduce_range: 7-bit weights, against the saturation of AVX2's 8-bit
            multiply-add without VNNI (onnxruntime's advice for such CPUs).
        prelu_fp32: Keep the Min/Mul/Add of decomposed PReLUs (``facekd.deploy.graph``)
            in FP32: quantizing their intermediate values costs accuracy.
        range_batch: How static calibration sets each activation's range: 0, the
            minimum and maximum over every calibration face (onnxruntime's MinMax);
            k > 0, the mean over batches of k faces of each batch's minimum and maximum
            (MinMax with ``CalibMovingAverage``), which clips the rare outlier values
            that would otherwise stretch a per-tensor uint8 grid over a range most
            values never reach.
        fp32_head: The last this many Conv/Gemm/MatMul nodes of the graph stay FP32:
            an embedder's head (MobileFaceNet's global depthwise conv and its linear
            embedding), whose rounding lands in the embedding with nothing after it to
            average it out, at a cost of a few thousand MACs.
        fp32_stem: The first this many Conv/Gemm/MatMul nodes stay FP32: a stem whose
            rounding every later layer carries (in a network that keeps its stem's
            PReLUs, which run in FP32 anyway, it saves their Q/DQ pairs too).
        prelu_int8: After quantizing, each PReLU that runs in FP32 between two
            quantised convs becomes an integer multiply by its slopes + ``Max``
            (:mod:`facekd.deploy.int8_prelu`; slopes above 1 first rewritten exactly).
    """

    name: str
    static: bool = True
    op_types: tuple[str, ...] = ()
    min_conv_macs: int = 0
    per_channel: bool = True
    reduce_range: bool = True
    prelu_fp32: bool = True
    range_batch: int = 0
    fp32_head: int = 0
    fp32_stem: int = 0
    prelu_int8: bool = False
    doc: str = ""


INT8_RECIPES: Registry[QuantRecipe] = Registry("INT8 recipe")


def _register(recipe: QuantRecipe) -> None:
    INT8_RECIPES.register(recipe.name)(lambda: recipe)


_register(QuantRecipe("qdq_all", doc="static QDQ, every operator ORT quantizes, U8 activations / S8 weights"))
_register(
    QuantRecipe(
        "qdq_wide_convs",
        op_types=("Conv", "Gemm", "MatMul", "Add", "MaxPool", "Flatten", "Reshape"),
        min_conv_macs=64,
        doc="static QDQ; depthwise, stem and other narrow convs (<64 MACs per output) and PReLU stay FP32",
    )
)
_register(QuantRecipe("qdq_all_q_prelu", prelu_fp32=False, doc="qdq_all, decomposed PReLUs quantized too"))
_register(
    QuantRecipe(
        "qdq_all_mean_range",
        range_batch=2,
        fp32_head=2,
        doc="qdq_all with activation ranges averaged over calibration batches of 2 faces instead of the global "
            "extremes, the last two Conv/Gemm/MatMul (the embedding head) in FP32",
    )
)
_register(
    QuantRecipe(
        "qdq_wide_convs_q_prelu",
        op_types=("Conv", "Gemm", "MatMul", "Add", "MaxPool", "Flatten", "Reshape"),
        min_conv_macs=64,
        prelu_fp32=False,
    )
)
_register(
    QuantRecipe(
        "dynamic_all",
        static=False,
        op_types=("Conv", "MatMul", "Gemm"),
        reduce_range=False,
        doc="dynamic: INT8 weights, activations quantized at run time",
    )
)

_register(
    QuantRecipe(
        "qdq_all_mean_range_fp32_stem",
        range_batch=2,
        fp32_head=2,
        fp32_stem=2,
        doc="qdq_all_mean_range with the first two Conv/Gemm/MatMul (MobileFaceNet's stem conv and its depthwise "
            "conv) in FP32 as well",
    )
)

# The two above with each PReLU between two quantised convs in INT8 too (slopes + Max).
_register(QuantRecipe("qdq_all_mean_range_int8_prelu", range_batch=2, fp32_head=2, prelu_int8=True,
                      doc="qdq_all_mean_range, PReLUs between quantised convs in INT8 (slopes + Max)"))
_register(QuantRecipe("qdq_all_mean_range_fp32_stem_int8_prelu", range_batch=2, fp32_head=2, fp32_stem=2,
                      prelu_int8=True, doc="qdq_all_mean_range_fp32_stem, PReLUs between quantised convs in INT8"))

# Candidates tried per --int8 mode, in order.
MODES: dict[str, tuple[str, ...]] = {
    "static": ("qdq_all", "qdq_wide_convs", "qdq_all_mean_range", "qdq_all_mean_range_fp32_stem",
               "qdq_all_mean_range_int8_prelu", "qdq_all_mean_range_fp32_stem_int8_prelu"),
    "dynamic": ("dynamic_all",),
}


@dataclass
class Int8Result:
    """The recipe chosen and how every candidate fared.

    Attributes:
        recipe: The recipe shipped.
        ratio: Median INT8/FP32 latency ratio (batch 1, one thread), round by round.
        ratio_range: Lowest and highest round ratio.
        fp32_ms, int8_ms: Median latency per face, batch 1, one thread.
        cosine_mean, cosine_min: INT8 against FP32 embeddings of the probe faces.
        tried: One dict per candidate: name, ratio, cosine_mean, cosine_min, verdict.
    """

    recipe: str
    ratio: float
    ratio_range: tuple[float, float]
    fp32_ms: float
    int8_ms: float
    cosine_mean: float
    cosine_min: float
    tried: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _conv_macs_per_output(model) -> dict[str, int]:

    weights = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights:
            shape = numpy_helper.to_array(weights[node.input[1]]).shape  # (out, in/groups, kh, kw)
            out[node.name] = int(np.prod(shape[1:]))
    return out


class _Reader:
    """onnxruntime's CalibrationDataReader over an array, in batches."""

    def __init__(self, name: str, data: np.ndarray, batch: int = 16) -> None:
        self._batches = iter([{name: data[i : i + batch]} for i in range(0, len(data), batch)])

    def get_next(self):
        return next(self._batches, None)

    def __iter__(self):  # onnxruntime's base class protocol
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def apply_recipe(fp32_path: Path, out_path: Path, recipe: QuantRecipe, calib: np.ndarray | None) -> None:
    """Quantizes ``fp32_path`` into ``out_path`` (not atomic: a scratch file)."""
    logging.getLogger("root").setLevel(logging.ERROR)  # ORT's quantizer logs through the root logger
    prepared = out_path.with_suffix(".pre.onnx")
    if recipe.prelu_int8:  # every slope at most 1 first (the same function), into a scratch file
        flipped = onnx.load(str(fp32_path))
        flip_steep_slopes(flipped)
        fp32_path = out_path.with_suffix(".flipped.onnx")
        onnx.save(flipped, str(fp32_path))
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    exclude = [name for name, k in _conv_macs_per_output(model).items() if k < recipe.min_conv_macs]
    weighted = [n.name for n in model.graph.node if n.op_type in HEAD_OPS]  # Conv/Gemm/MatMul, in graph order
    if recipe.fp32_head:
        exclude += weighted[-recipe.fp32_head:]
    if recipe.fp32_stem:
        exclude += weighted[:recipe.fp32_stem]
    if recipe.prelu_fp32:
        exclude += [n.name for n in model.graph.node if n.name.startswith(PRELU_PREFIX)]
    common = dict(
        op_types_to_quantize=list(recipe.op_types) or None,
        nodes_to_exclude=exclude or None,
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        weight_type=QuantType.QInt8,
    )
    if recipe.static:
        if calib is None or len(calib) == 0:
            raise FacekdError("static INT8 needs calibration faces (--calib DIR of aligned crops)")
        name = model.graph.input[0].name

        class Reader(_Reader, CalibrationDataReader):
            pass

        averaged = {"CalibMovingAverage": True} if recipe.range_batch else {}
        quantize_static(
            str(prepared), str(out_path), Reader(name, calib, batch=recipe.range_batch or 16),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, extra_options=averaged, **common,
        )
    else:
        quantize_dynamic(str(prepared), str(out_path), **common)
    prepared.unlink(missing_ok=True)
    if recipe.prelu_int8:
        fp32_path.unlink(missing_ok=True)
        quantized = onnx.load(str(out_path))
        integer_prelu(quantized)
        onnx.save(quantized, str(out_path))


def _measure(cand: Path, fp32, probe: np.ndarray, rounds: int) -> dict:
    """A candidate against FP32: interleaved batch-1 latency ratio, cosines on ``probe``."""
    sess = ort_session(cand)
    in_name = fp32.get_inputs()[0].name
    cos = cosine_rows(sess.run(None, {in_name: probe})[0], fp32.run(None, {in_name: probe})[0])
    timings = measure_latency({"fp32": fp32, "int8": sess}, rounds=rounds, inputs=probe[:1])
    ratio, lo, hi = median_ratio(timings["int8"], timings["fp32"])
    return {
        "ratio": round(ratio, 4),
        "ratio_range": [round(lo, 4), round(hi, 4)],
        "fp32_ms": round(timings["fp32"].median * 1000, 3),
        "int8_ms": round(timings["int8"].median * 1000, 3),
        "cosine_mean": round(float(cos.mean()), 6),
        "cosine_min": round(float(cos.min()), 6),
    }


def _verdict(row: dict, min_cosine: float, max_ratio: float) -> str:
    if row["cosine_mean"] < min_cosine:
        return f"rejected: mean cosine to FP32 {row['cosine_mean']:.4f} < {min_cosine}"
    if row["ratio"] > max_ratio:
        return f"rejected: {row['ratio']:.2f}x FP32 latency (need <= {max_ratio})"
    return "ok"


def _ship(chosen: Path, fp32_path: Path, out_path: Path, recipe: str) -> None:
    """Writes the chosen INT8 model atomically with the FP32 model's metadata (``int8`` set)."""
    proto = onnx.load(str(chosen))
    meta = read_metadata(fp32_path)
    if MODEL_META_KEY in meta:
        info = ModelInfo.from_json(meta[MODEL_META_KEY])
        meta[MODEL_META_KEY] = json.dumps(asdict(replace(info, int8=recipe)))
    set_metadata(proto, meta)
    atomic_write_bytes(out_path, proto.SerializeToString())


def quantize_int8(
    fp32_path: Path | str,
    out_path: Path | str,
    mode: str,
    *,
    calib: np.ndarray | None,
    probe: np.ndarray,
    candidates: tuple[str, ...] | None = None,
    max_ratio: float = MAX_RATIO,
    min_cosine: float = MIN_COSINE,
    rounds: int = 15,
) -> Int8Result:
    """Quantizes an exported FP32 model and ships the fastest candidate that is faithful.

    Args:
        fp32_path: The FP32 model (from :func:`facekd.deploy.export.export_onnx`).
        out_path: Where the INT8 model goes (atomically; its metadata copied from FP32
            and ``int8`` set in ``facekd.model``).
        mode: "static" or "dynamic" (see ``MODES``).
        calib: (N, 3, H, W) normalised aligned crops for static calibration.
        probe: (M, 3, H, W) normalised crops to compare INT8 with FP32 and to time
            (the first one, batch 1).
        candidates: Recipe names to try instead of the mode's.
        max_ratio: A candidate must be at least this much faster than FP32.
        min_cosine: A candidate's mean cosine to FP32 on ``probe`` must reach this.
        rounds: Interleaved timing rounds.

    Raises:
        FacekdError: No candidate is both faithful and faster; nothing is written.
    """
    if mode not in MODES:
        raise FacekdError(f"unknown INT8 mode {mode!r}; known: {', '.join(MODES)}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    recipes = [INT8_RECIPES.build(n) for n in candidates or MODES[mode]]
    if not candidates and not any(n.name.startswith(PRELU_PREFIX) for n in onnx.load(str(fp32_path)).graph.node):
        recipes = [r for r in recipes if not r.prelu_int8]  # the same graph as their base recipes
    fp32 = ort_session(fp32_path)
    tried: list[dict] = []
    best: tuple[float, dict, Path] | None = None
    with tempfile.TemporaryDirectory(prefix="facekd-int8-") as tmp:
        for recipe in recipes:
            cand = Path(tmp) / f"{recipe.name}.onnx"
            apply_recipe(fp32_path, cand, recipe, calib)
            row = _measure(cand, fp32, probe, rounds)
            row["recipe"] = recipe.name
            row["verdict"] = _verdict(row, min_cosine, max_ratio)
            if row["verdict"] == "ok" and (best is None or row["ratio"] < best[0]):
                best = (row["ratio"], row, cand)
            tried.append(row)
        if best is None:
            lines = "; ".join(f"{t['recipe']}: {t['verdict']}" for t in tried)
            raise FacekdError(f"no INT8 recipe beats FP32 on this CPU without losing accuracy ({lines}); ship the FP32 model")
        _, row, chosen = best
        _ship(chosen, fp32_path, out_path, row["recipe"])
    for t in tried:
        t["chosen"] = t is row
    return _result(row, tried)


def _result(row: dict, tried: list[dict]) -> Int8Result:
    """The result of shipping the candidate measured in ``row``."""
    return Int8Result(
        recipe=row["recipe"],
        ratio=row["ratio"],
        ratio_range=tuple(row["ratio_range"]),
        fp32_ms=row["fp32_ms"],
        int8_ms=row["int8_ms"],
        cosine_mean=row["cosine_mean"],
        cosine_min=row["cosine_min"],
        tried=tried,
    )
