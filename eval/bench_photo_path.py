"""Photo to decision: wall time of `facekd verify` per call and per photo, for each detector
chain, in one run (interleaved, medians).

    python eval/bench_photo_path.py --model M.onnx --lfw LFW [--pairs 20] [--calls 7] [--json OUT]

Two measurements per chain (``--detectors``, default ``yunet,mtcnn`` = verify's default
and ``mtcnn`` = verify before YuNet):

- model load included: ``facekd verify A B --model M --threshold T --detector CHAIN`` as a
  new process (Python start, imports, ONNX session, detector), ``--calls`` times;
- model load excluded: in one process with the model and detectors loaded and warmed up,
  ``--pairs`` LFW pairs: per call (read, detect, align, embed both photos, compare) and
  per photo (read, detect, align, embed one photo).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from facekd.data.lfw import parse_pairs
from facekd.deploy.photos import DetectorChain, align_photo, embed_faces, verify_photos
from facekd.hub import load_embedder


def _pairs(lfw: Path, n: int) -> list[tuple[Path, Path]]:
    p = parse_pairs(lfw / "pairs.txt")
    step = max(1, len(p.left) // n)
    return [(lfw / p.left[i], lfw / p.right[i]) for i in range(0, len(p.left), step)][:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--lfw", type=Path, required=True)
    ap.add_argument("--detectors", nargs="+", default=["yunet,mtcnn", "mtcnn"])
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pairs = _pairs(args.lfw, args.pairs)
    facekd = Path(sys.executable).with_name("facekd")
    rows: dict[str, dict] = {}

    # In-process, model load excluded.
    embedder = load_embedder(str(args.model))
    template = embedder.pre.template
    for spec in args.detectors:
        chain = DetectorChain.parse(spec)
        t0 = time.perf_counter()
        for name in chain.names:
            chain.get(name)
        build_s = time.perf_counter() - t0
        a, b = pairs[0]
        verify_photos(embedder, align_photo(a, chain, template), align_photo(b, chain, template), args.threshold)  # warm-up
        calls, photos, found = [], [], []
        for a, b in pairs:
            t0 = time.perf_counter()
            fa, fb = align_photo(a, chain, template), align_photo(b, chain, template)
            verify_photos(embedder, fa, fb, args.threshold)
            calls.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            f = align_photo(a, chain, template)
            embed_faces(embedder, [f])
            photos.append(time.perf_counter() - t0)
            found += [fa.detector, fb.detector]
        rows[spec] = {
            "detector_build_s": round(build_s, 3),
            "per_call_ms_load_excluded": round(1000 * statistics.median(calls), 2),
            "per_photo_ms_load_excluded": round(1000 * statistics.median(photos), 2),
            "faces_found_by": {n: found.count(n) for n in sorted(set(found))},
            "process_ms_load_included": [],
        }

    # New processes, model load included; chains interleaved.
    env = {**os.environ}
    for i in range(args.calls):
        a, b = pairs[i % len(pairs)]
        for spec in args.detectors:
            cmd = [str(facekd), "verify", str(a), str(b), "--model", str(args.model),
                   "--threshold", str(args.threshold), "--detector", spec]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            rows[spec]["process_ms_load_included"].append(round(1000 * (time.perf_counter() - t0), 1))
    for r in rows.values():
        r["per_call_ms_load_included"] = statistics.median(r["process_ms_load_included"])
        r["per_photo_ms_load_included"] = r["per_call_ms_load_included"] / 2
    base = rows[args.detectors[-1]]
    for spec, r in rows.items():
        r["speedup_load_excluded"] = round(base["per_call_ms_load_excluded"] / r["per_call_ms_load_excluded"], 2)
        r["speedup_load_included"] = round(base["per_call_ms_load_included"] / r["per_call_ms_load_included"], 2)
    out = {"model": str(args.model), "pairs": len(pairs), "calls": args.calls, "rows": rows}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
