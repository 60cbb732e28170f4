"""``facekd distill-detector``: train a student face detector from YuNet and MTCNN (SPEC 4a)."""

from __future__ import annotations

import argparse

from facekd.cli.train import add_run_args


def _add_distill_detector(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill-detector",
        help="train a small face detector from YuNet's maps and MTCNN's detections (SPEC 4a terms)",
        description="Train a single-shot student detector (model: fkdet_s | fkdet_m) on mosaic frames of "
        "the data root's photos, labelled by a teacher's final detections (data.labeller, default mtcnn), "
        "with the detection terms of SPEC 4a (terms: hard, weighted_soft_ce, bounded_reg, hint, "
        "objectness_scaled; fm_nms: true) from YuNet's maps. Writes RUN/checkpoints/last.pt after every "
        "epoch (--resume continues), RUN/history.jsonl and RUN/detector.onnx, which "
        "`facekd align --detector RUN/detector.onnx` runs.",
    )
    add_run_args(p, "configs/detect/", "train.epochs=5",
                 writes="history.jsonl, checkpoints/last.pt, detector.onnx, record.json")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from facekd.config import load_config
    from facekd.detect.config import DetectorRunCfg, check_config
    from facekd.detect.train import train_detector
    from facekd.errors import FacekdError

    cfg = load_config(DetectorRunCfg, args.config, args.overrides)
    try:
        check_config(cfg)
    except FacekdError as exc:
        raise FacekdError(f"{args.config}: {exc}") from None
    onnx_path = train_detector(cfg, args.out, resume=args.resume)
    print(f"detector: {onnx_path} (facekd align SRC DST --detector {onnx_path})")
    return 0


COMMANDS = [_add_distill_detector]
