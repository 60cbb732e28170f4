"""Where a CPU training step goes: ``torch.profiler`` over the ``facekd train`` step.

Times ``--steps`` steps of backbone + CosFace head + loss, backward and SGD on resident
random crops (the data path is measured by eval/bench_train_throughput.py) and prints
self CPU time grouped by what the op belongs to: convolutions, batch norm, PReLU,
max-pooling, the classifier head (its matmul and weight normalisation), the optimizer
step, and the rest.

Usage::

    python eval/profile_train_step.py --backbone student5 --classes 5461 --batch 128 [--channels-last]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekd.config import from_dict  # noqa: E402
from facekd.train.config import TrainConfig  # noqa: E402
from facekd.train.loop import build_objective  # noqa: E402
from facekd.train.optim import build_optimizer  # noqa: E402
from facekd.train.speed import autocast_dtype  # noqa: E402

# op name fragment -> group (first match wins)
GROUPS = [
    ("convolution", "conv"), ("conv2d", "conv"), ("mkldnn_conv", "conv"), ("batch_norm", "batch norm"),
    ("prelu", "PReLU"), ("max_pool", "max-pool"), ("optimizer", "optimizer"), ("sgd", "optimizer"),
    ("foreach", "optimizer"),
]


def _group(name: str, region: str) -> str:
    low = name.lower()
    for frag, g in GROUPS:
        if frag in low:
            return g
    return region


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="student5")
    p.add_argument("--classes", type=int, default=5461)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args(argv)

    cfg = from_dict(TrainConfig, {"model": {"backbone": args.backbone, "head": "cosface",
                                            "head_args": {"scale": 64.0, "margin": 0.35}}}, "profile")
    torch.manual_seed(0)
    obj = build_objective(cfg, args.classes)
    opt = build_optimizer([obj], cfg.optim)
    x = torch.randn(args.batch, 3, 112, 96)
    y = torch.randint(0, args.classes, (args.batch,))
    if args.channels_last:
        obj, x = obj.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(args.precision)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            with record_function("forward: backbone"):
                emb = obj.backbone(x)
        with record_function("forward: head + loss"):
            loss = torch.nn.functional.cross_entropy(obj.head(emb.float(), y), y)
        opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            opt.step()

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    regions = {e.key: e.cpu_time_total for e in events if e.key in
               ("forward: backbone", "forward: head + loss", "backward", "optimizer")}
    total = sum(regions.values())
    print(f"{args.backbone}, batch {args.batch}, {args.classes}-way CosFace, {args.precision}"
          f"{', channels_last' if args.channels_last else ''}, {torch.get_num_threads()} threads; "
          f"{total / 1e6 / args.steps:.2f} s per step")
    for k, v in regions.items():
        print(f"  {k:<22}{v / 1e6 / args.steps:7.3f} s {100 * v / total:5.1f}%")
    # Self time per op, grouped; ops the regions do not name fall into "other".
    groups: dict[str, float] = defaultdict(float)
    for e in events:
        if e.key in regions or e.key.startswith("ProfilerStep"):
            continue
        groups[_group(e.key, "other")] += e.self_cpu_time_total
    head_ops = sorted((e for e in events if e.key not in regions), key=lambda e: -e.self_cpu_time_total)[:15]
    all_self = sum(groups.values())
    print("self CPU time by kind of op:")
    for g, v in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {g:<22}{v / 1e6 / args.steps:7.3f} s {100 * v / all_self:5.1f}%")
    print("top ops (self CPU time):")
    for e in head_ops:
        print(f"  {e.key:<48}{e.self_cpu_time_total / 1e6 / args.steps:7.3f} s  x{e.count // args.steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
