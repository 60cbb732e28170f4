"""PReLU kept in INT8: the slopes as a depthwise 1x1 ``QLinearConv`` and a ``Max``, in the
uint8 grid of the value it rectifies.

ONNX Runtime has no integer PReLU, so a static QDQ graph runs each one in FP32 between a
DequantizeLinear and a QuantizeLinear (``facekd.deploy.graph`` writes it as Min/Mul/Add):
five passes over the activation map, about half of an INT8 MobileFaceNet's time. For a
slope ``a <= 1``, ``PReLU(x) = max(x, a * x)``, and a max commutes with an affine uint8
grid (scale > 0), so in the grid of ``x``:

    y_q = Max(x_q, QLinearConv_depthwise_1x1(x_q, a_q))

two integer passes (the depthwise conv multiplies each channel by its slope), and the next
convolution reads ``y_q`` directly as a ``QLinearConv`` (written out here: ONNX Runtime's
QDQ fusion leaves a DequantizeLinear fed by anything but a QuantizeLinear in FP32). The
grid of ``x`` is widened to cover the PReLU's output range as calibrated (a negative slope
maps negative inputs above zero).

A slope above 1 breaks ``max(x, a * x)``; :func:`flip_steep_slopes` first rewrites those
channels exactly, ``PReLU_a(z) = -a * PReLU_{1/a}(-z)``, negating the channel in the
convolution before and scaling it by ``-a`` in the convolutions after. A PReLU whose
neighbours do not allow either rewrite stays as it was, in FP32.

Every operator written here is standard ONNX. Earlier versions wrote ONNX Runtime's
contrib ``QLinearMul`` (``com.microsoft``, :data:`MS_DOMAIN`) for the slopes instead: the
same integers, but ONNX Runtime only; such files still run and count.
:func:`is_slope_conv` tells the slope multiply from a real conv.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from facekd.deploy.graph import (
    PRELU_PREFIX,
    consumers_of,
    drop_unused_initializers,
    initializers,
    producers_of,
    replace_nodes,
)

MS_DOMAIN = "com.microsoft"


def _index(model):
    return initializers(model), producers_of(model), consumers_of(model)


def _prelus(model, consumers):
    """(min, mul, add) of each PReLU ``decompose_prelu`` wrote, in graph order."""
    out = []
    for node in model.graph.node:
        if node.op_type == "Min" and node.name.startswith(PRELU_PREFIX) and node.name.endswith("/min"):
            mul = consumers.get(node.output[0], [])
            if len(mul) == 1 and mul[0].op_type == "Mul":
                add = consumers.get(mul[0].output[0], [])
                if len(add) == 1 and add[0].op_type == "Add":
                    out.append((node, mul[0], add[0]))
    return out


def _slopes(inits, mul) -> np.ndarray:
    """A decomposed PReLU's slopes (``decompose_prelu`` stores slope - 1 in its Mul)."""
    return numpy_helper.to_array(inits[mul.input[1]]).astype(np.float32) + np.float32(1.0)


def _set(model, inits, name: str, value: np.ndarray) -> None:
    inits[name].CopyFrom(numpy_helper.from_array(value, name))


def _private(inits, consumers, name: str) -> bool:
    return name in inits and len(consumers.get(name, [])) == 1


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def flip_steep_slopes(model) -> int:
    """Rewrites the channels of each decomposed PReLU whose slope is above 1 so that every
    slope is at most 1, without changing the function: the channel is negated in the
    convolution that produces it (weights and bias) and its slope inverted, and the
    convolutions that read it scale that input channel by ``-a`` (a dense conv's weight
    column, a depthwise conv's filter). Works on FP32 graphs.

    Returns:
        The number of PReLUs rewritten (those with nothing above 1 are left alone, as are
        those whose producer or readers are not convolutions this can rewrite).
    """
    inits, producer, consumers = _index(model)
    done = 0
    for mn, mul, add in _prelus(model, consumers):
        x, y, shifted = mn.input[0], add.output[0], mul.input[1]
        if not _private(inits, consumers, shifted):
            continue
        a = _slopes(inits, mul)
        steep = a.reshape(-1) > 1.0
        if not steep.any():
            continue
        conv = producer.get(x)
        readers = consumers.get(y, [])
        if (conv is None or conv.op_type != "Conv" or len(conv.input) < 3 or sorted(n.name for n in consumers[x])
                != sorted([mn.name, add.name]) or not all(_private(inits, consumers, i) for i in conv.input[1:3])):
            continue
        channels = a.size
        ok = bool(readers)
        for r in readers:
            if r.op_type != "Conv" or r.input[0] != y or not _private(inits, consumers, r.input[1]):
                ok = False
                break
            w_shape = numpy_helper.to_array(inits[r.input[1]]).shape
            if not ((_group(r) == 1 and w_shape[1] == channels) or (_group(r) == channels == w_shape[0])):
                ok = False
                break
        if not ok:
            continue
        flat = a.reshape(-1)
        sign = np.where(steep, -1.0, 1.0).astype(np.float32)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float32)
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float32)
        _set(model, inits, conv.input[1], w * sign.reshape(-1, *([1] * (w.ndim - 1))))
        _set(model, inits, conv.input[2], b * sign)
        scale = np.where(steep, -flat, 1.0).astype(np.float32)
        for r in readers:
            w = numpy_helper.to_array(inits[r.input[1]]).astype(np.float32)
            if _group(r) == 1:
                w = w * scale.reshape(1, -1, *([1] * (w.ndim - 2)))
            else:
                w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
            _set(model, inits, r.input[1], w)
        new = np.where(steep, 1.0 / np.where(steep, flat, 1.0), flat).astype(np.float32).reshape(a.shape)
        _set(model, inits, shifted, new - np.float32(1.0))
        done += 1
    return done


def _grid(inits, scale: str, zero: str) -> tuple[float, float]:
    s = float(numpy_helper.to_array(inits[scale]))
    z = float(numpy_helper.to_array(inits[zero]))
    return (0.0 - z) * s, (255.0 - z) * s


def integer_prelu(model) -> int:
    """Rewrites, in a static QDQ graph with uint8 activations, each decomposed PReLU that
    runs in FP32 between ``DequantizeLinear`` and ``QuantizeLinear`` (slopes at most 1,
    see :func:`flip_steep_slopes`) into ``QLinearMul`` + ``Max`` on its uint8 input, and
    each ``DequantizeLinear -> Conv -> QuantizeLinear`` that reads it into a
    ``QLinearConv``.

    Returns:
        The number of PReLUs rewritten.
    """
    inits, producer, consumers = _index(model)
    drop: set[int] = set()  # id() of nodes: protobuf messages, names may repeat or be empty
    replace: dict[int, list] = {}
    # Who writes each quantised tensor, and where its scale input is: a QuantizeLinear
    # (input 1), or the QLinearConv an earlier rewrite put in its place (input 6).
    writer: dict[str, tuple] = {}
    done = 0
    for mn, mul, add in _prelus(model, consumers):
        x, y = mn.input[0], add.output[0]
        dq_a = producer.get(x)
        if dq_a is None or dq_a.op_type != "DequantizeLinear" or len(consumers[x]) != 2:
            continue
        xq = dq_a.input[0]
        q_a = producer.get(xq)
        if q_a is None or q_a.op_type != "QuantizeLinear" or len(consumers[xq]) != 1:
            continue
        q_b = consumers.get(y, [])
        if len(q_b) != 1 or q_b[0].op_type != "QuantizeLinear":
            continue
        q_b = q_b[0]
        if numpy_helper.to_array(inits[q_a.input[2]]).dtype != np.uint8 or mul.input[1] not in inits:
            continue
        a = _slopes(inits, mul)
        if float(a.max()) > 1.0 + 1e-6:
            continue
        readers = consumers.get(q_b.output[0], [])
        if not readers or any(r.op_type != "DequantizeLinear" for r in readers):
            continue
        base = mn.name[: -len("/min")] + "/int8"
        # One grid for x and for the PReLU's output: the union of their calibrated ranges.
        lo_a, hi_a = _grid(inits, q_a.input[1], q_a.input[2])
        lo_b, hi_b = _grid(inits, q_b.input[1], q_b.input[2])
        lo, hi = min(lo_a, lo_b, 0.0), max(hi_a, hi_b, 0.0)
        s = np.float32((hi - lo) / 255.0)
        z = np.uint8(np.clip(np.round(-lo / s), 0, 255))
        sn, zn = base + "_scale", base + "_zero_point"
        slope_s = np.float32(max(float(np.abs(a).max()), 1e-8) / 127.0)
        slope_q = np.clip(np.round(a / slope_s), -127, 127).astype(np.int8).reshape(-1, 1, 1, 1)
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(s, np.float32), sn), numpy_helper.from_array(np.array(z, np.uint8), zn),
            numpy_helper.from_array(slope_q, base + "_slope"),
            numpy_helper.from_array(np.array(slope_s, np.float32), base + "_slope_scale"),
            numpy_helper.from_array(np.array(0, np.int8), base + "_slope_zero_point"),
        ])
        node, at = writer.get(xq, (q_a, 1))
        node.input[at], node.input[at + 1] = sn, zn
        yq = q_b.output[0]
        new = [
            helper.make_node("QLinearConv", [xq, sn, zn, base + "_slope", base + "_slope_scale",
                                             base + "_slope_zero_point", sn, zn],
                             [base + "_ax"], name=base + "/slope", group=len(slope_q), kernel_shape=[1, 1]),
            helper.make_node("Max", [xq, base + "_ax"], [yq], name=base + "/max"),
        ]
        model.graph.value_info.extend([helper.make_tensor_value_info(base + "_ax", TensorProto.UINT8, None)])
        for dq in readers:
            conv = consumers.get(dq.output[0], [])
            fused = _as_qlinear_conv(inits, producer, consumers, dq, conv[0], s, sn, zn) if len(conv) == 1 else None
            if fused is None:  # not a quantised conv: dequantise from the new grid
                dq.input[1], dq.input[2] = sn, zn
                continue
            nodes, gone, extra = fused
            writer[nodes[0].output[0]] = (nodes[0], 6)
            model.graph.initializer.extend(extra)
            replace[id(conv[0])] = nodes
            drop.update(gone)
        replace[id(q_b)] = new
        drop.update(id(n) for n in (dq_a, mn, mul, add))
        done += 1
    if done:
        nodes = []
        for n in model.graph.node:
            if id(n) in replace:
                nodes += replace[id(n)]
            elif id(n) not in drop:
                nodes.append(n)
        replace_nodes(model, nodes)
        drop_unused_initializers(model)
    return done


def is_slope_conv(node, consumers) -> bool:
    """Whether ``node`` is the slope multiply of an integer PReLU (a depthwise 1x1
    ``QLinearConv`` read only by a ``Max`` that also reads the conv's own input), or the
    ``QLinearMul`` of an older file: arithmetic of an activation, not a layer's MACs."""
    if node.op_type == "QLinearMul" and node.domain == MS_DOMAIN:
        return True
    kernel = [helper.get_attribute_value(a) for a in node.attribute if a.name == "kernel_shape"]
    if node.op_type != "QLinearConv" or kernel != [[1, 1]]:
        return False
    readers = consumers.get(node.output[0], [])
    return len(readers) == 1 and readers[0].op_type == "Max" and node.input[0] in readers[0].input


def _as_qlinear_conv(inits, producer, consumers, dq, conv, s: float, sn: str, zn: str):
    """``dq -> conv -> Q`` as one QLinearConv on the new grid, or None where the conv is
    not a quantised one (weights and bias from DequantizeLinear, one QuantizeLinear after)."""
    if conv.op_type != "Conv" or conv.input[0] != dq.output[0]:
        return None
    dq_w = producer.get(conv.input[1])
    dq_b = producer.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    q_y = consumers.get(conv.output[0], [])
    if (dq_w is None or dq_w.op_type != "DequantizeLinear" or len(dq_w.input) != 3 or dq_w.input[0] not in inits
            or len(consumers[dq_w.output[0]]) != 1 or len(q_y) != 1 or q_y[0].op_type != "QuantizeLinear"):
        return None
    gone = {id(dq), id(dq_w), id(q_y[0])}
    inputs = [dq.input[0], sn, zn, *dq_w.input[:3], *q_y[0].input[1:3]]
    extra = []
    if dq_b is not None:
        if dq_b.op_type != "DequantizeLinear" or dq_b.input[0] not in inits or len(consumers[dq_b.output[0]]) != 1:
            return None
        bias = numpy_helper.to_array(inits[dq_b.input[0]]).astype(np.float64) * \
            numpy_helper.to_array(inits[dq_b.input[1]]).astype(np.float64)
        w_scale = numpy_helper.to_array(inits[dq_w.input[1]]).astype(np.float64)
        name = conv.name + "_bias_int32"
        extra.append(numpy_helper.from_array(np.round(bias / (float(s) * w_scale)).astype(np.int32), name))
        inputs.append(name)
        gone.add(id(dq_b))
    node = helper.make_node("QLinearConv", inputs, [q_y[0].output[0]], name=conv.name + "/qlinear")
    node.attribute.extend(conv.attribute)
    return [node], gone, extra
