"""``facekd board``: every ready model and every facekd model on one accuracy–latency
board, measured in one run on this CPU (:mod:`facekd.experiments.board`)."""

from __future__ import annotations

import argparse
from pathlib import Path



def add_board(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "board",
        help="LFW and ONNX Runtime latency of every ready and shipped model (and yours), the front plotted",
        description="Measures, in one run on this CPU: LFW View 2 plain and flip on the same crops, TAR@FAR=1e-3, "
        "parameters, MACs, ONNX Runtime FP32 and INT8 ms per face (batch 1, one thread, interleaved rounds, "
        "medians) of MobileFaceNet, FaceNet-CASIA, dlib's ResNet, their ensemble, every student facekd ships, "
        "and the MODELs given; writes a JSON file and a plot with the accuracy-latency front.",
    )
    p.add_argument("models", nargs="*", help="more models: facekd checkpoints or .onnx files (NAME=PATH to name a row)")
    p.add_argument("--lfw", type=Path, help="LFW with pairs.txt: raw photos (aligned into the cache), aligned crops "
                   "or a pack (default: DATA/lfw)")
    p.add_argument("--calib", type=Path, action="append", help="aligned training faces (folder or .fkpack) to "
                   "calibrate the INT8 forms on; repeat it for crops of other templates (e.g. a facenet160 pack for "
                   "FaceNet-CASIA): each model uses the first whose crops convert to its own; without it the ready "
                   "models are timed in FP32 only")
    p.add_argument("--detector", default="mtcnn", help="detector that aligns raw LFW photos (default mtcnn)")
    p.add_argument("--no-ready", action="store_true", help="leave the ready models out")
    p.add_argument("--no-shipped", action="store_true", help="leave facekd's shipped students out")
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (default 15)")
    p.add_argument("--work", type=Path, default=Path("facekd-board"),
                   help="folder for the exported ONNX files and each form's LFW figures, reused by a later run "
                   "of the same models")
    p.add_argument("--json", type=Path, dest="json_out", default=Path("facekd-board/board.json"))
    p.add_argument("--plot", type=Path, default=Path("facekd-board/board.png"))
    p.set_defaults(func=_run_board)


def _specs(args: argparse.Namespace):
    from facekd.experiments.board import BoardSpec, ready_specs, shipped_specs

    specs = [] if args.no_ready else ready_specs()
    specs += [] if args.no_shipped else shipped_specs()
    for m in args.models:
        name, _, path = m.rpartition("=") if "=" in m else (Path(m).stem, "", m)
        specs.append(BoardSpec(name, path, kind="facekd"))
    return specs


def _run_board(args: argparse.Namespace) -> int:
    from facekd.errors import FacekdError
    from facekd.experiments.board import run_board
    from facekd.experiments.board_view import board_lines, plot_board
    from facekd.io_utils import atomic_write_json
    from facekd.paths import data_root

    if args.rounds < 1:
        raise FacekdError(f"--rounds must be at least 1, got {args.rounds}")
    lfw = args.lfw or data_root() / "lfw"
    board = run_board(_specs(args), lfw, work=args.work, calib=args.calib, detector=args.detector,
                      rounds=args.rounds)
    for line in board_lines(board):
        print(line)
    atomic_write_json(args.json_out, board.to_dict())
    plot_board(board, args.plot)
    print(f"wrote {args.json_out} and {args.plot}")
    return 0


COMMANDS = [add_board]
