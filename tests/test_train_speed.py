"""Precision, layout and compile choices (facekd/train/speed.py) and the CPU loader choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facekd.errors import FacekdError
from facekd.train.config import TrainCfg
from facekd.train.speed import CompilePolicy, CpuInfo, cpu_info, plan_speed, time_step

EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2
"""
XEON_SPR = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C
flags\t\t: fpu avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16 i8mm sve
"""


def test_cpu_info_reads_native_bf16_from_cpuinfo():
    amd = cpu_info(EPYC_AVX2)
    assert amd.model == "AMD EPYC 7B13" and not amd.native_bf16 and "no native bf16" in amd.describe()
    intel = cpu_info(XEON_SPR)
    assert intel.bf16_flags == ("avx512_bf16", "amx_bf16") and intel.native_bf16
    assert cpu_info(GRAVITON3).bf16_flags == ("bf16",)


class _Tiny(torch.nn.Module):
    """A conv + linear head objective in the trainer's call shape."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x, y, index=None):
        emb = self.backbone(x)
        return {"cls": torch.nn.functional.cross_entropy(self.head(emb.float()), y)}


def _cpu(native: bool) -> CpuInfo:
    return CpuInfo("test CPU", "AVX512" if native else "AVX2", ("amx_bf16",) if native else (), 2)


def test_auto_is_fp32_on_a_cpu_without_native_bf16_and_bf16_on_cuda():
    cfg = TrainCfg(channels_last=False, compile=False, batch_size=8)
    plan = plan_speed(cfg, _Tiny(), torch.device("cpu"), (12, 10), 3, total_steps=1000, cpu=_cpu(False))
    assert plan.precision == "fp32" and not plan.probe  # one candidate left: nothing to time
    assert "no native bf16" in plan.describe()
    cuda = plan_speed(TrainCfg(), _Tiny(), torch.device("cuda"), (12, 10), 3, total_steps=999)
    assert (cuda.precision, cuda.channels_last, cuda.compile) == ("bf16", True, False)  # a short run
    long_run = plan_speed(TrainCfg(), _Tiny(), torch.device("cuda"), (12, 10), 3, total_steps=2240)
    assert long_run.compile


def test_the_probe_times_every_candidate_and_keeps_the_fastest(monkeypatch):
    import facekd.train.speed as speed

    seconds = {("fp32", False): 1.0, ("fp32", True): 0.8, ("bf16", False): 0.9, ("bf16", True): 0.5}
    calls = []

    def fake(objective, x, y, precision, channels_last, steps=2):
        calls.append((precision, channels_last, tuple(x.shape)))
        return seconds[(precision, channels_last)]

    monkeypatch.setattr(speed, "time_step", fake)
    cfg = TrainCfg(batch_size=16, compile=False)
    plan = plan_speed(cfg, _Tiny(), torch.device("cpu"), (12, 10), 3, total_steps=1000, cpu=_cpu(True))
    assert (plan.precision, plan.channels_last) == ("bf16", True)
    assert len(calls) == 4 and all(c[2] == (16, 3, 12, 10) for c in calls)  # probe batch: min(32, batch)
    # Where emulated bf16 would be the only bf16 (no native support), it is never timed.
    calls.clear()
    plan = plan_speed(cfg, _Tiny(), torch.device("cpu"), (12, 10), 3, total_steps=1000, cpu=_cpu(False))
    assert (plan.precision, plan.channels_last) == ("fp32", True) and {c[0] for c in calls} == {"fp32"}
    # Too short a run: no probe, the plain choice.
    calls.clear()
    plan = plan_speed(cfg, _Tiny(), torch.device("cpu"), (12, 10), 3, total_steps=20, cpu=_cpu(True))
    assert (plan.precision, plan.channels_last) == ("fp32", False) and not calls
    # A distributed run's processes must agree: nothing is timed.
    plan = plan_speed(cfg, _Tiny(), torch.device("cpu"), (12, 10), 3, total_steps=1000, cpu=_cpu(True), may_time=False)
    assert (plan.precision, plan.channels_last, plan.compile) == ("fp32", False, False) and not calls
    assert "distributed" in plan.describe()


def test_compile_auto_on_the_cpu_weighs_the_timed_step_against_the_compile_time(monkeypatch):
    import facekd.train.speed as speed

    monkeypatch.setattr(speed, "time_step", lambda *a, **k: 0.5)  # 0.5 s per probe step of 16
    cfg = TrainCfg(batch_size=64, channels_last="auto", compile="auto")
    policy = CompilePolicy(seconds=60.0, gain=0.5, payback=2.0)  # pays from 240 s of eager run
    # A step of 64 takes 4 x 0.5 = 2 s: 119 steps are 238 s (off), 120 steps 240 s (on).
    for steps, on in ((119, False), (120, True)):
        plan = plan_speed(cfg, _Tiny(), torch.device("cpu"), (12, 10), 3, steps, cpu=_cpu(False),
                          probe_batch=16, compile_policy=policy)
        assert plan.compile is on, steps


def test_fp16_on_the_cpu_is_refused():
    with pytest.raises(FacekdError, match="fp16 is for CUDA"):
        plan_speed(TrainCfg(precision="fp16"), _Tiny(), torch.device("cpu"), (12, 10), 3, 1000, cpu=_cpu(True))


def test_compile_auto_follows_the_payback_arithmetic():
    policy = CompilePolicy(seconds=60.0, gain=0.1, payback=2.0)
    assert not policy.pays(1199.0) and policy.pays(1200.0)  # 1200 s x 0.1 = 2 x 60 s
    assert not CompilePolicy(seconds=1.0, gain=0.0).pays(1e9)


def test_time_step_leaves_the_objective_untouched():
    torch.manual_seed(0)
    obj = _Tiny()
    before = {k: v.clone() for k, v in obj.state_dict().items()}
    x, y = torch.randn(4, 3, 12, 10), torch.tensor([0, 1, 2, 0])
    assert time_step(obj, x, y, "fp32", True) > 0
    assert all(torch.equal(before[k], v) for k, v in obj.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in obj.parameters())


def test_auto_loader_caches_in_host_memory_when_it_fits(monkeypatch, tmp_path):
    import facekd.train.data as data_mod
    import facekd.train.loaders as loaders_mod
    from facekd.image_io import encode_jpeg
    from facekd.data.pack import write_pack
    from facekd.train.config import DataCfg

    img = np.full((112, 96, 3), 90, np.uint8)
    write_pack(tmp_path / "p.fkpack", [(f"a/{i}.jpg", 0, encode_jpeg(img, 90)) for i in range(10)], ["a"], "112x96")
    data = data_mod.build_train_set(DataCfg(train=[str(tmp_path / "p.fkpack")]), "112x96")
    need = 10 * 3 * 112 * 96  # 322,560 bytes decoded
    assert loaders_mod.decoded_bytes(data) == need
    monkeypatch.setattr(loaders_mod, "host_available_bytes", lambda: 4 * need + 4)
    assert loaders_mod.choose_loader("auto", data, torch.device("cpu")).name == "memory"
    monkeypatch.setattr(loaders_mod, "host_available_bytes", lambda: 4 * need)
    choice = loaders_mod.choose_loader("auto", data, torch.device("cpu"))
    assert choice.name == "workers" and "does not fit" in choice.reason
    assert loaders_mod.choose_loader("workers", data, torch.device("cpu")).name == "workers"
    assert loaders_mod.host_available_bytes() > 0
