"""``facekd demo``: LFW through the reference MobileFaceNet, each student facekd ships
beside the teacher it was distilled from, and (``--distill``) a short distillation run
on this machine's CPU with the same comparison."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from facekd.cli.args import detector_arg, detector_help
from facekd.progress import progress_bar


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="fetch LFW and the reference model, align, evaluate; the shipped student beside its teacher",
        description="Aligns LFW, evaluates the reference MobileFaceNet and each student facekd ships "
        "(weights/manifest.json) and prints accuracy, size and ONNX Runtime latency beside the teacher. "
        "--distill also distils a student5 from MobileFaceNet on the facekd-dev photos in the data root "
        "(celeba-10k, celeba-wild), about 15 minutes on 2 CPU cores, and adds it to the comparison.",
    )
    p.add_argument("--data", type=Path, help="data root holding lfw/ (default: $FACEKD_DATA, else the cache)")
    p.add_argument("--weights", help="MobileFaceNet weights file (default: manifest, $FACEKD_WEIGHTS, download)")
    p.add_argument("--out", type=Path, default=Path("facekd-demo"), help="folder for results, models and plots")
    p.add_argument("--detector", default="yunet", type=detector_arg,
                   help="for LFW; " + detector_help("yunet", "about 5x faster on a CPU than mtcnn, the reference "
                                                    "alignment, 0.1 points higher for MobileFaceNet"))
    p.add_argument("--distill", action="store_true",
                   help="also distil student5 from MobileFaceNet here (needs celeba-10k and celeba-wild in the data root)")
    p.add_argument("--distill-epochs", type=int, default=1, help="epochs of the --distill run (default 1)")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from facekd.data.fetch import ensure_lfw
    from facekd.experiments.compare import ComparedModel, compare, evaluate_lfw, print_comparison, write_outputs
    from facekd.hub import resolve
    from facekd.paths import data_root

    started = time.perf_counter()
    root = data_root(args.data)
    print(f"data root: {root}")
    if args.distill:
        from facekd.experiments.quick import check_distill_data

        check_distill_data(root)  # before minutes of aligning, not after
    lfw = ensure_lfw(root, progress=progress_bar("download LFW"))
    reference = resolve("mobilefacenet", args.weights)
    steps = 3 + bool(args.distill)
    onnx = args.out / "onnx"  # every model is evaluated and timed as ONNX (ONNX Runtime)

    def step(k: int, what: str) -> None:  # the clock shows where a demo's minutes go
        print(f"{k}/{steps} [{time.perf_counter() - started:.0f} s] {what}")

    step(1, f"aligning {lfw} ({args.detector}, template {reference.pre.template}; resumes if interrupted)")
    ref = ComparedModel("mobilefacenet", "reference", reference)
    ref.lfw = evaluate_lfw(ref, lfw, args.detector, onnx, progress_bar("align"), progress_bar("embed"))
    step(2, f"{ref.name} on LFW View 2 (10-fold accuracy mean ± std over folds)")
    for label, ev in ref.lfw.items():
        print("    " + ev.summary(f"{ref.name} {label}"))
    if ref.lfw["plain"].fallback_images:
        print(f"    note: {ref.lfw['plain'].fallback_images} pair images had no detected face and used the central box")
    # --distill keeps to its 15 minutes: only the best shipped student of its own teacher.
    models = [ref, *_shipped(lfw, args.detector, onnx, only_teacher="mobilefacenet" if args.distill else None)]
    if args.distill:
        from facekd.experiments.quick import distill_here

        step(3, f"distilling student5 from MobileFaceNet on this CPU ({args.distill_epochs} epoch(s)) ...")
        student = distill_here(root, args.out, args.distill_epochs, args.detector)
        print(f"    [{time.perf_counter() - started:.0f} s] {student.name} on LFW ...")
        student.lfw = evaluate_lfw(student, lfw, args.detector, onnx, progress_bar("align"), progress_bar("embed"))
        models.append(student)
    step(steps, "timing every model with ONNX Runtime (batch 1, one thread, interleaved rounds) ...")
    rows = compare(models, onnx)
    print_comparison(rows)
    written = write_outputs(rows, models, args.out)
    print(f"    written: {', '.join(map(str, written))}")
    print(f"demo: {time.perf_counter() - started:.0f} s in all")
    return 0


def _shipped(lfw: Path, detector: str, onnx: Path, only_teacher: str | None = None) -> list:
    """Each student facekd ships (only those distilled from ``only_teacher`` if given),
    evaluated on LFW here, after the teacher it was distilled from."""
    from facekd.experiments.compare import evaluate_lfw, shipped_students

    models, teachers = [], set()
    for student, teacher in shipped_students(say=lambda msg: print("    " + msg), only_teacher=only_teacher):
        print(f"    the shipped student {student.name}, distilled from {teacher.name} ...")
        student.lfw = evaluate_lfw(student, lfw, detector, onnx, progress_bar("align"), progress_bar("embed"))
        models += [student] if teacher.name in teachers else [teacher, student]  # a teacher's row once
        teachers.add(teacher.name)
    return models
