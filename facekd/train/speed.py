"""How a run computes: precision, memory layout and ``torch.compile``, per machine.

``train.precision``, ``train.channels_last`` and ``train.compile`` may be ``auto``;
:func:`plan_speed` resolves them for the device at hand and says why:

- CUDA: bf16 autocast, channels_last; compile for long runs (:data:`CUDA_COMPILE_STEPS`).
- CPU: bf16 autocast only where the CPU computes bf16 natively (AVX512-BF16 or AMX on
  x86, the BF16 extension on Arm), and only if a few timed steps confirm it is faster;
  elsewhere fp32 (emulated bf16 on an AVX2 CPU is several times slower than fp32).
  channels_last where the timed steps show it pays. ``torch.compile`` when the run is
  long enough to pay back the compile time (see :data:`CPU_COMPILE`).

Heads, margins and losses stay in fp32 whatever the precision
(:func:`facekd.train.loop.full_precision`).
"""

from __future__ import annotations

import copy
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from facekd.errors import FacekdError

_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """What this CPU offers for training, as the OS and torch report it."""

    model: str
    capability: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    bf16_flags: tuple[str, ...]  # native bf16 flags found in /proc/cpuinfo
    cores: int
    simd: tuple[str, ...] = ()  # the flags of SIMD_FLAGS it has (what CPU latency depends on)

    @property
    def native_bf16(self) -> bool:
        return bool(self.bf16_flags)

    def describe(self) -> str:
        bf16 = "native bf16 (" + ", ".join(self.bf16_flags) + ")" if self.native_bf16 else "no native bf16"
        return f"{self.model}, {self.cores} cores, torch CPU capability {self.capability}, {bf16}"


def cpu_info(cpuinfo: str | None = None) -> CpuInfo:
    """Reads ``/proc/cpuinfo`` (or the text given) and torch's CPU capability."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):  # x86 / Arm
            flags |= set(value.split())
    found = [f for f in _X86_BF16_FLAGS if f in flags]
    if "bf16" in flags:  # Arm: FEAT_BF16
        found.append("bf16")
    return CpuInfo(model, torch.backends.cpu.get_cpu_capability(), tuple(found), os.cpu_count() or 1,
                   tuple(f for f in SIMD_FLAGS if f in flags))


@dataclass(frozen=True)
class CompilePolicy:
    """When ``compile: auto`` compiles on the CPU: the eager run must last at least
    ``min_run_s``, and the gain must pay back ``seconds`` of compiling ``payback`` times.

    Measured on the dev CPU (AMD EPYC, 2 cores, AVX2), see docs/BENCHMARKS.md.
    """

    seconds: float  # compiling the backbone's forward and backward, first step
    gain: float  # fraction of an eager step saved once compiled
    payback: float = 2.0

    def pays(self, run_s: float) -> bool:
        return run_s * self.gain >= self.payback * self.seconds


# student5 + 5,461-way CosFace, batch 128, fp32 channels_last on the dev CPU (AMD EPYC,
# 2 cores, AVX2): the first compiled step took 63 s against 7.2 s eager (56 s of compiling
# with an empty inductor cache, about 25 s with a warm one), then steps took 3.5 s
# instead of 7.2 s. So compiling pays from about a 4-minute eager run on. See
# docs/BENCHMARKS.md, "CPU training path".
CPU_COMPILE = CompilePolicy(seconds=60.0, gain=0.5)
CUDA_COMPILE_STEPS = 1000


@dataclass(frozen=True)
class SpeedPlan:
    """The resolved settings and, for each, why."""

    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    compile: bool
    reasons: list[str] = field(default_factory=list)
    probe: dict[str, float] = field(default_factory=dict)  # candidate -> seconds per probe step

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous"
        return f"{self.precision}, {layout}, {'compiled' if self.compile else 'eager'} ({'; '.join(self.reasons)})"


@dataclass(frozen=True)
class TrainedWith:
    """How a run was trained, as it ran (not as configured): the resolved speed plan, the
    loader that fed it, the hardware and torch. Saved in the checkpoint's metrics under
    ``trained_with`` and carried into the results record."""

    precision: str  # the autocast dtype used: bf16 | fp16 | fp32 (no autocast)
    channels_last: bool
    compile: bool
    loader: str  # a name in facekd.train.loaders.LOADERS
    device: str  # cpu | cuda
    gpu: str | None  # the GPU's name on CUDA
    cpu: str  # CpuInfo.describe(): model, cores, torch capability, native bf16 flags
    torch: str


def trained_with(plan: SpeedPlan, loader: str, device: torch.device, cpu: CpuInfo | None = None) -> TrainedWith:
    """The record of what ``plan`` and ``loader`` make a run on ``device`` do."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return TrainedWith(plan.precision, plan.channels_last, plan.compile, loader, device.type, gpu,
                       (cpu or cpu_info()).describe(), str(torch.__version__))


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def time_step(objective: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, channels_last: bool,
              steps: int = 2) -> float:
    """Median seconds of a forward + backward of a copy of ``objective`` (after one warm-up
    step); the original's weights and batch-norm statistics stay as they were."""
    net = copy.deepcopy(objective).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(precision)
    index = torch.arange(len(x), device=x.device)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            terms = net(x, y, index)
        sum(v for k, v in terms.items() if not k.startswith("info_")).backward()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def plan_speed(cfg, objective: nn.Module, device: torch.device, input_size: tuple[int, int], num_classes: int,
               total_steps: int, cpu: CpuInfo | None = None, probe_batch: int = 32,
               compile_policy: CompilePolicy = CPU_COMPILE, may_time: bool = True) -> SpeedPlan:
    """Resolves ``cfg`` (a :class:`~facekd.train.config.TrainCfg`) for ``device``.

    On the CPU, the ``auto`` choices among precision and layout are timed on a copy of
    ``objective`` (``probe_batch`` random crops, one warm-up and two timed forward +
    backward steps each) unless the run is too short for the probe to pay, or
    ``may_time`` is False (a distributed run, whose processes must agree).
    """
    p, cl, comp = cfg.precision, cfg.channels_last, cfg.compile
    reasons: list[str] = []
    if device.type == "cuda":
        precision = "bf16" if p == "auto" else p
        channels_last = True if cl == "auto" else bool(cl)
        # Not measured here (no GPU): compile, as the dev recipe did, for runs of
        # CUDA_COMPILE_STEPS+ steps, where a minute of compiling is a small share.
        compiled = total_steps >= CUDA_COMPILE_STEPS if comp == "auto" else bool(comp)
        if p == "auto":
            reasons.append("precision auto: bf16 on CUDA")
        if comp == "auto":
            reasons.append(f"compile auto: {'on' if compiled else 'off'} ({total_steps} steps)")
        return SpeedPlan(precision, channels_last, compiled, reasons)

    cpu = cpu or cpu_info()
    if p == "fp16":
        raise FacekdError("train.precision fp16 is for CUDA (with a grad scaler); on the CPU use bf16, fp32 or auto")
    precisions = [p] if p != "auto" else (["fp32", "bf16"] if cpu.native_bf16 else ["fp32"])
    layouts = [bool(cl)] if cl != "auto" else [False, True]
    if p == "auto" and not cpu.native_bf16:
        reasons.append("precision auto: fp32, the CPU has no native bf16")
    if p == "bf16" and not cpu.native_bf16:
        reasons.append("bf16 asked for on a CPU without native bf16: emulated, expect it slower than fp32")
    probe: dict[str, float] = {}
    candidates = [(q, lay) for q in precisions for lay in layouts]
    if len(candidates) == 1:
        precision, channels_last = candidates[0]
    elif total_steps < 50 or not may_time:
        precision, channels_last = precisions[0], layouts[0]
        why = f"{total_steps} steps: too short a run to time" if may_time else "distributed: not timed"
        reasons.append(f"{why} the choices ({precision}, {'channels_last' if channels_last else 'contiguous'})")
    else:
        gen = torch.Generator().manual_seed(0)
        n = max(2, min(probe_batch, cfg.batch_size))
        x = torch.randn((n, 3, *input_size), generator=gen).to(device)
        y = torch.randint(0, num_classes, (n,), generator=gen).to(device)
        for q, lay in candidates:
            probe[f"{q}{'+channels_last' if lay else ''}"] = time_step(objective, x, y, q, lay)
        best = min(candidates, key=lambda c: probe[f"{c[0]}{'+channels_last' if c[1] else ''}"])
        precision, channels_last = best
        reasons.append("timed " + ", ".join(f"{k} {n / v:.0f} img/s" for k, v in probe.items()))
    if comp == "auto":
        step_s = min(probe.values()) * cfg.batch_size / max(2, min(probe_batch, cfg.batch_size)) if probe else None
        run_s = step_s * total_steps if step_s else 0.0
        compiled = step_s is not None and compile_policy.pays(run_s)
        reasons.append(f"compile auto: {'on' if compiled else 'off'}"
                       + (f" (about {run_s / 60:.0f} min eager)" if step_s else ""))
    else:
        compiled = bool(comp)
    return SpeedPlan(precision, channels_last, compiled, reasons, probe)
