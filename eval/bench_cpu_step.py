"""The bare training step under each precision / layout / compile choice, on resident crops.

Builds the ``facekd train`` objective (backbone + CosFace head over ``--classes``
identities), SGD as configured by default, and one random batch kept in memory; for each
``--variants`` entry (``fp32``, ``cl`` = channels_last, ``bf16`` = bf16 autocast,
``compile``, combined with ``+``) times one first step (compiling, if asked) and then
``--steps`` steps, and prints the median images/s. What ``train.precision/channels_last/
compile: auto`` decides is grounded on these figures (docs/BENCHMARKS.md, "CPU training
path").

Usage::

    python eval/bench_cpu_step.py --backbone student5 --batch 128 --variants fp32 cl bf16 cl+bf16 cl+compile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekd.config import from_dict  # noqa: E402
from facekd.train.config import TrainConfig  # noqa: E402
from facekd.train.loop import build_objective  # noqa: E402
from facekd.train.optim import build_optimizer  # noqa: E402
from facekd.train.speed import cpu_info  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="student5")
    p.add_argument("--classes", type=int, default=5461)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["fp32", "cl", "bf16", "cl+bf16", "cl+compile"])
    args = p.parse_args(argv)

    cfg = from_dict(TrainConfig, {"model": {"backbone": args.backbone, "head": "cosface",
                                            "head_args": {"scale": 64.0, "margin": 0.35}}}, "bench")
    x = torch.randn(args.batch, 3, 112, 96)
    y = torch.randint(0, args.classes, (args.batch,))
    print(f"{cpu_info().describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for v in args.variants:
        parts = set(v.split("+"))
        torch.manual_seed(0)
        obj = build_objective(cfg, args.classes)
        opt = build_optimizer([obj], cfg.optim)
        xx = x
        if "cl" in parts:
            obj, xx = obj.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        if "compile" in parts:
            obj.backbone.forward = torch.compile(obj.backbone.forward)
        bf16 = "bf16" in parts

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                terms = obj(xx, y)
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"{args.backbone} batch {args.batch} {v:<16}{args.batch / med:8.1f} images/s  first step {first:6.1f} s  "
              f"steps {[round(t, 2) for t in times]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
