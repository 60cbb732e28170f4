"""Fake quantisation (facekd.models.fakequant) against rounding computed by hand, and
against onnxruntime's own static INT8 of the same layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facekd.errors import FacekdError
from facekd.models.fakequant import FakeQuantConv2d, attach_fake_quant


def _hand_weight(w: np.ndarray, bits: int) -> np.ndarray:
    n = {7: 64, 8: 127}[bits]  # onnxruntime's symmetric grids (7: reduce_range)
    out = np.empty_like(w)
    for c in range(w.shape[0]):
        scale = np.abs(w[c]).max() / n
        out[c] = np.round(w[c] / scale) * scale
    return out


def _hand_input(x: np.ndarray) -> np.ndarray:
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    scale = (hi - lo) / 255
    zero = np.clip(np.round(-lo / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def test_conv_rounds_weights_per_channel_and_input_per_tensor_as_computed_by_hand():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    x = torch.randn(2, 3, 5, 5) * 2 + 0.5
    assert attach_fake_quant(net, weight_bits=7, momentum=0.5) == 1
    conv = net[0]
    assert isinstance(conv, FakeQuantConv2d)
    got = net(x)  # training: the first batch sets the range
    w = _hand_weight(conv.weight.detach().numpy(), 7)
    want = torch.nn.functional.conv2d(torch.from_numpy(_hand_input(x.numpy())), torch.from_numpy(w), conv.bias, padding=1)
    assert torch.allclose(got, want, atol=1e-4)
    plain = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert (got - plain).abs().max() > 1e-3  # the rounding is really there
    # the range then moves by the momentum toward each new batch
    net(x * 3)
    assert conv.act_max.item() == pytest.approx(0.5 * x.max().item() + 0.5 * 3 * x.max().item(), rel=1e-5)


def test_swapped_layers_keep_parameters_state_keys_and_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    keys, weight = list(net.state_dict()), net[0].weight
    assert attach_fake_quant(net) == 2
    assert list(net.state_dict()) == keys and net[0].weight is weight
    net(torch.randn(4, 3, 6, 6)).pow(2).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0  # straight-through
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    plain.load_state_dict(net.state_dict())  # a checkpoint of it is a plain model's


def test_nothing_to_round_and_bad_widths_are_refused():
    with pytest.raises(FacekdError, match="no Conv2d or Linear"):
        attach_fake_quant(nn.Sequential(nn.ReLU()))
    with pytest.raises(FacekdError, match="weight_bits"):
        attach_fake_quant(nn.Sequential(nn.Conv2d(1, 1, 1)), weight_bits=1)


def test_fake_quantised_output_is_onnxruntimes_int8_output(tmp_path):
    """The same conv quantised statically by onnxruntime (per-channel 7-bit weights,
    uint8 activations calibrated on the batch) lands within its output rounding of the
    fake-quantised conv, and much farther from the FP32 one."""
    pytest.importorskip("onnxruntime")
    from facekd.deploy.quantize import INT8_RECIPES, apply_recipe
    from facekd.runtime.onnx import ort_session

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.linspace(0.2, 3, 16).view(16, 1, 1, 1))
    x = torch.rand(8, 16, 12, 12) * 4 - 0.5
    fp32 = tmp_path / "c.onnx"
    torch.onnx.export(conv.eval(), x[:1], str(fp32), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    int8 = tmp_path / "c8.onnx"
    apply_recipe(fp32, int8, INT8_RECIPES.build("qdq_all"), x.numpy())
    ort = torch.from_numpy(ort_session(int8).run(None, {"x": x.numpy()})[0])
    with torch.no_grad():
        plain = conv(x)
        net = nn.Sequential(conv)
        attach_fake_quant(net, weight_bits=7, momentum=1.0)
        net.train()(x)  # the range of the calibration batch
        fake = net.eval()(x)
    # onnxruntime also rounds the output, on the range calibration saw: round both alike
    lo, hi = min(float(plain.min()), 0.0), max(float(plain.max()), 0.0)
    step = (hi - lo) / 255
    zero = round(-lo / step)

    def on_grid(t: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(t, step, zero, 0, 255)

    same = ((ort - on_grid(fake)).abs() < step / 2).float().mean()
    same_as_fp32 = ((ort - on_grid(plain)).abs() < step / 2).float().mean()
    assert (ort - on_grid(fake)).abs().max() <= step * 1.01  # at most one step, at rounding ties
    assert same > 0.97 and same_as_fp32 < 0.9, (same, same_as_fp32)
