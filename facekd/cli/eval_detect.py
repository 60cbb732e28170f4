"""``facekd eval detect``: face detectors on the CMU+MIT test set (recall, precision, AP,
landmark error, photos/s). Parses and prints; ``facekd.detect.cmumit`` reads the set, ``facekd.detect.scoring`` computes."""

from __future__ import annotations

import argparse
import os
import shlex
from datetime import datetime, timezone
from pathlib import Path

from facekd.detect.scoring import MATCH_DISTANCE, POINTS, CmuMitReport, DetectionScore
from facekd.errors import FacekdError
from facekd.progress import progress_bar

DEFAULT_DETECTORS = "mtcnn,yunet"
DATA_NAME = "cmu-mit-faces"  # under the data root


def add_eval_detect(evsub: argparse._SubParsersAction) -> None:
    """``facekd eval detect``, registered under ``facekd eval`` by the core CLI."""
    p = evsub.add_parser("detect", help="face detectors on CMU+MIT: recall, precision, AP, landmark error, photos/s")
    p.add_argument("--detectors", default=DEFAULT_DETECTORS,
                   help=f"registered detectors or detector .onnx files from facekd distill-detector, comma-separated "
                        f"(default {DEFAULT_DETECTORS})")
    p.add_argument("--data", type=Path, help=f"the CMU+MIT folder (default: DATA/{DATA_NAME})")
    p.add_argument("--device", default="cpu", help="device for detectors that use one (MTCNN; default cpu)")
    p.add_argument("--match-distance", type=float, default=MATCH_DISTANCE,
                   help="a detection matches a face when its eyes and nose lie on average within this many "
                        f"inter-ocular distances of the annotated ones (default {MATCH_DISTANCE})")
    p.add_argument("--json", type=Path, dest="json_out", help="write every figure, the machine and the command here")
    p.add_argument("--plot", type=Path, help="write the precision-recall curves (PNG) here")
    p.set_defaults(func=_run_eval_detect)


def _machine() -> dict:
    # heavy (torch): facekd.train.speed reads the CPU and torch's view of it
    from facekd.train.speed import cpu_info

    info = cpu_info()
    return {"cpu": info.model, "cores": info.cores, "torch_cpu_capability": info.capability,
            "bf16_flags": list(info.bf16_flags), "simd": list(info.simd), "load_average": [round(x, 2) for x in os.getloadavg()]}


def _command(args: argparse.Namespace, names: list[str]) -> str:
    """The command line that gives these figures (built from the parsed arguments, so it
    is right however the command was called)."""
    parts = ["facekd", "eval", "detect", "--detectors", ",".join(names)]
    if args.data is not None:
        parts += ["--data", str(args.data)]
    if args.device != "cpu":
        parts += ["--device", args.device]
    if args.match_distance != MATCH_DISTANCE:
        parts += ["--match-distance", f"{args.match_distance:g}"]
    if args.json_out:
        parts += ["--json", str(args.json_out)]
    if args.plot:
        parts += ["--plot", str(args.plot)]
    return shlex.join(parts)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _table(scores: list[DetectionScore]) -> str:
    lines = [f"{'detector':<12} {'min score':>9} {'recall %':>8} {'precision %':>11} {'AP %':>6} {'NME %':>6} "
             f"{'photos/s':>8}"]
    for s in scores:
        lines.append(
            f"{s.detector:<12} {s.min_score:>9.2f} {100 * s.recall:>8.1f} {100 * s.precision:>11.1f} "
            f"{100 * s.ap:>6.1f} {_fmt(None if s.nme is None else 100 * s.nme, '>6.2f')} "
            f"{_fmt(s.photos_per_second, '>8.2f')}"
        )
    return "\n".join(lines)


def _label(name: str) -> str:
    """A detector's name in the table and plot: a registered name as it is, a trained
    detector's file by the last three parts of its path (``runs/RUN/detector.onnx``)."""
    from facekd.align.detector import is_detector_file

    if not is_detector_file(name):
        return name
    return "/".join(Path(name).parts[-3:])


def _run_eval_detect(args: argparse.Namespace) -> int:
    from facekd.align.detector import build_detector
    from facekd.detect.cmumit import face_sizes, read_cmumit
    from facekd.detect.scoring import evaluate_detector
    from facekd.paths import data_root

    names = [n.strip() for n in args.detectors.split(",") if n.strip()]
    if not names:
        raise FacekdError("--detectors: name at least one detector")
    if args.match_distance <= 0:
        raise FacekdError(f"--match-distance must be positive, got {args.match_distance}")
    root = args.data if args.data is not None else data_root() / DATA_NAME
    data = read_cmumit(root)
    sizes = face_sizes(data)
    pct = sizes["iod_px_percentiles"]
    print(f"{root}: {len(data.photos)} photos, {data.faces} annotated faces; inter-ocular distance "
          f"min {pct['p0']:.0f}, median {pct['p50']:.0f}, 95th percentile {pct['p95']:.0f} px")
    scores = []
    for name in names:
        detector = build_detector(name, device=args.device)  # as facekd align builds it
        label = _label(name)
        scores.append(evaluate_detector(detector, data, label, args.match_distance, progress=progress_bar(label)))
    print(_table(scores))
    print(f"a detection matches a face within {args.match_distance:g} x its inter-ocular distance (eyes and nose); "
          "NME: landmark error over the inter-ocular distance; photos/s: detection only")
    for s in scores:
        if s.nme_per_point is not None:
            print(f"{s.detector} NME by point: " + ", ".join(f"{p} {100 * e:.2f}%" for p, e in zip(POINTS, s.nme_per_point)))
    header = "recall by inter-ocular distance (px): " + "  ".join(
        f"[{b.low:g}, {'' if b.high == float('inf') else f'{b.high:g}'}) {b.faces} faces" for b in scores[0].by_size)
    print(header)
    for s in scores:
        print(f"  {s.detector:<12} " + "  ".join(_fmt(None if b.recall is None else 100 * b.recall, '>5.1f') + "%"
                                                 for b in s.by_size))
    machine = _machine()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, "
          + (", ".join(machine["bf16_flags"]) or "no avx512_bf16/amx_bf16")
          + f"; load average {machine['load_average'][0]:.2f}")
    if args.json_out:
        report = CmuMitReport(
            data=str(root), command=_command(args, names), machine=machine,
            date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), scores=tuple(scores), face_sizes=sizes,
        )
        report.write(args.json_out)
        print(f"results: {args.json_out}")
    if args.plot:
        from facekd.evaluation.plots import plot_precision_recall

        curves = {f"{s.detector}: AP {100 * s.ap:.1f}%": (s.curve_recall, s.curve_precision) for s in scores}
        plot_precision_recall(curves, args.plot)
        print(f"precision-recall plot: {args.plot}")
    return 0
