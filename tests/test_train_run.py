"""``facekd train`` end to end on real faces: the CI smoke config, kill -9 + --resume, torchrun with gloo."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def train_crops(data_dir: Path, tmp_path_factory) -> Path:
    """Aligned crops of the 8 celeba-wild identities with the most photos, 20 photos each."""
    from facekd.align.folder import AlignOptions, align_folder
    from facekd.data.identity import scan_identities

    src = data_dir / "celeba-wild"
    samples, names = scan_identities([src])
    by_id: dict[int, list[str]] = {}
    for s in samples:
        by_id.setdefault(s.label, []).append(s.rel)
    top = sorted(by_id, key=lambda k: (-len(by_id[k]), k))[:8]
    files = [f for k in top for f in by_id[k][:20]]
    dst = tmp_path_factory.mktemp("crops") / "celeba-wild-112x96"
    align_folder(src, dst, AlignOptions(template="112x96"), files=files)
    return dst


def _tiny_config(tmp: Path, crops: Path, **sections) -> Path:
    import yaml

    cfg = {
        "model": {"backbone": "student5", "backbone_args": {"widths": [8, 16, 16, 32, 32], "embedding_dim": 64},
                  "head": "softmax"},
        "data": {"train": [str(crops)], "workers": 1},
        "optim": {"lr": 0.05},
        "train": {"epochs": 4, "batch_size": 16, "log_every": 1, "device": "cpu", "threads": 1},
        "eval": {"every": 0},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _facekd(*args: str) -> list[str]:
    return [sys.executable, "-m", "facekd.cli", *args]


def _records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_smoke_config_trains_one_epoch_and_its_checkpoint_embeds(data_dir, tmp_path):
    """The CI smoke run: configs/smoke.yaml exactly as shipped, photos aligned on first use."""
    run = tmp_path / "smoke"
    env = {**os.environ, "FACEKD_DATA": str(data_dir)}
    t0 = time.perf_counter()
    proc = subprocess.run(_facekd("train", str(REPO / "configs/smoke.yaml"), "--out", str(run)),
                          env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"smoke run: {seconds:.1f} s\n{proc.stdout}")
    epoch = _records(run, "epoch")
    assert len(epoch) == 1 and epoch[0]["epoch"] == 1
    crops = int(proc.stdout.split(" crops of ")[0].rsplit(" ", 1)[1])
    steps = crops // 32
    assert [r["step"] for r in _records(run, "train")] == list(range(1, steps + 1))
    assert epoch[0]["step"] == steps and torch.isfinite(torch.tensor(epoch[0]["loss"]))
    assert epoch[0]["lfw_pairs"] == 100 and 0 <= epoch[0]["lfw_acc"] <= 100
    assert list((run / "tb").glob("events.out.tfevents.*")), "no TensorBoard events written"

    from facekd.evaluation.embed import TorchEmbedder
    from facekd.hub import resolve

    net = resolve(run / "checkpoints/last.pt").backbone
    emb = TorchEmbedder(net, net.cfg.pre, "smoke", device="cpu")
    out = emb(torch.zeros(2, 112, 96, 3, dtype=torch.uint8).numpy())
    assert out.shape == (2, 512)
    assert seconds < 240, f"the smoke run took {seconds:.0f} s; CI's budget is 2 minutes"


def test_kill_9_mid_epoch_then_resume_gives_the_same_losses(train_crops, tmp_path):
    cfg = _tiny_config(tmp_path, train_crops)
    straight = tmp_path / "straight"
    subprocess.run(_facekd("train", str(cfg), "--out", str(straight)), check=True, capture_output=True, timeout=600)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_facekd("train", str(cfg), "--out", str(run)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    killed = False
    while time.time() < deadline and proc.poll() is None:
        log = run / "metrics.jsonl"
        if (run / "checkpoints/last.pt").is_file() and log.is_file():
            lines = log.read_text().splitlines()
            if any(json.loads(line).get("epoch", 0) >= 2 for line in lines[-1:] if line.endswith("}")):
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.005)
    proc.wait()
    assert killed, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"

    from facekd.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "checkpoints/last.pt")  # whole, whatever the moment of the kill
    assert 1 <= ckpt["epoch"] < 4
    torn = run / "checkpoints" / ".last.pt.k9x2ab.tmp"  # what a kill inside save_checkpoint leaves
    torn.write_bytes(b"PK\x03\x04 half a checkpoint")

    again = subprocess.run(_facekd("train", str(cfg), "--out", str(run)), capture_output=True, text=True)
    assert again.returncode == 1 and "--resume" in again.stderr  # never overwrites a run by accident
    resumed = subprocess.run(_facekd("train", str(cfg), "--out", str(run), "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"after epoch {ckpt['epoch']}" in resumed.stdout
    assert not list((run / "checkpoints").glob(".*.tmp"))  # resuming cleared the torn temp files

    def losses(r: Path, kind: str) -> list[tuple]:
        return [(x["epoch"], x["step"], x["loss"]) for x in _records(r, kind)]

    assert losses(run, "train") == losses(straight, "train")
    assert losses(run, "epoch") == losses(straight, "epoch")
    assert len(losses(run, "epoch")) == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_gloo_processes_take_the_same_steps_as_one(train_crops, tmp_path):
    # No batch norm (the ResNet family's norm="none", Wen et al.'s layout; batch norm's
    # statistics are per process) and no augmentation: two processes holding half of
    # each global batch must compute the same mean loss as one process.
    cfg = _tiny_config(
        tmp_path,
        train_crops,
        model={"backbone": "resnet27", "backbone_args": {"base": 4, "units": [1, 1, 1, 1], "norm": "none"},
               "head": "softmax"},
        data={"augment": {"flip": 0.0, "affine_p": 0.0, "color_p": 0.0, "gray_p": 0.0}, "workers": 0},
        # Pinned, so that both runs are fp32 eager whatever the CPU ("auto" picks by timing,
        # and may pick bf16 where the CPU has it natively).
        train={"epochs": 2, "precision": "fp32", "channels_last": False, "compile": False},
        # A tame rate: at 0.05 this net without batch norm amplifies the all-reduce's float
        # rounding into losses 19% apart by step 20.
        optim={"lr": 0.005},
    )
    one = tmp_path / "one"
    subprocess.run(_facekd("train", str(cfg), "--out", str(one)), check=True, capture_output=True, timeout=600)
    two = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "facekd.cli", "train", str(cfg), "--out", str(two)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _records(one, "train"), _records(two, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    # Float sums differ in order (all-reduce, and kernels chosen per batch size), and this
    # net amplifies the difference step by step: the first steps must agree to float
    # rounding (a wrong shard changes step 0's mean loss, a wrong gradient average step
    # 1's), the later ones only closely. Measured on an AVX-512 CPU, fp32: 1e-7 up to step
    # 5, 4e-3 by step 18, weights 2.8e-3 apart after 20 steps (the AVX2 CPUs of earlier
    # sessions met rel 1e-4 throughout and 5e-4 on the weights).
    loss_a, loss_b = [r["loss"] for r in a], [r["loss"] for r in b]
    assert loss_b[:6] == pytest.approx(loss_a[:6], rel=1e-5)
    assert loss_b == pytest.approx(loss_a, rel=2e-2)
    sa = torch.load(one / "checkpoints/last.pt", weights_only=True)["model"]
    sb = torch.load(two / "checkpoints/last.pt", weights_only=True)["model"]
    assert max((sa[k] - sb[k]).abs().max().item() for k in sa) < 2e-2


def test_throughput_bench_runs_on_cpu_at_a_tiny_size(train_crops, tmp_path):
    """eval/bench_train_throughput.py (issue 10's CPU table, issue 3's H100 command) keeps working."""
    from facekd.data.pack import build_pack

    pack = tmp_path / "crops.fkpack"
    build_pack([train_crops], pack)
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval/bench_train_throughput.py"), "--pack", str(pack), "--backbones", "student5",
         "--batch", "16", "--epochs", "1", "--device", "cpu", "--warmup", "1", "--rounds", "2", "--steps", "1", "--workers", "1",
         "--loaders", "device-cache", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["input"] for r in rows] == ["plain", "default", "ceiling", "device-cache"]
    by = {r["input"]: r for r in rows}
    assert by["plain"]["loader"] == "workers" and by["plain"]["precision"] == "fp32" and not by["plain"]["channels_last"]
    assert by["default"]["loader"] == "memory"  # 160 crops fit in any machine's free memory
    assert by["ceiling"]["loader"] == "resident" and by["ceiling"]["of_ceiling"] == 1.0
    for r in rows:
        assert len(r["rounds"]) == 2 and all(v > 0 for v in r["rounds"])
        assert r["of_plain"] == pytest.approx(r["images_per_s"] / by["plain"]["images_per_s"], abs=2e-3)
    assert "images/s" in proc.stdout and "student5" in proc.stdout
