"""Fake quantisation for quantisation-aware recovery: a model trained through the
rounding that ONNX Runtime's static INT8 applies learns weights that survive it.

:func:`attach_fake_quant` swaps every ``Conv2d`` and ``Linear`` for a subclass that
rounds, on the way in, its input activation (per tensor, asymmetric, uint8, range from
an exponential moving average of the batch's min and max, as onnxruntime's MinMax
calibration sets it from data) and its weight (per output channel, symmetric, on
onnxruntime's grid for ``weight_bits``: [-64, 64] for 7, the ``reduce_range`` of facekd's
INT8 recipes, [-127, 127] for 8), with a straight-through gradient
(``torch.fake_quantize_*``).

Per-channel symmetric rounding of a weight is unchanged by a positive per-channel scale,
so rounding the convolution's own weight is rounding the batch-norm-folded weight that
the exported graph holds (and a negative scale only flips the sign of a symmetric grid).

The swapped modules keep their parameter names and hold their ranges in non-persistent
buffers: a checkpoint of a fake-quantised model is a plain model's checkpoint. Ranges
start again from the data after a resume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facekd.errors import FacekdError
from facekd.models.surgery import replace_modules

# Activations: uint8, asymmetric, per tensor (onnxruntime's QDQ default).
ACT_MIN, ACT_MAX = 0, 255
# onnxruntime's symmetric weight grid [-n, n] per weight width (7 bits: reduce_range).
WEIGHT_GRID = {7: 64, 8: 127}
# Weight of the newest batch in the moving min / max.
MOMENTUM = 0.01


class _FakeQuant:
    """The rounding shared by the conv and linear subclasses."""

    weight_bits: int
    momentum: float

    def _init_fake_quant(self, weight_bits: int, momentum: float) -> None:
        if weight_bits not in WEIGHT_GRID:
            raise FacekdError(f"fake quantisation: weight_bits must be one of {sorted(WEIGHT_GRID)} (got {weight_bits})")
        self.weight_bits, self.momentum = weight_bits, momentum
        self.register_buffer("act_min", torch.zeros(()), persistent=False)
        self.register_buffer("act_max", torch.zeros(()), persistent=False)
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool), persistent=False)

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.detach().float()
        if self.training:
            lo, hi = xf.min(), xf.max()
            m = torch.where(self.seen, torch.tensor(self.momentum, device=x.device), torch.tensor(1.0, device=x.device))
            self.act_min.copy_(self.act_min * (1 - m) + lo * m)
            self.act_max.copy_(self.act_max * (1 - m) + hi * m)
            self.seen.fill_(True)
        lo = torch.clamp(self.act_min, max=0.0)  # the grid holds 0 exactly
        hi = torch.clamp(self.act_max, min=0.0)
        scale = torch.clamp((hi - lo) / (ACT_MAX - ACT_MIN), min=1e-8)
        zero = torch.clamp(torch.round(-lo / scale), ACT_MIN, ACT_MAX).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, ACT_MIN, ACT_MAX).to(x.dtype)

    def _quant_weight(self, w: torch.Tensor) -> torch.Tensor:
        n = WEIGHT_GRID[self.weight_bits]
        wf = w.float()
        peak = wf.detach().abs().reshape(wf.shape[0], -1).amax(dim=1)
        scale = torch.clamp(peak / n, min=1e-12)
        zero = torch.zeros(wf.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(wf, scale, zero, 0, -n, n).to(w.dtype)


class FakeQuantConv2d(_FakeQuant, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), self._quant_weight(self.weight), self.bias)


class FakeQuantLinear(_FakeQuant, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quant_input(x), self._quant_weight(self.weight), self.bias)


def _swap(m: nn.Module, weight_bits: int, momentum: float) -> nn.Module | None:
    """A rounding twin of a plain ``Conv2d`` or ``Linear`` holding the same parameters."""
    if type(m) is nn.Conv2d:
        new = FakeQuantConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                              m.groups, m.bias is not None, m.padding_mode)
    elif type(m) is nn.Linear:
        new = FakeQuantLinear(m.in_features, m.out_features, m.bias is not None)
    else:
        return None
    new.weight, new.bias = m.weight, m.bias
    new._init_fake_quant(weight_bits, momentum)
    return new.train(m.training).to(m.weight.device)


def attach_fake_quant(model: nn.Module, weight_bits: int = 7, momentum: float = MOMENTUM) -> int:
    """Rounds every ``Conv2d`` and ``Linear`` of ``model`` as static INT8 would, in place.

    Returns:
        How many layers now round.

    Raises:
        FacekdError: ``model`` has no such layer, or ``weight_bits`` is out of range.
    """
    count = replace_modules(model, lambda path, m: _swap(m, weight_bits, momentum))
    if count == 0:
        raise FacekdError(f"fake quantisation: {type(model).__name__} has no Conv2d or Linear layer to round")
    return count
