"""The ``facekd`` command line. Library code does the work; this file parses and prints."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from facekd.cli import eval_detect as cli_eval_detect, identify as cli_identify
from facekd.cli.args import detector_arg, detector_help
from facekd.errors import FacekdError
from facekd.progress import progress_bar

Handler = Callable[[argparse.Namespace], int]


# --- align ---------------------------------------------------------------------------


def _add_align(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("align", help="detect and align every face photo under SRC into DST")
    p.add_argument("src", type=Path, help="folder of photos (any layout, e.g. ROOT/<identity>/<image>.jpg)")
    p.add_argument("dst", type=Path, help="output folder; mirrors SRC's layout")
    p.add_argument("--template", default="112x96", choices=["112x96", "112x112"])
    p.add_argument("--detector", default="mtcnn", type=detector_arg,
                   help=detector_help("mtcnn", "yunet is several times faster on a CPU"))
    p.add_argument("--workers", type=int, default=0, help="processes (default: every core)")
    p.add_argument("--device", default="cpu", help="MTCNN device (cpu, cuda)")
    p.add_argument("--min-face-size", type=int, default=20, help="smallest face the detector looks for, pixels")
    p.set_defaults(func=_run_align)


def _run_align(args: argparse.Namespace) -> int:
    from facekd.align.folder import REPORT_NAME, AlignOptions, align_folder

    opts = AlignOptions(
        template=args.template, detector=args.detector, workers=args.workers, device=args.device,
        min_face_size=args.min_face_size,
    )
    report = align_folder(args.src, args.dst, opts, progress=progress_bar("align"))
    rate = report.images_per_second
    print(
        f"{report.images} images ({report.detector}): {report.aligned} aligned, "
        f"{report.fallback} central-box fallbacks, "
        f"{len(report.unreadable)} unreadable ({report.resumed} done earlier)"
        + (f"; {rate:.1f} images/s on {report.workers} workers" if rate else "")
    )
    for u in report.unreadable[:20]:
        print(f"  unreadable: {u.file}: {u.reason}")
    if len(report.unreadable) > 20:
        print(f"  ... and {len(report.unreadable) - 20} more")
    print(f"report: {Path(report.dst) / REPORT_NAME}")
    return 0


# --- eval lfw --------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered backbone name, facekd checkpoint, or .onnx file")
    p.add_argument("--weights", help="weights file (or manifest name) for a registered backbone")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate an embedder (lfw, lfw-ident) or face detectors (detect)")
    evsub = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    lfw = evsub.add_parser("lfw", help="LFW View 2 verification (10-fold cosine accuracy, AUC, TAR@FAR, EER)")
    _add_model_args(lfw)
    lfw.add_argument("--data", type=Path, help="LFW: a folder with pairs.txt (raw photos or aligned crops), a pack (.fkpack) or an insightface .bin (default: DATA/lfw)")
    lfw.add_argument("--flip", action="store_true", help="add the mirror image's embedding (the model's fusion rule)")
    lfw.add_argument("--aligned", action="store_true", help="treat the images as aligned crops (default: by size)")
    lfw.add_argument("--detector", default="mtcnn", type=detector_arg,
                     help="detector that aligns raw photos into the cache first: " + detector_help("mtcnn"))
    lfw.add_argument("--batch-size", type=int, help="images per batch (default: what suits the device)")
    lfw.add_argument("--json", type=Path, dest="json_out", help="write the results here")
    lfw.add_argument("--plot", type=Path, help="write a ROC plot (PNG) here")
    lfw.add_argument("--exit", type=int, dest="exit_k", help="multi-exit model: answer with exit K (1 = earliest)")
    lfw.set_defaults(func=_run_eval_lfw)
    cli_identify.add_eval_lfw_ident(evsub)
    cli_eval_detect.add_eval_detect(evsub)


def _lfw_data(arg: Path | None) -> Path:
    from facekd.data.fetch import ensure_lfw
    from facekd.paths import data_root

    if arg is not None:
        return arg
    return ensure_lfw(data_root(), progress=progress_bar("download LFW"))


def _run_eval_lfw(args: argparse.Namespace) -> int:
    from facekd.evaluation.pairs import evaluate_pairs
    from facekd.io_utils import atomic_write_json
    from facekd.models.exits import select_exit
    from facekd.hub import resolve

    resolved = resolve(args.model, args.weights)
    if args.exit_k is not None:
        select_exit(resolved.require_backbone("--exit"), args.exit_k)
        resolved.name += f" exit {args.exit_k}"
    embedder = resolved.embedder(args.device)
    data = _lfw_data(args.data)
    ev = evaluate_pairs(
        embedder,
        data,
        flip=args.flip,
        aligned=True if args.aligned else None,
        batch_size=args.batch_size,
        align_progress=progress_bar("align"),
        embed_progress=progress_bar("embed"),
        detector=args.detector,
    )
    recipe = []
    if args.flip:
        recipe.append(f"flip ({ev.flip_fusion})")
    if ev.subtract_fold_mean:
        recipe.append("training-fold mean subtracted")
    print(f"{embedder.name} on {ev.protocol}" + (f"; {', '.join(recipe)}" if recipe else ""))
    print(ev.summary("flip" if args.flip else "plain"))
    print("folds: " + " ".join(f"{a:.2f}" for a in ev.result.to_dict()["folds"]))
    if ev.fallback_images:
        print(f"note: {ev.fallback_images} pair images had no detected face and used the central box")
    print(
        f"embedded {ev.images} images in {ev.embed_seconds:.1f} s "
        f"({ev.images / max(ev.embed_seconds, 1e-9):.0f} images/s); total {ev.seconds:.1f} s"
    )
    if args.json_out:
        atomic_write_json(args.json_out, ev.to_dict())
        print(f"results: {args.json_out}")
    if args.plot:
        from facekd.evaluation.plots import plot_roc

        plot_roc({f"{embedder.name}{' +flip' if args.flip else ''}": ev.result}, args.plot)
        print(f"ROC plot: {args.plot}")
    return 0


# --- pack ------------------------------------------------------------------------------


def _add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pack", help="pack aligned crops (identity folders, or one LFW folder) into one file; "
                       "also a teacher's own crops (eval/teacher_crops.py)")
    p.add_argument("src", type=Path, nargs="+", help="aligned identity folders, merged by identity name")
    p.add_argument("--out", type=Path, required=True, help="pack file to write (.fkpack)")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality to re-encode at (default 85); 0 keeps the bytes")
    p.add_argument("--pairs-only", action="store_true", help="LFW: keep only the images pairs.txt uses")
    p.set_defaults(func=_run_pack)


def _run_pack(args: argparse.Namespace) -> int:
    import facekd.teachers.crops  # noqa: F401  registers the teachers' crop sizes (facenet160, dlib150) as templates
    from facekd.data.pack import build_pack

    header = build_pack(
        args.src, args.out, quality=args.quality or None, pairs_only=args.pairs_only, progress=progress_bar("pack")
    )
    size = args.out.stat().st_size
    print(
        f"{args.out}: {header['count']} crops of {len(header['identities'])} identities, template "
        f"{header['template']}, {size / 2**20:.1f} MiB ({size / max(header['count'], 1) / 1024:.1f} KiB per crop)"
        + ("; holds pairs.txt" if "pairs_txt" in header["meta"] else "")
    )
    return 0


# --- models ----------------------------------------------------------------------------


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered backbones with their size and cost, the shipped "
                       "students and the face detectors")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from facekd.align.detector import DETECTORS
    from facekd.models import BACKBONES
    from facekd.hub import MODEL_SOURCES
    from facekd.models.profile import summarize
    from facekd.weights import default_weights_for, manifest, onnx_models, provenance

    rows = [summarize(name) for name in BACKBONES.names()]
    sources = [{"name": n, "doc": MODEL_SOURCES.doc(n)} for n in MODEL_SOURCES.names()]
    for r in rows + sources:  # where published weights come from, and their licence
        w = default_weights_for(r["name"])
        r["weights"], r["provenance"] = (w, provenance(w)) if w else (None, None)
    detectors = [{"name": n, "kind": "face_detector", "doc": DETECTORS.doc(n)} for n in DETECTORS.names()]
    entries = manifest()
    students = [{"name": n, "kind": "shipped_student", "architecture": e["architecture"], "teacher": e["teacher"]["model"],
                 "lfw_flip": e["lfw"]["flip"], "speedup": e["measured"]["speedup"], "file": f"weights/{e['shipped']}",
                 "reproduce": e.get("reproduce"), "licence": e.get("licence")}
                for n, e in ((n, entries[n]) for n in onnx_models())]
    if args.json:
        print(json.dumps(rows + sources + students + detectors, indent=2))
        return 0
    print(f"{'name':<22}{'params':>12}{'GMAC':>8}  {'input':<9}{'emb':>5}  description")
    for r in rows:
        size = "x".join(map(str, r["input_size"]))
        print(f"{r['name']:<22}{r['params'] / 1e6:>10.2f} M{r['macs'] / 1e9:>8.3f}  {size:<9}{r['embedding_dim']:>5}  {r['doc']}")
    for r in sources:
        print(f"{r['name']:<22}{'(external embedder)':>30}  {r['doc']}")
    print("\nPublished weights:")
    for r in rows + sources:
        if r["weights"]:
            print(f"  {r['name']:<20} {r['weights']}: {r['provenance']}")
    print("\nStudents facekd ships (ONNX; --model NAME):")
    w = max((len(r["name"]) for r in students), default=20)
    for r in students:
        print(f"  {r['name']:<{w}} {r['architecture']} from {r['teacher']}, LFW {r['lfw_flip']:.2f}% flip, "
              f"{r['speedup']:.1f}x faster than the teacher: {r['file']}")
    if students:
        print("  (the command that made each: \"reproduce\" in facekd models --json or weights/manifest.json)")
    print("\nFace detectors (facekd align --detector NAME; facekd eval detect --detectors NAME,...):")
    for r in detectors:
        print(f"  {r['name']:<20} {r['doc']}")
    return 0


# --- registry of sub-commands --------------------------------------------------------

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_align, _add_eval, _add_pack, _add_models]


def _all_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Core commands here; the demo, training and deployment commands live in their own modules."""
    from facekd.cli import compress as cli_compress, demo as cli_demo, deploy as cli_deploy, train as cli_train
    from facekd.cli import board as cli_board, detect as cli_detect, serve as cli_serve

    return [cli_demo.add_demo, *_COMMANDS, *cli_train.COMMANDS, *cli_deploy.COMMANDS, *cli_compress.COMMANDS,
            *cli_serve.COMMANDS, *cli_identify.COMMANDS, *cli_board.COMMANDS, *cli_detect.COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facekd", description="Knowledge distillation for compact face-recognition models."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _all_commands():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("facekd: interrupted; finished work is kept, run the same command again to resume", file=sys.stderr)
        return 130
    except FacekdError as exc:
        if args.debug:
            raise
        print(f"facekd: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, not a traceback
        if args.debug:
            raise
        print(f"facekd: error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
