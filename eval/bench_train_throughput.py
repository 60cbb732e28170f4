"""Training throughput: the real input pipeline against data already resident on the device.

Runs ``facekd.train.loop.train_one_epoch`` (the same step ``facekd train`` takes:
forward, head, loss, backward, optimizer, schedule) side by side, in one process:

- ``resident``: one pre-normalised batch already on the device, fed again and again:
  the ceiling for this model and step;
- one row per loader (``device-cache``, ``device``, ``workers``) fed from a pack.

Each row warms up first (torch.compile, cuDNN autotuning), then times ``--steps`` steps.

Usage (H100; the pack travels in the checkout, e.g. under .carry/)::

    python eval/bench_train_throughput.py --pack .carry/dev_train_q85.fkpack \\
        --backbone resnet27 --batch 256 --compile --json out.json

On a CPU it runs too (small ``--steps``), which is how CI keeps it working.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekd.config import from_dict  # noqa: E402
from facekd.io_utils import atomic_write_json  # noqa: E402
from facekd.train.config import TrainConfig  # noqa: E402


def _setup(cfg: TrainConfig, data, loader_name: str | None, device: torch.device):
    from facekd.train.loop import build_objective, standalone_setup

    torch.manual_seed(0)
    plain = build_objective(cfg, len(data.identities)).to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        plain = plain.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        plain.backbone.forward = torch.compile(plain.backbone.forward)
    return standalone_setup(cfg, plain, data, device, loader_name, cfg.data.workers or 0)


def bench(args: argparse.Namespace) -> list[dict]:
    from facekd.train.data import build_train_set, epoch_batches
    from facekd.train.loop import train_one_epoch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    raw = {
        "model": {"backbone": args.backbone, "head": "cosface"},
        "data": {"train": [str(Path(args.pack).resolve())], "workers": args.workers},
        "train": {"batch_size": args.batch, "compile": args.compile, "device": str(device), "log_every": 10**9},
    }
    cfg = from_dict(TrainConfig, raw, "bench")
    from facekd.models import backbone_cfg

    data = build_train_set(cfg.data, backbone_cfg(args.backbone).template)
    rows = []
    for name in ["resident", *args.loaders]:
        t_build = time.perf_counter()
        setup = _setup(cfg, data, None if name == "resident" else name, device)
        build_s = time.perf_counter() - t_build
        n = args.warmup + args.steps
        batches = []
        epoch = 0
        while len(batches) < n:
            epoch += 1
            batches += epoch_batches(len(data), args.batch, 0, epoch)
        warm, timed = batches[: args.warmup], batches[args.warmup : n]
        if name == "resident":
            from facekd.train.data import LOADERS, LoaderCtx

            bcfg = backbone_cfg(args.backbone)
            ctx = LoaderCtx(data, cfg.data.augment, bcfg.mean, bcfg.std, device, 0, 0)
            x, y, idx = next(LOADERS.get("device")(ctx).epoch(batches[:1], 0))
            feeds = (iter([(x, y, idx)] * len(warm)), iter([(x, y, idx)] * len(timed)))
        else:
            feeds = (setup.loader.epoch(warm, 1), setup.loader.epoch(timed, 2))
        train_one_epoch(setup, 1, 0, feeds[0])
        _, stats = train_one_epoch(setup, 1, 0, feeds[1])
        rows.append({"input": name, "images_per_s": round(stats["images_per_s"], 1), "steps": args.steps,
                     "seconds": round(stats["seconds"], 2), "setup_seconds": round(build_s, 1)})
        print(f"{name:<13} {stats['images_per_s']:>10.1f} images/s  ({args.steps} steps of {args.batch})", flush=True)
        del setup
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ceiling = rows[0]["images_per_s"]
    for r in rows:
        r["of_resident"] = round(r["images_per_s"] / ceiling, 3)
    info = {
        "backbone": args.backbone, "batch": args.batch, "compile": args.compile, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "precision": cfg.train.precision if device.type == "cuda" else "fp32", "pack": str(args.pack),
        "crops": len(data), "torch": str(torch.__version__),
    }
    print(json.dumps(info))
    return [{**info, **r} for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", required=True, help="training pack (.fkpack)")
    p.add_argument("--backbone", default="resnet27")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--loaders", nargs="*", default=["device-cache", "device", "workers"])
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers for the 'workers' row")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = bench(args)
    if args.json:
        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
