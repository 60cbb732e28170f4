"""`facekd bench`: rows, ratios, table and plot; INT8 never slower than FP32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from facekd.deploy.bench import (
    BenchOptions,
    bench_model,
    markdown_table,
    plot_accuracy_latency,
    read_accuracies,
    teacher_ratios,
)
from facekd.deploy.export import export_onnx, synthetic_inputs
from facekd.deploy.quantize import quantize_int8
from facekd.runtime.timing import measure_latency, median_ratio
from facekd.errors import FacekdError
from facekd.models import build_backbone


def _row(name: str, params: int, fp32_1t: float, **kw) -> dict:
    base = dict(
        name=name, params=params, macs=10**8, input_size=[112, 96], weights="w", onnx_fp32_mb=params * 4e-6,
        onnx_int8_mb=params * 1e-6, int8_recipe="qdq_all", int8_note=None, torch_ms_1t=2 * fp32_1t, torch_ms_all=fp32_1t,
        ort_fp32_ms_1t=fp32_1t, ort_fp32_ms_all=fp32_1t / 2, ort_int8_ms_1t=fp32_1t * 0.6, ort_int8_ms_all=fp32_1t * 0.3,
        int8_ratio_1t=0.6, torch_b64_fps=100.0, ort_fp32_b64_fps=200.0, ort_int8_b64_fps=300.0, gpu_b64_fps=None,
    )
    return base | kw


def test_teacher_ratio_and_table():
    rows = [_row("resnet27", 27_500_000, 40.0), _row("student5", 3_900_000, 5.0), _row("mobilefacenet", 1_000_000, 8.0)]
    assert teacher_ratios(rows) == {"student5": 8.0, "mobilefacenet": 5.0}
    table = markdown_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert lines[3].startswith("| student5 | 3.90 | 100 |") and lines[3].endswith("| 8.0x |")
    assert lines[2].endswith("| – |")  # the teacher has no ratio to itself


def test_accuracies_in_both_formats_and_plot(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"student5": 98.1, "resnet27": {"accuracy": 99.2}}))
    b.write_text(json.dumps([{"name": "student5", "lfw_accuracy": 98.1}, {"name": "x"}]))
    assert read_accuracies(a) == {"student5": 98.1, "resnet27": 99.2}
    assert read_accuracies(b) == {"student5": 98.1}
    png = plot_accuracy_latency([_row("resnet27", 27_500_000, 40.0), _row("student5", 3_900_000, 5.0)], read_accuracies(a), tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FacekdError, match="nothing to plot"):
        plot_accuracy_latency([_row("other", 1, 1.0)], read_accuracies(a), tmp_path / "q.png")


def test_interleaved_timing_orders_calls_by_cost():
    import time

    t = measure_latency({"fast": lambda: time.sleep(0.001), "slow": lambda: time.sleep(0.004)}, rounds=3, min_round_s=0.01)
    assert t["fast"].median < t["slow"].median
    assert t["fast"].low <= t["fast"].median <= t["fast"].high
    assert len(t["fast"].seconds) == 3
    ratio, lo, hi = median_ratio(t["slow"], t["fast"])
    assert 2.0 < ratio and lo <= ratio <= hi


def test_latency_of_an_onnx_file_at_batch_one(tmp_path):
    """measure_latency opens an ONNX file itself (one thread) and feeds it one face."""
    net = build_backbone("student5").eval()
    path = tmp_path / "s.onnx"
    export_onnx(net, path, input_size=tuple(net.cfg.input_size))
    t = measure_latency({"s": path}, rounds=2, min_round_s=0.0, warmup=1)
    assert t["s"].rounds == 2 and 0 < t["s"].low <= t["s"].median <= t["s"].high


class _Convs(nn.Module):
    """Wide 3x3 convs (576 MACs per output) after a narrow stem (27): INT8 pays off."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()) for _ in range(3)])
        self.fc = nn.Linear(64, 32)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


def test_static_int8_keeps_narrow_convs_fp32_and_refuses_when_not_faster(tmp_path):
    import onnx

    torch.manual_seed(0)
    fp32, out = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    export_onnx(_Convs().eval(), fp32, input_size=(32, 32))
    x = synthetic_inputs(32, (32, 32))
    res = quantize_int8(fp32, out, "static", calib=x, probe=x[:8], candidates=("qdq_wide_convs",), rounds=3, max_ratio=10.0)
    assert res.recipe == "qdq_wide_convs" and res.cosine_mean > 0.99
    g = onnx.load(str(out)).graph
    dq_outputs = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in g.node if n.op_type == "Conv"]
    quantized = [n.input[1] in dq_outputs for n in convs]
    assert quantized == [False, True, True, True]  # the stem (27 MACs per output) stays FP32
    # A bar no model can pass: nothing is written, and the message says what was tried.
    out2 = tmp_path / "never.onnx"
    with pytest.raises(FacekdError, match="qdq_wide_convs: rejected"):
        quantize_int8(fp32, out2, "static", calib=x, probe=x[:8], candidates=("qdq_wide_convs",), rounds=3, max_ratio=0.0)
    assert not out2.exists()


def test_bench_row_for_a_registered_backbone():
    row = bench_model("student5", BenchOptions(rounds=1, rounds_b64=1, int8=None), log=lambda m: None).to_dict()
    assert row["name"] == "student5"
    assert row["params"] == sum(p.numel() for p in build_backbone("student5").parameters())
    assert row["macs"] > 2e8
    assert row["onnx_fp32_mb"] == pytest.approx(row["params"] * 4 / 1e6, rel=0.05)  # float32 weights
    for key in ("torch_ms_1t", "torch_ms_all", "ort_fp32_ms_1t", "ort_fp32_ms_all", "torch_b64_fps", "ort_fp32_b64_fps"):
        assert np.isfinite(row[key]) and row[key] > 0
    assert row["ort_int8_ms_1t"] is None and row["int8_ratio_1t"] is None
    s = row["spread"]["ort_fp32_1t"]
    assert s["min"] <= s["median"] <= s["max"]


@pytest.mark.slow
def test_bench_cli_student_against_teacher(tmp_path):
    """The issue's check: student5 at least 5x faster than resnet27 (ORT, 1 thread, batch 1)."""
    from facekd.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "resnet27", "student5", "--json", str(out), "--rounds", "5", "--rounds-b64", "1"]) == 0
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["resnet27", "student5"]
    assert teacher_ratios(rows)["student5"] >= 5.0
    s5 = rows[1]
    assert s5["ort_int8_ms_1t"] is not None and s5["int8_ratio_1t"] < 1.0


def test_mean_range_calibration_averages_batch_extremes_and_keeps_the_head_fp32(tmp_path):
    """``qdq_all_mean_range``: the input's uint8 range is the mean of each 2-face
    calibration batch's minimum and maximum (one outlier face no longer sets it), and
    the last two Conv/Gemm (the head) read FP32 weights."""
    import onnx
    from onnx import numpy_helper

    from facekd.deploy.quantize import INT8_RECIPES, apply_recipe

    torch.manual_seed(0)
    fp32 = tmp_path / "m.onnx"
    export_onnx(_Convs().eval(), fp32, input_size=(32, 32))
    x = np.random.default_rng(0).uniform(-1, 1, size=(8, 3, 32, 32)).astype(np.float32)
    x[5, 0, 0, 0] = 9.0  # one outlier value in the third batch of two faces
    init_of = lambda path: {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}  # noqa: E731

    def input_scale(path) -> float:
        g = onnx.load(str(path)).graph
        q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == g.input[0].name)
        return float(init_of(path)[q.input[1]])

    plain, mean = tmp_path / "plain.onnx", tmp_path / "mean.onnx"
    apply_recipe(fp32, plain, INT8_RECIPES.build("qdq_all"), x)
    apply_recipe(fp32, mean, INT8_RECIPES.build("qdq_all_mean_range"), x)
    pairs = x.reshape(4, -1)  # the calibration batches of two faces
    lo, hi = pairs.min(axis=1).mean(), pairs.max(axis=1).mean()
    assert input_scale(plain) == pytest.approx((9.0 - x.min()) / 255, rel=1e-5)
    assert input_scale(mean) == pytest.approx((hi - lo) / 255, rel=1e-5)  # (1 + 1 + 9 + 1) / 4 = 3, not 9
    g = onnx.load(str(mean)).graph
    dq_outputs = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    heads = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert [n.input[1] in dq_outputs for n in heads] == [True, True, True, False, False]
    # The same ranges with the stem (first two convs) in FP32 as well: only the middle one is INT8.
    stem = tmp_path / "stem.onnx"
    apply_recipe(fp32, stem, INT8_RECIPES.build("qdq_all_mean_range_fp32_stem"), x)
    g = onnx.load(str(stem)).graph
    dq_outputs = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    assert [n.input[1] in dq_outputs for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")] == [
        False, False, True, False, False]
