"""The ``facekd`` training commands: ``facekd train`` and ``facekd distill``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML config (see configs/)")
    p.add_argument("--out", type=Path, required=True, help="run folder: metrics.jsonl, checkpoints/, tb/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an embedder from identity labels (YAML config; torchrun for several GPUs)",
        description="Train a backbone with a classifier head from a YAML config. Launch with "
        "`torchrun --nproc_per_node N -m facekd.cli train ...` for several GPUs or processes.",
    )
    _run_args(p)
    p.set_defaults(func=_run_train)


def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="train a student from a teacher (hard/soft/feature/featurenorm terms, teacher weighting)",
        description="Distil a teacher (facekd checkpoint, registered backbone + weights, or .onnx) into a "
        "student. Same run folder, checkpoints, --resume and torchrun support as `facekd train`; each "
        "named loss term is logged in metrics.jsonl.",
    )
    _run_args(p)
    p.set_defaults(func=_run_distill)


def _run_train(args: argparse.Namespace) -> int:
    from facekd.config import load_config
    from facekd.train.config import TrainConfig
    from facekd.train.loop import fit

    cfg = load_config(TrainConfig, args.config, args.overrides)
    return _report(fit(cfg, args.out, resume=args.resume), args.out)


def _run_distill(args: argparse.Namespace) -> int:
    from facekd.config import load_config
    from facekd.distill.config import DistillConfig
    from facekd.distill.objective import make_distill_objective
    from facekd.train.loop import fit

    cfg = load_config(DistillConfig, args.config, args.overrides)
    return _report(fit(cfg, args.out, resume=args.resume, make_objective=make_distill_objective), args.out)


def _report(metrics: dict, out: Path) -> int:
    from facekd.train.checkpoint import CHECKPOINT

    if "lfw_acc" in metrics:
        print(f"LFW (epoch {metrics.get('epoch')}): {metrics['lfw_acc']:.2f} ± {metrics['lfw_std']:.2f} %; "
              f"best {metrics['best_lfw_acc']:.2f} %")
    print(f"checkpoint: {out / CHECKPOINT}")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_train, _add_distill]
