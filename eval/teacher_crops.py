"""A teacher's own crops of a folder of photos: one detection per photo (stored as
``detections.json`` in the output, or reused from ``--detections``), then the teacher's
geometry (``facekd.teachers.crops.CROPS``) applied to each photo.

    python eval/teacher_crops.py /work/shared/data/lfw /tmp/lfw-facenet160 --crop facenet160 --pairs-only
    python eval/teacher_crops.py /work/shared/data/lfw /tmp/lfw-dlib150 --crop dlib150 --pairs-only \\
        --detections /tmp/lfw-facenet160/detections.json

The output keeps the photos' relative names (and copies pairs.txt), so ``facekd eval
lfw --data OUT`` and ``facekd pack OUT`` take it as an aligned folder of that geometry.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from facekd.align.folder import scan_folder
from facekd.data.lfw import parse_pairs
from facekd.progress import progress_bar
from facekd.teachers.crops import CROPS, DETECTIONS_NAME, cut_folder, detect_photos, load_detections, save_detections


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--crop", required=True, choices=CROPS.names())
    ap.add_argument("--detections", type=Path, help="reuse these stored detections instead of detecting")
    ap.add_argument("--pairs-only", action="store_true", help="only the photos LFW's pairs.txt uses")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--detector", default="mtcnn", help="face detector for the one detection (default mtcnn)")
    args = ap.parse_args(argv)
    if args.pairs_only:
        files = parse_pairs(args.src / "pairs.txt").images()
        metadata = ["pairs.txt"]
    else:
        files, metadata = scan_folder(args.src)
    args.dst.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.detections:
        detections = load_detections(args.detections)
    else:
        detections = detect_photos(args.src, files, detector=args.detector, workers=args.workers,
                                   progress=progress_bar("detect"))
    t_detect = time.perf_counter() - t0
    if not args.detections:
        save_detections(args.dst / DETECTIONS_NAME, detections)
    t0 = time.perf_counter()
    fallbacks = cut_folder(args.src, args.dst, files, detections, args.crop, progress=progress_bar(f"cut {args.crop}"))
    t_cut = time.perf_counter() - t0
    for rel in metadata:
        (args.dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.src / rel, args.dst / rel)
    print(f"{len(files)} photos, {fallbacks} without a face (central fallback); "
          f"detect {t_detect:.1f} s, cut {t_cut:.1f} s -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
