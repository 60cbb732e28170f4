"""Multiply-accumulates of an ONNX graph, counted from its shapes.

Counted for the operators that carry nearly all of a face embedder's arithmetic: ``Conv``
(each output value costs ``in_channels / groups * kh * kw`` MACs), ``ConvTranspose``,
``Gemm`` and ``MatMul``. Element-wise operators, pooling and normalisation are left out,
as torch's FLOP counter leaves them out (``facekd models`` reports that counter / 2).
Works on FP32 graphs and on QDQ INT8 graphs alike (their ``Conv`` nodes keep the float
shapes; a ``QLinearConv`` written out by ``facekd.deploy.int8_prelu`` counts as its Conv,
and the depthwise 1x1 one that multiplies a PReLU's slopes, like the PReLU, not at all), so
a model and its INT8 form count the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference

from facekd.deploy.graph import consumers_of, producers_of
from facekd.deploy.int8_prelu import MS_DOMAIN, is_slope_conv
from facekd.errors import FacekdError


def _fixed_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose inputs have batch 1 (shape inference needs concrete sizes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    return m


# ONNX's shape inference does not know ONNX Runtime's contrib operators: each is stood in
# for, in the copy that shapes are inferred on, by a standard one of the same output
# shape (op type -> (standard op, the inputs it keeps)).
_STAND_INS = {"QLinearMul": ("Mul", (0, 3))}


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    for node in model.graph.node:
        if node.domain == MS_DOMAIN and node.op_type in _STAND_INS:
            op, keep = _STAND_INS[node.op_type]
            inputs = [node.input[i] for i in keep]
            node.op_type, node.domain = op, ""
            del node.input[:]
            node.input.extend(inputs)
    inferred = shape_inference.infer_shapes(model)
    out = {}
    for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[v.name] = tuple(d.dim_value for d in dims)
    for init in inferred.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


def _weight_shape(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]], producers: dict[str, onnx.NodeProto]):
    """The shape of a node's weight input, looking through a DequantizeLinear (QDQ)."""
    name = node.input[3 if node.op_type == "QLinearConv" else 1]
    if name not in shapes and name in producers and producers[name].op_type == "DequantizeLinear":
        name = producers[name].input[0]
    return shapes.get(name)


def count_macs(path: Path | str) -> int:
    """MACs of one image (batch 1) through the ONNX model at ``path``.

    Raises:
        FacekdError: The file cannot be read, or a counted node's shapes are unknown.
    """
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...: all mean "not a model"
        raise FacekdError(f"{path}: cannot read the ONNX model ({exc})") from None
    model = _fixed_batch(model)
    shapes = _shapes(model)
    producers = producers_of(model)
    consumers = consumers_of(model)
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "QLinearConv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        if is_slope_conv(node, consumers):
            continue
        out = shapes.get(node.output[0])
        w = _weight_shape(node, shapes, producers)
        if out is None and w is not None and node.op_type in ("Gemm", "MatMul") and len(w) == 2:
            total += int(np.prod(w))  # one row (batch 1) times a (K, N) weight
            continue
        if out is None or w is None:
            raise FacekdError(f"{path}: cannot infer the shapes of {node.op_type} node {node.name!r}")
        if node.op_type in ("Conv", "QLinearConv"):
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":
            total += int(np.prod(shapes[node.input[0]])) * int(np.prod(w[1:]))
        else:  # Gemm / MatMul: output elements x the shared dimension
            a = shapes.get(node.input[0])
            k = a[-1] if a is not None else w[0]
            total += int(np.prod(out)) * int(k)
    return total
