"""What distillation with cached teacher outputs costs over training the student alone.

In one process, on the same crops and the same student, alternates epochs of
``facekd train``'s step (student + head from labels) and ``facekd distill``'s step
(student + head + Hard + Soft + FeatureNorm with teacher weighting, teacher outputs
looked up from the cache), ``--repeats`` times each, and reports the median epoch time of
each and their ratio. The teacher's one-off embedding pass is reported separately (it is
paid once per teacher and data set, then reused by every run).

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
    from facekd.train.loop import build_objective, standalone_setup, train_one_epoch

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
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = from_dict(DistillConfig, {
        "model": {"backbone": args.student, "head": "cosface"},
        "teacher": {"model": args.teacher, "weights": args.teacher_weights},
        "distill": {"teacher_weighting": True, "teacher_mode": "cache"},
        "data": {"train": [args.pack], "max_identities": args.max_identities, "workers": args.workers},
        "train": {"batch_size": args.batch, "device": str(device), "log_every": 10**9},
    }, "bench")
    bcfg = backbone_cfg(args.student)
    data = build_train_set(cfg.data, bcfg.template)
    t0 = time.perf_counter()
    distill = make_distill_objective(cfg, data, device, say=print)
    teacher_s = time.perf_counter() - t0
    torch.manual_seed(0)
    plain = build_objective(cfg, len(data.identities))

    loader = "workers" if device.type == "cpu" else "device-cache"

    def setup_for(module):
        return standalone_setup(cfg, module, data, device, loader, args.workers)

    setups = {"student": setup_for(plain), "distill": setup_for(distill)}
    times: dict[str, list[float]] = {k: [] for k in setups}
    for r in range(args.repeats + 1):  # the first round warms up
        for name, s in setups.items():
            batches = epoch_batches(len(data), args.batch, 0, r)
            _, stats = train_one_epoch(s, r, 0, s.loader.epoch(batches, r))
            if r:
                times[name].append(stats["seconds"])
                print(f"round {r} {name:<8} {stats['seconds']:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["distill"] / med["student"]
    print(f"{len(data)} crops, {args.student} <- {args.teacher}, batch {args.batch}, {device}: student epoch "
          f"{med['student']:.2f} s, distill epoch {med['distill']:.2f} s (median of {args.repeats}); "
          f"ratio {ratio:.3f}; teacher outputs computed once in {teacher_s:.1f} s")
    if args.json:
        atomic_write_json(args.json, {"crops": len(data), "student": args.student, "teacher": args.teacher,
                                      "device": str(device), "times": times, "median": med, "ratio": ratio,
                                      "teacher_cache_seconds": teacher_s})
    return 0


if __name__ == "__main__":
    sys.exit(main())
