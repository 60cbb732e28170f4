"""``facekd bench``: size, cost and speed of embedders side by side (the deployment figures of Wang et al.'s comparison: parameters, size, latency).

Per model: parameters, MACs at its input size, FP32 and INT8 ONNX file sizes, CPU
latency per face at batch 1 (one thread and all threads) for PyTorch eager, ONNX
Runtime FP32 and ONNX Runtime INT8, throughput at batch 64 (all threads), and GPU
throughput when there is one. Batch-1 calls of all engines are interleaved round by
round (:func:`facekd.runtime.timing.measure_latency`), so they see the same background load; each figure is
the median over rounds, with the fastest and slowest round.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from facekd.deploy.crops import sample_crops
from facekd.deploy.export import export_onnx, synthetic_inputs
from facekd.deploy.quantize import quantize_int8
from facekd.errors import FacekdError
from facekd.hub import resolve
from facekd.models.profile import count_macs, count_params
from facekd.preprocessing import Preprocessing, to_input
from facekd.runtime.onnx import ort_session
from facekd.runtime.timing import measure_latency, median_ratio, torch_call
from facekd.evaluation.plots import pyplot, save_figure


@dataclass(frozen=True)
class BenchOptions:
    """How ``facekd bench`` measures.

    Attributes:
        rounds: Interleaved rounds at batch 1.
        rounds_b64: Rounds at batch 64.
        int8: INT8 mode to benchmark ("static", "dynamic") or None to skip INT8.
        calib: Aligned crops (folder or pack) to calibrate INT8 and probe it; without
            them, random inputs (latency does not depend on the values).
        threads: "All threads" (default: every core).
    """

    rounds: int = 10
    rounds_b64: int = 3
    int8: str | None = "static"
    calib: Path | None = None
    threads: int = 0


@dataclass
class BenchRow:
    """One model's figures; latencies in ms per face, throughputs in faces/s."""

    name: str
    params: int
    macs: int
    input_size: list[int]
    weights: str
    onnx_fp32_mb: float
    onnx_int8_mb: float | None
    int8_recipe: str | None
    int8_note: str | None
    torch_ms_1t: float
    torch_ms_all: float
    ort_fp32_ms_1t: float
    ort_fp32_ms_all: float
    ort_int8_ms_1t: float | None
    ort_int8_ms_all: float | None
    int8_ratio_1t: float | None  # median round-by-round INT8/FP32, batch 1, one thread
    torch_b64_fps: float
    ort_fp32_b64_fps: float
    ort_int8_b64_fps: float | None
    gpu_b64_fps: float | None
    spread: dict = field(default_factory=dict)  # per measurement: median/min/max
    threads: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def _load_model(spec: str):
    """A registered name (random weights) or a facekd checkpoint -> (model, weights label)."""
    ref = resolve(spec, random_weights=True)
    net = ref.require_backbone("bench")
    label = ref.path.name if ref.path is not None else "random init (latency does not depend on weights)"
    return net, label


def _bench_inputs(pre: Preprocessing, calib: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised faces (real crops from ``calib``, else synthetic), one, and a batch of 64."""
    faces = to_input(sample_crops(calib, pre.template, 128), pre) if calib is not None else synthetic_inputs(64, pre.input_size)
    one = np.ascontiguousarray(faces[:1])
    b64 = np.ascontiguousarray(np.concatenate([faces] * (-(-64 // len(faces))))[:64])
    return faces, one, b64


def _try_int8(fp32_path: Path, int8_path: Path, faces: np.ndarray, real_weights: bool, opts: BenchOptions,
              name: str, log) -> tuple[str | None, str | None]:
    """Quantizes when asked: (recipe shipped, or the reason none was)."""
    if not opts.int8:
        return None, None
    log(f"{name}: quantizing ({opts.int8}) ...")
    try:
        # Random weights give meaningless cosines; a checkpoint is held to the usual floor.
        floor = {} if real_weights else {"min_cosine": -1.0}
        return quantize_int8(fp32_path, int8_path, opts.int8, calib=faces, probe=faces[:32], **floor).recipe, None
    except FacekdError as exc:
        return None, str(exc)


def _time_engines(model, fp32_path: Path, int8_path: Path | None, one: np.ndarray, b64: np.ndarray,
                  opts: BenchOptions, threads: int, name: str, log) -> tuple[dict, dict]:
    """Timings at batch 1 (one thread, all threads) and at batch 64."""
    files = {"fp32": fp32_path} | ({"int8": int8_path} if int8_path is not None else {})
    one_t = {k: ort_session(p, threads=1) for k, p in files.items()}
    all_t = {k: ort_session(p, threads=threads) for k, p in files.items()}
    before = torch.get_num_threads()
    try:
        # Engines are interleaved only with engines of the same thread count, and PyTorch
        # with several threads is timed on its own: idle OpenMP and ORT pool threads spin
        # after a call and slowed the next engine's call by up to 1.5x when all were mixed.
        torch.set_num_threads(1)
        log(f"{name}: batch 1, one thread, {opts.rounds} interleaved rounds ...")
        group1 = {"torch_1t": torch_call(model, one, 1)} | {f"ort_{k}_1t": s for k, s in one_t.items()}
        t1 = measure_latency(group1, rounds=opts.rounds, inputs=one)
        log(f"{name}: batch 1, {threads} threads ...")
        t1 |= measure_latency({f"ort_{k}_all": s for k, s in all_t.items()}, rounds=opts.rounds, inputs=one)
        t1 |= measure_latency({"torch_all": torch_call(model, one, threads)}, rounds=opts.rounds)
        log(f"{name}: batch 64, {opts.rounds_b64} rounds ...")
        big = {"rounds": opts.rounds_b64, "min_round_s": 0.0, "warmup": 1}
        t64 = measure_latency({f"ort_{k}_b64": s for k, s in all_t.items()}, inputs=b64, **big)
        t64 |= measure_latency({"torch_b64": torch_call(model, b64, threads)}, **big)
    finally:
        torch.set_num_threads(before)
    return t1, t64


def bench_model(spec: str, opts: BenchOptions = BenchOptions(), log=print) -> BenchRow:
    """Measures one model (registered name or facekd checkpoint)."""
    model, weights = _load_model(spec)
    model.eval()
    cfg = model.cfg
    real_weights = Path(spec).is_file()
    name = f"{cfg.name} ({Path(spec).name})" if real_weights else cfg.name
    size = tuple(cfg.input_size)
    threads = opts.threads or os.cpu_count() or 1
    faces, one, b64 = _bench_inputs(cfg.pre, opts.calib)
    with tempfile.TemporaryDirectory(prefix="facekd-bench-") as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_onnx(model, fp32_path, input_size=size)
        int8_recipe, int8_note = _try_int8(fp32_path, int8_path, faces, real_weights and opts.calib is not None, opts, name, log)
        has_int8 = int8_path.is_file()
        t1, t64 = _time_engines(model, fp32_path, int8_path if has_int8 else None, one, b64, opts, threads, name, log)
        fp32_mb = fp32_path.stat().st_size / 1e6
        int8_mb = int8_path.stat().st_size / 1e6 if has_int8 else None
    ms = {k: round(v.median * 1000, 3) for k, v in t1.items()}
    fps = {k: round(64 / v.median, 1) for k, v in t64.items()}
    ratio = median_ratio(t1["ort_int8_1t"], t1["ort_fp32_1t"])[0] if has_int8 else None
    return BenchRow(
        name=name, params=count_params(model), macs=count_macs(model, size), input_size=list(size), weights=weights,
        onnx_fp32_mb=round(fp32_mb, 3), onnx_int8_mb=round(int8_mb, 3) if int8_mb else None,
        int8_recipe=int8_recipe, int8_note=int8_note,
        torch_ms_1t=ms["torch_1t"], torch_ms_all=ms["torch_all"],
        ort_fp32_ms_1t=ms["ort_fp32_1t"], ort_fp32_ms_all=ms["ort_fp32_all"],
        ort_int8_ms_1t=ms.get("ort_int8_1t"), ort_int8_ms_all=ms.get("ort_int8_all"),
        int8_ratio_1t=round(ratio, 4) if ratio is not None else None,
        torch_b64_fps=fps["torch_b64"], ort_fp32_b64_fps=fps["ort_fp32_b64"], ort_int8_b64_fps=fps.get("ort_int8_b64"),
        gpu_b64_fps=_gpu_throughput(model, b64),
        spread={k: v.ms() for k, v in t1.items()} | {k: v.ms(per=64) for k, v in t64.items()},
        threads=threads,
    )


def _gpu_throughput(model, batch: np.ndarray) -> float | None:
    """PyTorch eager faces/s at batch 64 on CUDA (None without a GPU)."""
    if not torch.cuda.is_available():
        return None
    net = model.cuda().eval()
    x = torch.from_numpy(batch).cuda()

    def call():
        with torch.inference_mode():
            net(x)
        torch.cuda.synchronize()

    t = measure_latency({"gpu": call}, rounds=10)
    model.cpu()
    return round(64 / t["gpu"].median, 1)


def teacher_ratios(rows: list[dict], teacher: str = "resnet27", key: str = "ort_fp32_ms_1t") -> dict[str, float]:
    """How many times faster than ``teacher`` each other row is on ``key``."""
    base = next((r for r in rows if r["name"] == teacher), None)
    if base is None or not base.get(key):
        return {}
    return {r["name"]: round(base[key] / r[key], 2) for r in rows if r["name"] != teacher and r.get(key)}


def _fmt(v, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def markdown_table(rows: list[dict], teacher: str = "resnet27") -> str:
    """The benchmark as a Markdown table (latency in ms per face)."""
    speedup = teacher_ratios(rows, teacher)
    head = (
        "| model | params (M) | MMAC | ONNX FP32 / INT8 (MB) | INT8 recipe | PyTorch 1t / all | ORT FP32 1t / all "
        "| ORT INT8 1t / all | INT8/FP32 (1t) | b64 faces/s PyTorch / FP32 / INT8 | GPU b64 | "
        f"vs {teacher} (ORT FP32 1t) |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e6:.0f} | "
            f"{_fmt(r['onnx_fp32_mb'], '.1f')} / {_fmt(r['onnx_int8_mb'], '.1f')} | {r['int8_recipe'] or '–'} | "
            f"{_fmt(r['torch_ms_1t'])} / {_fmt(r['torch_ms_all'])} | {_fmt(r['ort_fp32_ms_1t'])} / {_fmt(r['ort_fp32_ms_all'])} | "
            f"{_fmt(r['ort_int8_ms_1t'])} / {_fmt(r['ort_int8_ms_all'])} | {_fmt(r['int8_ratio_1t'])} | "
            f"{_fmt(r['torch_b64_fps'], '.0f')} / {_fmt(r['ort_fp32_b64_fps'], '.0f')} / {_fmt(r['ort_int8_b64_fps'], '.0f')} | "
            f"{_fmt(r['gpu_b64_fps'], '.0f')} | {('%.1fx' % speedup[r['name']]) if r['name'] in speedup else '–'} |"
        )
    return "\n".join(lines)


def read_accuracies(path: Path | str) -> dict[str, float]:
    """LFW accuracies (percent) by model name, from ``{"name": 99.1, ...}`` or from a list
    of rows that carry ``name`` and ``lfw_accuracy`` (or ``accuracy``)."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        return {str(k): float(v["accuracy"] if isinstance(v, dict) else v) for k, v in data.items()}
    out = {}
    for row in data:
        acc = row.get("lfw_accuracy", row.get("accuracy"))
        if acc is not None:
            out[row["name"]] = float(acc)
    return out


def plot_accuracy_latency(rows: list[dict], accuracies: dict[str, float], path: Path | str, key: str = "ort_fp32_ms_1t") -> Path:
    """PNG: LFW accuracy against CPU latency, marker area proportional to parameters."""
    plt = pyplot()

    pts = [(r, accuracies[r["name"]]) for r in rows if r["name"] in accuracies and r.get(key)]
    if not pts:
        raise FacekdError("no benchmarked model has an accuracy in the results file; nothing to plot")
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    biggest = max(r["params"] for r, _ in pts)
    for r, acc in pts:
        ax.scatter(r[key], acc, s=40 + 1500 * r["params"] / biggest, alpha=0.5)
        ax.annotate(f"{r['name']}\n{r['params'] / 1e6:.1f} M", (r[key], acc), fontsize=8, ha="center", va="center")
    ax.set_xscale("log")
    ax.set_xlabel(f"CPU latency per face, ms ({key})")
    ax.set_ylabel("LFW accuracy, %")
    ax.set_title("Accuracy against latency (marker area: parameters)")
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)
