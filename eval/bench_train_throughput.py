"""Training throughput on real crops: the plain path, the default path and the ceiling.

For each backbone, in one process, runs ``facekd.train.loop.train_one_epoch`` (the step
``facekd train`` takes: forward, head, loss, backward, optimizer, schedule) fed three ways:

- ``plain``: the old CPU path: ``data.loader=workers`` (decode in DataLoader workers,
  augmentation in-process), fp32, contiguous layout, eager;
- ``default``: what ``facekd train`` picks with the config defaults on this machine
  (``data.loader=auto``, ``train.precision/channels_last/compile=auto``, resolved by
  :func:`facekd.train.data.choose_loader` and :func:`facekd.train.speed.plan_speed` for a
  run of ``--epochs`` epochs);
- ``ceiling``: the default path's model and step fed one pre-normalised batch already in
  memory, again and again (no data path);
- one row per ``--loaders`` name, with the default path's step.

Each row warms up (``--warmup`` steps: compile, workers filling their queue), then takes
``--rounds`` rounds of ``--steps`` steps; its figure is the median over its rounds. Rows
run one after another.

Usage (dev CPU)::

    python eval/bench_train_throughput.py --pack /tmp/dev_train_q85.fkpack \\
        --backbones student5 resnet27_c10 --batch 256 --json /tmp/throughput.json

On an accelerator (the pack travels in the checkout)::

    python eval/bench_train_throughput.py --pack .carry/dev_train_q85.fkpack --backbones resnet27 student5 \\
        --loaders device --skip-plain --batch 256

CI runs it at a tiny size (tests/test_train_run.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekd.config import from_dict  # noqa: E402
from facekd.io_utils import atomic_write_json  # noqa: E402
from facekd.models import backbone_cfg  # noqa: E402
from facekd.train.config import TrainConfig  # noqa: E402
from facekd.train.data import build_train_set, epoch_batches  # noqa: E402
from facekd.train.loaders import LOADERS, LoaderCtx, choose_loader  # noqa: E402
from facekd.train.loop import build_objective, train_one_epoch  # noqa: E402
from facekd.train.run_setup import standalone_setup  # noqa: E402
from facekd.train.speed import SpeedPlan, cpu_info, plan_speed  # noqa: E402


@dataclass
class Row:
    """One timed way of feeding one backbone."""

    backbone: str
    input: str  # plain | default | ceiling | a loader name
    loader: str  # the loader, or "resident"
    precision: str
    channels_last: bool
    compile: bool
    images_per_s: float
    rounds: list[float]
    setup_seconds: float  # building the loader and model, the probe, and the warm-up steps (compile)
    of_ceiling: float = 0.0
    of_plain: float | None = 0.0  # None without a plain row (--skip-plain)


def _batches(n: int, batch: int, count: int) -> list:
    out, epoch = [], 0
    while len(out) < count:
        epoch += 1
        out += epoch_batches(n, batch, 0, epoch)
    return out[:count]


def bench_backbone(args: argparse.Namespace, backbone: str, device: torch.device) -> list[Row]:
    raw = {
        "model": {"backbone": backbone, "head": "cosface"},
        "data": {"train": [str(Path(args.pack).resolve())], "workers": args.workers},
        "train": {"batch_size": args.batch, "device": str(device), "log_every": 10**9, "epochs": args.epochs},
    }
    cfg = from_dict(TrainConfig, raw, "bench")
    bcfg = backbone_cfg(backbone)
    data = build_train_set(cfg.data, bcfg.pre.template)
    workers = cfg.data.workers if cfg.data.workers is not None else max(1, (torch.multiprocessing.cpu_count() or 2) - 1)
    per_row = args.warmup + args.rounds * args.steps
    order = _batches(len(data), args.batch, per_row)
    n_classes = len(data.identities)

    def objective():
        torch.manual_seed(0)
        return build_objective(cfg, n_classes).to(device)

    feeds: dict[str, tuple] = {}  # input -> (setup, iterator, meta)
    if not args.skip_plain:
        t0 = time.perf_counter()
        plain = standalone_setup(cfg, objective(), data, device, "workers", workers, SpeedPlan("fp32", False, False))
        feeds["plain"] = (plain, plain.loader.epoch(order, 1), "workers", time.perf_counter() - t0)

    t0 = time.perf_counter()
    steps = len(data) // args.batch
    probe_model = objective()
    plan = plan_speed(cfg.train, probe_model, device, bcfg.input_size, n_classes, steps * cfg.train.epochs)
    del probe_model
    chosen = choose_loader(cfg.data.loader, data, device)
    default = standalone_setup(cfg, objective(), data, device, chosen.name, workers, plan)
    plan_s = time.perf_counter() - t0
    print(f"{backbone}: default path: loader {chosen.name} ({chosen.reason}); {plan.describe()}", flush=True)
    feeds["default"] = (default, default.loader.epoch(order, 1), chosen.name, plan_s)
    ctx = LoaderCtx(data, cfg.data.augment, bcfg.pre.mean, bcfg.pre.std, device, 0, 0)
    x, y, idx = next(LOADERS.get("memory")(ctx).epoch(order[:1], 0)) if device.type == "cpu" else \
        next(LOADERS.get("device")(ctx).epoch(order[:1], 0))
    feeds["ceiling"] = (default, itertools.repeat((x, y, idx)), "resident", 0.0)
    for name in args.loaders:
        t0 = time.perf_counter()
        s = standalone_setup(cfg, default.plain, data, device, name, workers, SpeedPlan(plan.precision, False, False))
        s.channels_last = plan.channels_last
        feeds[name] = (s, s.loader.epoch(order, 1), name, time.perf_counter() - t0)

    # Row after row, not interleaved: a workers loader left waiting would have its queue
    # full when its turn came, and its first steps would look free.
    setup_s: dict[str, float] = {}
    rounds: dict[str, list[float]] = {}
    for name, (s, it, _, build_s) in feeds.items():
        t0 = time.perf_counter()
        train_one_epoch(s, 1, 0, itertools.islice(it, args.warmup))
        setup_s[name] = build_s + time.perf_counter() - t0
        rounds[name] = [train_one_epoch(s, 1, 0, itertools.islice(it, args.steps))[1]["images_per_s"]
                        for _ in range(args.rounds)]
        if hasattr(it, "close"):
            it.close()  # stops a workers loader's processes
        print(f"{backbone:<14}{name:<10}" + " ".join(f"{v:7.1f}" for v in rounds[name]) + " images/s", flush=True)
    rows = []
    for name, (s, _, loader, _) in feeds.items():
        rows.append(Row(backbone, name, loader, s.precision, s.channels_last, name != "plain" and plan.compile,
                        round(statistics.median(rounds[name]), 1), [round(v, 1) for v in rounds[name]],
                        round(setup_s[name], 1)))
    by = {r.input: r for r in rows}
    for r in rows:
        r.of_ceiling = round(r.images_per_s / by["ceiling"].images_per_s, 3)
        r.of_plain = round(r.images_per_s / by["plain"].images_per_s, 3) if "plain" in by else None
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", required=True, help="training pack (.fkpack)")
    p.add_argument("--backbones", nargs="+", default=["student5", "resnet27_c10"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=TrainConfig().train.epochs,
                   help="run length the default path plans for (compile: auto)")
    p.add_argument("--device", default=None)
    p.add_argument("--loaders", nargs="*", default=[], help="extra rows: these loaders with the default step")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: as facekd train)")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps per row (at least the workers' prefetch)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="steps per row per round")
    p.add_argument("--skip-plain", action="store_true",
                   help="no plain row")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_info().describe()
    print(f"{machine}; torch {torch.__version__}, {torch.get_num_threads()} threads; pack {args.pack}; "
          f"batch {args.batch}", flush=True)
    rows = [r for b in args.backbones for r in bench_backbone(args, b, device)]
    print(f"{'backbone':<14}{'input':<14}{'loader':<14}{'step':<28}{'images/s':>9}{'x plain':>9}{'of ceiling':>11}")
    for r in rows:
        step = f"{r.precision}{', channels_last' if r.channels_last else ''}{', compiled' if r.compile else ''}"
        x_plain = f"{r.of_plain:>9.2f}" if r.of_plain is not None else f"{'-':>9}"
        print(f"{r.backbone:<14}{r.input:<14}{r.loader:<14}{step:<28}{r.images_per_s:>9.1f}{x_plain}"
              f"{r.of_ceiling:>11.2f}")
    if args.json:
        info = {"machine": machine, "device": str(device), "torch": str(torch.__version__), "batch": args.batch,
                "threads": torch.get_num_threads(), "pack": str(args.pack)}
        atomic_write_json(args.json, [{**info, **asdict(r)} for r in rows])
    print(json.dumps({"rows": len(rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
