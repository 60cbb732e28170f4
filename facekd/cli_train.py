"""The ``facekd`` training commands: ``facekd train``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an embedder from identity labels (YAML config; torchrun for several GPUs)",
        description="Train a backbone with a classifier head from a YAML config. Launch with "
        "`torchrun --nproc_per_node N -m facekd.cli train ...` for several GPUs or processes.",
    )
    p.add_argument("config", type=Path, help="YAML config (see configs/)")
    p.add_argument("--out", type=Path, required=True, help="run folder: metrics.jsonl, checkpoints/, tb/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from facekd.config import load_config
    from facekd.train.config import TrainConfig
    from facekd.train.loop import CHECKPOINT, fit

    cfg = load_config(TrainConfig, args.config, args.overrides)
    metrics = fit(cfg, args.out, resume=args.resume)
    if "lfw_acc" in metrics:
        print(f"LFW (epoch {metrics.get('epoch')}): {metrics['lfw_acc']:.2f} ± {metrics['lfw_std']:.2f} %; "
              f"best {metrics['best_lfw_acc']:.2f} %")
    print(f"checkpoint: {args.out / CHECKPOINT}")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_train]
