"""The ``facekd`` training commands: ``facekd train`` and ``facekd distill``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def add_run_args(p: argparse.ArgumentParser, configs: str = "configs/", example: str = "optim.lr=0.05",
                 writes: str = "metrics.jsonl, checkpoints/, tb/") -> None:
    """The arguments of every command that runs a config into a run folder (``writes``: what
    the command puts there, for ``--out``'s help)."""
    p.add_argument("config", type=Path, help=f"YAML config (see {configs})")
    p.add_argument("--out", type=Path, required=True, help=f"run folder: {writes}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. --set {example} (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an embedder from identity labels (YAML config; torchrun for several GPUs)",
        description="Train a backbone with a classifier head from a YAML config. Launch with "
        "`torchrun --nproc_per_node N -m facekd.cli train ...` for several GPUs or processes.",
    )
    add_run_args(p)
    p.set_defaults(func=_run_train)


def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="train a student from a teacher (hard/soft/feature/featurenorm terms, teacher weighting)",
        description="Distil a teacher (facekd checkpoint, registered backbone + weights, or .onnx) into a "
        "student. Same run folder, checkpoints, --resume and torchrun support as `facekd train`; each "
        "named loss term is logged in metrics.jsonl.",
    )
    add_run_args(p)
    p.set_defaults(func=_run_distill)


def _run_train(args: argparse.Namespace) -> int:
    from facekd.config import load_config
    from facekd.train.config import TrainConfig
    from facekd.train.loop import fit

    cfg = load_config(TrainConfig, args.config, args.overrides)
    return report_run(fit(cfg, args.out, resume=args.resume), args.out)


def _run_distill(args: argparse.Namespace) -> int:
    from facekd.config import load_config
    from facekd.distill.config import DistillConfig
    from facekd.distill.objective import make_distill_objective
    from facekd.train.loop import fit

    cfg = load_config(DistillConfig, args.config, args.overrides)
    return report_run(fit(cfg, args.out, resume=args.resume, make_objective=make_distill_objective), args.out)


def report_run(metrics: dict, out: Path) -> int:
    from facekd.train.checkpoint import CHECKPOINT

    if "lfw_acc" in metrics:
        print(f"LFW (epoch {metrics.get('epoch')}): {metrics['lfw_acc']:.2f} ± {metrics['lfw_std']:.2f} %; "
              f"best epoch {metrics['best_lfw_acc']:.2f} % (picked on LFW itself: quote the last epoch's)")
    print(f"checkpoint: {out / CHECKPOINT}")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_train, _add_distill]
