"""The ``facekd`` deployment commands: ``facekd export``, ``embed``, ``verify``, ``bench``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from facekd.errors import FacekdError

# --- export ----------------------------------------------------------------------------


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a backbone to ONNX (checked against PyTorch), optionally INT8")
    p.add_argument("checkpoint", nargs="?", help="facekd checkpoint (or use --model NAME --weights FILE)")
    p.add_argument("--model", help="registered backbone name (or a checkpoint)")
    p.add_argument("--weights", help="weights file or manifest name for --model NAME")
    p.add_argument("--onnx", type=Path, required=True, help="output .onnx (the INT8 model with --int8)")
    p.add_argument("--int8", choices=["static", "dynamic"], help="quantize; the FP32 model is kept as OUT.fp32.onnx")
    p.add_argument("--calib", type=Path, help="aligned face crops (folder or .fkpack): INT8 calibration and parity faces")
    p.add_argument("--lfw", type=Path,
                   help="LFW (folder with pairs.txt or pack) to choose and store the verify threshold on "
                        "(default: $FACEKD_DATA/lfw when it exists)")
    p.add_argument("--no-threshold", action="store_true", help="store no verify threshold, even where LFW is found")
    p.add_argument("--normalize", choices=["auto", "yes", "no"], default="auto",
                   help="L2-normalise the embedding in the graph (auto: unless the model's recipe subtracts a mean)")
    p.add_argument("--no-optimize", action="store_true", help="keep PReLU etc. as exported (no graph rewrites)")
    p.add_argument("--json", type=Path, dest="json_out", help="write the export report here")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from facekd.deploy.export import ExportRequest, run_export
    from facekd.io_utils import atomic_write_json

    from facekd.deploy.threshold import add_threshold_command, find_lfw

    if bool(args.checkpoint) == bool(args.model):
        raise FacekdError("give either a checkpoint or --model NAME (with --weights FILE)")
    if args.no_threshold and args.lfw:
        raise FacekdError("give --lfw or --no-threshold, not both")
    lfw = None if args.no_threshold else find_lfw(args.lfw)
    if lfw is not None and args.lfw is None:
        print(f"LFW found at {lfw}: the verify threshold will be chosen on it and stored (--no-threshold skips this)")
    req = ExportRequest(
        model=args.checkpoint or args.model, weights=args.weights, onnx=args.onnx, int8=args.int8,
        calib=args.calib, lfw=lfw, normalize=args.normalize, optimize=not args.no_optimize,
    )
    report = run_export(req)
    if lfw is None:
        why = "--no-threshold" if args.no_threshold else "no LFW found (--lfw, or $FACEKD_DATA/lfw with pairs.txt)"
        print(f"no verify threshold stored ({why}); to add one: {add_threshold_command(report['onnx'])}")
    if args.json_out:
        atomic_write_json(args.json_out, report)
        print(f"report: {args.json_out}")
    return 0


def _add_threshold(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("threshold", help="choose the verify threshold on LFW and store it in an exported .onnx")
    p.add_argument("model", type=Path, help="exported .onnx")
    p.add_argument("--lfw", type=Path, help="LFW folder with pairs.txt (raw or aligned) or pack (default: $FACEKD_DATA/lfw)")
    p.set_defaults(func=_run_threshold)


def _run_threshold(args: argparse.Namespace) -> int:
    from facekd.deploy.threshold import choose_threshold, find_lfw, store_threshold
    from facekd.progress import progress_bar

    if not str(args.model).lower().endswith(".onnx") or not args.model.is_file():
        raise FacekdError(f"{args.model}: not an exported .onnx file")
    lfw = find_lfw(args.lfw)
    if lfw is None:
        raise FacekdError("no LFW found: pass --lfw FOLDER (with pairs.txt) or set FACEKD_DATA")
    choice = choose_threshold(args.model, lfw, progress=progress_bar("embed"))
    store_threshold(args.model, choice)
    print(
        f"threshold {choice.threshold:.4f} (cosine; right on {choice.accuracy_all_pairs:.2f}% of the {choice.pairs} "
        f"LFW pairs; 10-fold {choice.accuracy_10fold:.2f} ± {choice.std_10fold:.2f}%) stored in {args.model}"
    )
    return 0


# --- embed / verify --------------------------------------------------------------------


def _add_photo_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="exported .onnx (or a registered name / checkpoint)")
    p.add_argument("--weights", help="weights for a registered backbone name")
    p.add_argument("--device", default="cpu", help="MTCNN / PyTorch device (default cpu)")
    p.add_argument("--detector", default="yunet,mtcnn",
                   help="face detectors tried in order per photo (default yunet,mtcnn: MTCNN only where YuNet finds no face)")


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="detect, align and embed face photos with a model")
    p.add_argument("photos", nargs="+", type=Path, help="photos, one face each (the most central is used)")
    _add_photo_model_args(p)
    p.add_argument("--out", type=Path, help="write the (N, D) L2-normalised embeddings here (.npy), in argument order")
    p.set_defaults(func=_run_embed)


def _align_all(paths: list[Path], template: str, detector: str, device: str):
    """Aligned faces for every photo; every unusable photo reported before failing."""
    from facekd.deploy.photos import DetectorChain, PhotoError, align_photo

    chain = DetectorChain.parse(detector, device=device)
    faces, errors = [], []
    for p in paths:
        try:
            faces.append(align_photo(p, chain, template))
        except PhotoError as exc:
            errors.append(exc)
    return faces, errors


def _warn_several(faces) -> None:
    for f in faces:
        if f.faces > 1:
            print(f"note: {f.photo}: {f.faces} faces found; used the most central one", file=sys.stderr)


def _run_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from facekd.deploy.photos import embed_faces
    from facekd.io_utils import atomic_open
    from facekd.hub import load_embedder

    embedder = load_embedder(args.model, args.weights, device=args.device)
    faces, errors = _align_all(args.photos, embedder.pre.template, args.detector, args.device)
    if errors:
        for e in errors[:-1]:
            print(f"facekd: error: {e}", file=sys.stderr)
        raise errors[-1]
    _warn_several(faces)
    emb = embed_faces(embedder, faces)
    for f, e in zip(faces, emb):
        several = f", 1 of {f.faces} faces" if f.faces > 1 else ""
        print(f"{f.photo}: {len(e)}-d embedding (face found by {f.detector}, score {f.score:.3f}{several})")
    if args.out:
        with atomic_open(args.out) as fh:
            np.save(fh, emb)
        print(f"embeddings: {args.out} ({emb.shape[0]} x {emb.shape[1]}, float32, L2-normalised)")
    return 0


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="same person or not? two photos, cosine against the model's LFW threshold")
    p.add_argument("photo_a", type=Path)
    p.add_argument("photo_b", type=Path)
    _add_photo_model_args(p)
    p.add_argument("--threshold", type=float, help="cosine threshold (default: the one stored in the .onnx)")
    p.add_argument("--json", type=Path, dest="json_out", help="write similarity, threshold, same (or error) here")
    p.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from facekd.deploy.photos import stored_threshold, verify_photos
    from facekd.deploy.threshold import add_threshold_command
    from facekd.io_utils import atomic_write_json
    from facekd.hub import load_embedder

    def fail(exc: FacekdError) -> int:
        if args.json_out:
            atomic_write_json(args.json_out, {"error": str(exc), "photo": getattr(exc, "photo", None)})
        raise exc

    try:
        embedder = load_embedder(args.model, args.weights, device=args.device)
        threshold = args.threshold
        if threshold is None and str(args.model).lower().endswith(".onnx"):
            threshold = stored_threshold(args.model)
        if threshold is None:
            raise FacekdError(
                f"{args.model}: no verification threshold stored; add one with `{add_threshold_command(args.model)}` "
                "or pass --threshold"
            )
        faces, errors = _align_all([args.photo_a, args.photo_b], embedder.pre.template, args.detector, args.device)
        if errors:
            for e in errors[:-1]:
                print(f"facekd: error: {e}", file=sys.stderr)
            raise errors[-1]
    except FacekdError as exc:
        return fail(exc)
    _warn_several(faces)
    for f in faces:
        print(f"{f.photo}: face found by {f.detector} (score {f.score:.3f})")
    v = verify_photos(embedder, faces[0], faces[1], threshold)
    verdict = "same person" if v.same else "different people"
    print(f"{verdict}: cosine similarity {v.similarity:.4f} {'>=' if v.same else '<'} threshold {v.threshold:.4f}")
    if args.json_out:
        atomic_write_json(args.json_out, v.to_dict() | {"photos": [str(args.photo_a), str(args.photo_b)]})
    return 0


# --- bench -----------------------------------------------------------------------------


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="parameters, size, MACs and CPU/GPU latency of models side by side")
    p.add_argument("models", nargs="*", help="registered names (random weights) or facekd checkpoints")
    p.add_argument("--json", type=Path, dest="json_out", help="write the rows here")
    p.add_argument("--from", type=Path, dest="from_json", help="render an earlier --json instead of measuring")
    p.add_argument("--markdown", type=Path, help="write the Markdown table here (it is printed too)")
    p.add_argument("--accuracy", type=Path, help="JSON of LFW accuracies by name, for --plot")
    p.add_argument("--plot", type=Path, help="PNG: LFW accuracy against ORT FP32 1-thread latency (needs --accuracy)")
    p.add_argument("--int8", choices=["static", "dynamic", "none"], default="static", help="INT8 mode to measure")
    p.add_argument("--calib", type=Path, help="aligned crops to calibrate INT8 and feed the models (default: random)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds at batch 1 (default 10)")
    p.add_argument("--rounds-b64", type=int, default=3, help="rounds at batch 64 (default 3)")
    p.add_argument("--teacher", default="resnet27", help="row the speed-up column compares with")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from facekd.deploy.bench import (
        BenchOptions, bench_model, markdown_table, plot_accuracy_latency, read_accuracies, teacher_ratios,
    )
    from facekd.io_utils import atomic_write_bytes, atomic_write_json

    if args.plot and not args.accuracy:
        raise FacekdError("--plot needs --accuracy FILE (LFW accuracies by model name)")
    if args.from_json:
        if args.models:
            raise FacekdError("give models to measure or --from FILE, not both")
        rows = json.loads(args.from_json.read_text())
    else:
        if not args.models:
            raise FacekdError("name at least one model to benchmark (see `facekd models`)")
        opts = BenchOptions(
            rounds=args.rounds, rounds_b64=args.rounds_b64, int8=None if args.int8 == "none" else args.int8,
            calib=args.calib,
        )
        log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731 - progress on stderr, table on stdout
        rows = [bench_model(m, opts, log=log).to_dict() for m in args.models]
        if args.json_out:
            atomic_write_json(args.json_out, rows)
    table = markdown_table(rows, teacher=args.teacher)
    print(table)
    for name, x in teacher_ratios(rows, args.teacher).items():
        print(f"{name}: {x:.1f}x faster than {args.teacher} (ONNX Runtime FP32, 1 thread, batch 1)")
    for r in rows:
        if r.get("int8_note"):
            print(f"{r['name']}: no INT8 model: {r['int8_note']}")
    if args.markdown:
        atomic_write_bytes(args.markdown, (table + "\n").encode())
    if args.json_out and not args.from_json:
        print(f"rows: {args.json_out}")
    if args.plot:
        plot_accuracy_latency(rows, read_accuracies(args.accuracy), args.plot)
        print(f"plot: {args.plot}")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_export, _add_threshold, _add_embed, _add_verify, _add_bench,
]
