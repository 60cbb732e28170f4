"""What distillation costs over training the student alone.

In one process, on the same crops and the same student, alternates epochs of
``facekd train``'s step (student + head from labels) and ``facekd distill``'s step
(student + head + Hard + Soft + FeatureNorm with teacher weighting) for each
``--teacher-modes`` entry: ``cache`` (teacher outputs of the un-augmented crops looked up
from the cache) and ``online`` (the frozen teacher runs on every augmented batch),
``--repeats`` times each, and reports the median epoch time of each and their ratios to
the student's. The teacher's one-off embedding pass is reported separately (it is paid
once per teacher and data set, then reused by every run). Batches come from the loader
``facekd train`` would pick (``--loader``, default auto), augmented as the config's
defaults say.

Usage::

    python eval/bench_distill_overhead.py --pack /tmp/dev_train_q85.fkpack --max-identities 300 \\
        --student resnet27_c10 --teacher mobilefacenet --teacher-weights ../shared/weights/mobilefacenet_casia.ckpt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from facekd.config import from_dict
    from facekd.distill.config import DistillConfig
    from facekd.distill.objective import make_distill_objective
    from facekd.io_utils import atomic_write_json
    from facekd.models import backbone_cfg
    from facekd.train.data import build_train_set, epoch_batches
    from facekd.train.loaders import choose_loader
    from facekd.train.speed import cpu_info
    from facekd.train.loop import build_objective, train_one_epoch
    from facekd.train.run_setup import standalone_setup

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", required=True)
    p.add_argument("--max-identities", type=int)
    p.add_argument("--student", default="student5")
    p.add_argument("--teacher", default="mobilefacenet")
    p.add_argument("--teacher-weights")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--loader", default="auto")
    p.add_argument("--teacher-modes", nargs="+", default=["cache"], choices=["cache", "online"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def config(mode: str) -> DistillConfig:
        return from_dict(DistillConfig, {
            "model": {"backbone": args.student, "head": "cosface"},
            "teacher": {"model": args.teacher, "weights": args.teacher_weights},
            "distill": {"teacher_weighting": True, "teacher_mode": mode},
            "data": {"train": [args.pack], "max_identities": args.max_identities, "workers": args.workers,
                     "loader": args.loader},
            "train": {"batch_size": args.batch, "device": str(device), "log_every": 10**9},
        }, "bench")

    cfg = config(args.teacher_modes[0])
    bcfg = backbone_cfg(args.student)
    data = build_train_set(cfg.data, bcfg.pre.template)
    objectives, teacher_s = {}, 0.0
    for mode in args.teacher_modes:
        t0 = time.perf_counter()
        objectives[f"distill-{mode}"] = make_distill_objective(config(mode), data, device, say=print)
        if mode == "cache":
            teacher_s = time.perf_counter() - t0
    torch.manual_seed(0)
    plain = build_objective(cfg, len(data.identities))

    loader = choose_loader(cfg.data.loader, data, device)
    print(f"loader {loader.name} ({loader.reason}); fp32, contiguous, eager; {cpu_info().describe()}")

    def setup_for(module):
        return standalone_setup(cfg, module, data, device, loader.name, args.workers)

    setups = {"student": setup_for(plain), **{k: setup_for(v) for k, v in objectives.items()}}
    times: dict[str, list[float]] = {k: [] for k in setups}
    for r in range(args.repeats + 1):  # the first round warms up
        for name, s in setups.items():
            batches = epoch_batches(len(data), args.batch, 0, r)
            _, stats = train_one_epoch(s, r, 0, s.loader.epoch(batches, r))
            if r:
                times[name].append(stats["seconds"])
                print(f"round {r} {name:<8} {stats['seconds']:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: med[k] / med["student"] for k in objectives}
    print(f"{len(data)} crops, {args.student} <- {args.teacher}, batch {args.batch}, {device}: student epoch "
          f"{med['student']:.2f} s; " + "; ".join(f"{k} epoch {med[k]:.2f} s, ratio {ratios[k]:.3f}" for k in objectives)
          + f" (median of {args.repeats})" + (f"; teacher outputs computed once in {teacher_s:.1f} s" if teacher_s else ""))
    if args.json:
        atomic_write_json(args.json, {"crops": len(data), "student": args.student, "teacher": args.teacher,
                                      "device": str(device), "loader": loader.name, "times": times, "median": med,
                                      "ratios": ratios, "teacher_cache_seconds": teacher_s})
    return 0


if __name__ == "__main__":
    sys.exit(main())
