"""PReLU kept in INT8 (facekd.deploy.int8_prelu): the exact slope flip and the integer
rewrite, checked against ONNX Runtime's FP32 run of the same graph."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from facekd.deploy.export import export_onnx
from facekd.deploy.graph import PRELU_PREFIX
from facekd.deploy.int8_prelu import flip_steep_slopes, integer_prelu
from facekd.deploy.macs import count_macs
from facekd.deploy.quantize import INT8_RECIPES, apply_recipe
from facekd.preprocessing import cosine_rows
from facekd.runtime.onnx import ort_session


def _prelu(slopes) -> nn.PReLU:
    p = nn.PReLU(len(slopes))
    with torch.no_grad():
        p.weight.copy_(torch.tensor(slopes, dtype=torch.float32))
    return p


def _slopes(model) -> list[np.ndarray]:
    """Each decomposed PReLU's slopes, in graph order (decompose_prelu stores slope - 1)."""
    inits = {t.name: t for t in model.graph.initializer}
    return [numpy_helper.to_array(inits[n.input[1]]).reshape(-1) + 1.0
            for n in model.graph.node if n.name.startswith(PRELU_PREFIX) and n.name.endswith("/mul")]


def _run(path, x: np.ndarray) -> np.ndarray:
    s = ort_session(path)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("depthwise", [False, True])
def test_flip_makes_every_slope_at_most_one_and_keeps_the_function(depthwise, tmp_path):
    torch.manual_seed(0)
    after = nn.Conv2d(4, 4, 3, padding=1, groups=4) if depthwise else nn.Conv2d(4, 3, 1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _prelu([0.25, 1.5, -0.3, 2.0]), after).eval()
    path = tmp_path / "net.onnx"
    export_onnx(net, path, input_size=(8, 6))
    x = np.random.default_rng(0).normal(size=(5, 3, 8, 6)).astype(np.float32)
    before = _run(path, x)

    model = onnx.load(path)
    assert flip_steep_slopes(model) == 1
    flipped = tmp_path / "flipped.onnx"
    onnx.save(model, flipped)
    # The two slopes above 1 become their inverses (by hand: 1/1.5, 1/2); the others stay.
    np.testing.assert_allclose(_slopes(model)[0], [0.25, 1 / 1.5, -0.3, 0.5], rtol=1e-6)
    np.testing.assert_allclose(_run(flipped, x), before, rtol=1e-4, atol=1e-5)


def test_flip_leaves_a_prelu_whose_reader_is_not_a_convolution(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _prelu([0.25, 1.5, -0.3, 2.0]), nn.Flatten()).eval()
    path = tmp_path / "net.onnx"
    export_onnx(net, path, input_size=(8, 6))
    model = onnx.load(path)
    assert flip_steep_slopes(model) == 0
    np.testing.assert_allclose(_slopes(model)[0], [0.25, 1.5, -0.3, 2.0], rtol=1e-6)


def test_integer_prelu_runs_the_prelu_between_quantised_convs_in_int8_and_stays_near_fp32(tmp_path):
    torch.manual_seed(0)
    # conv1 -> PReLU -> conv2 (quantised: read as a QLinearConv) -> PReLU -> average pool
    # (ORT's quantizer leaves this PReLU in FP32 with no QuantizeLinear after it: it stays
    # as it is) -> conv3 -> conv4, conv5 (the recipe's FP32 head). conv1 leans negative
    # and some slopes are steeply negative, so the PReLU's output leaves conv1's range;
    # conv2 has a large bias, which must be carried onto the new grid.
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), _prelu(np.linspace(-0.9, 1.6, 16)),
        nn.Conv2d(16, 16, 1), _prelu(np.linspace(0.0, 1.2, 16)), nn.AvgPool2d(2),
        nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 8, 1), nn.Flatten(),
    ).eval()
    with torch.no_grad():
        net[0].bias.fill_(-1.0)
        net[2].bias.fill_(3.0)
    path, q, q_ref = tmp_path / "net.onnx", tmp_path / "net.int8.onnx", tmp_path / "ref.int8.onnx"
    export_onnx(net, path, input_size=(12, 10))
    rng = np.random.default_rng(1)
    calib = rng.normal(size=(32, 3, 12, 10)).astype(np.float32)
    recipe = INT8_RECIPES.build("qdq_all_mean_range_int8_prelu")
    apply_recipe(path, q, recipe, calib)
    apply_recipe(path, q_ref, replace(recipe, prelu_int8=False), calib)  # the same, PReLUs in FP32

    model = onnx.load(q)
    nodes = model.graph.node
    ops = [n.op_type for n in nodes]
    # The slopes' depthwise 1x1 QLinearConv, the Max, and the conv after it written out.
    assert ops.count("Max") == 1 and ops.count("QLinearConv") == 2 and "QLinearMul" not in ops
    slope = next(n for n in nodes if n.op_type == "QLinearConv" and n.output[0] in
                 next(m for m in nodes if m.op_type == "Max").input)
    assert onnx.helper.get_attribute_value(next(a for a in slope.attribute if a.name == "group")) == 16
    assert all(n.domain in ("", "ai.onnx") for n in nodes)  # standard ONNX only: no com.microsoft
    assert [n.name for n in nodes if n.name.startswith(PRELU_PREFIX) and n.op_type == "Min"] == [
        f"{PRELU_PREFIX}/3/PRelu/min"]
    # The written-out QLinearConv counts as its Conv, the slope multiply (like a PReLU) not at all.
    assert count_macs(q) == count_macs(path)
    x = rng.normal(size=(16, 3, 12, 10)).astype(np.float32)
    fp32, int8, ref = _run(path, x), _run(q, x), _run(q_ref, x)
    assert cosine_rows(int8, fp32).mean() > 0.99
    # No further from FP32 than the same recipe with the PReLU in FP32, give or take the
    # coarser grid and the 8-bit slopes.
    assert np.abs(int8 - fp32).mean() < 1.5 * np.abs(ref - fp32).mean()


def test_integer_prelu_leaves_a_graph_without_quantised_prelus_alone(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _prelu([0.25, 0.5, -0.3, 0.1]), nn.Flatten()).eval()
    path = tmp_path / "net.onnx"
    export_onnx(net, path, input_size=(8, 6))
    model = onnx.load(path)  # FP32: no DequantizeLinear before the PReLU
    assert integer_prelu(model) == 0


@pytest.mark.parametrize("with_prelu", [True, False])
def test_static_int8_tries_the_int8_prelu_recipes_only_on_a_graph_with_prelus(with_prelu, tmp_path):
    from facekd.deploy.quantize import MODES, quantize_int8

    act = _prelu(np.linspace(0.0, 0.9, 8)) if with_prelu else nn.ReLU()
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), act, nn.Conv2d(8, 8, 1), nn.Flatten()).eval()
    path = tmp_path / "net.onnx"
    export_onnx(net, path, input_size=(8, 6))
    x = np.random.default_rng(0).normal(size=(16, 3, 8, 6)).astype(np.float32)
    res = quantize_int8(path, tmp_path / "q.onnx", "static", calib=x, probe=x[:8], rounds=1, max_ratio=10.0)
    tried = [t["recipe"] for t in res.tried]
    expected = [n for n in MODES["static"] if with_prelu or not n.endswith("_int8_prelu")]
    assert tried == expected


def test_a_prelu_read_by_something_other_than_a_quantised_conv_is_dequantised_from_its_new_grid(tmp_path):
    """The reader of the integer PReLU here is an Identity before the conv: the conv is not
    written out as a QLinearConv (only the slopes' is), the DequantizeLinear reads the Max
    output on the widened grid instead."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _prelu(np.linspace(-0.9, 0.9, 16)),
                        nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 8, 1), nn.Flatten()).eval()
    with torch.no_grad():
        net[0].bias.fill_(-1.0)
    path, q_ref = tmp_path / "net.onnx", tmp_path / "ref.int8.onnx"
    export_onnx(net, path, input_size=(12, 10))
    rng = np.random.default_rng(2)
    calib = rng.normal(size=(32, 3, 12, 10)).astype(np.float32)
    apply_recipe(path, q_ref, INT8_RECIPES.build("qdq_all_mean_range"), calib)  # PReLU in FP32
    model = onnx.load(q_ref)
    q_b = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and "PRelu" in n.input[0])
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q_b.output[0])
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[0] == dq.output[0])
    conv.input[0] = "between"
    identity = onnx.helper.make_node("Identity", [dq.output[0]], ["between"])
    model.graph.node.insert(list(model.graph.node).index(conv), identity)

    assert integer_prelu(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Max") == 1 and ops.count("QLinearConv") == 1  # the slopes' only
    dq_now = next(n for n in model.graph.node if n.output[0] == dq.output[0])
    assert dq_now.input[1].endswith("/int8_scale")  # reads the Max output on the new grid
    q = tmp_path / "q.int8.onnx"
    onnx.save(model, q)
    x = rng.normal(size=(16, 3, 12, 10)).astype(np.float32)
    fp32, int8, ref = _run(path, x), _run(q, x), _run(q_ref, x)
    assert cosine_rows(int8, fp32).mean() > 0.99
    assert np.abs(int8 - fp32).mean() < 1.5 * np.abs(ref - fp32).mean()
