"""The detector distillation ablation table (issue 26): each SPEC 4a term added alone to
the labels-only student, then all, over seeds; CMU+MIT figures from ``facekd eval detect``
and the last validation row of each run.

    python eval/detector_ablation.py --runs ABL --cmumit ABL/s0-cmumit.json ABL/s1-cmumit.json \
        [--json docs/results/detector-ablation.json]

``ABL/s<seed>/<row>/`` are the run folders of ``eval/detector_ablation.sh``-style runs
(``facekd distill-detector ... --out ABL/s<seed>/<row>``); the CMU+MIT JSONs list their
``detector.onnx`` files.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

ROWS = ("labels", "soft_ce", "bounded", "hint", "objscaled", "objscaled_fmnms", "unlabelled", "all")
LABELS = {
    "labels": "teacher's final detections alone (MTCNN on celeba-wild): `hard`",
    "soft_ce": "+ weighted soft CE (Chen; μ 0.5, w_bg 1.5)",
    "bounded": "+ teacher-bounded regression (Chen; ν 0.5, m 0)",
    "hint": "+ hint through a 1x1 adaptation (Chen; γ 0.5, L2)",
    "objscaled": "+ objectness-scaled distillation (Mehta; λ_D 1)",
    "objscaled_fmnms": "+ objectness-scaled with FM-NMS (Mehta; K 3)",
    "unlabelled": "+ unlabelled photos (celeba-crops, YuNet-labelled; Mehta)",
    "all": "all of them (configs/detect/fkdet_s.yaml)",
}


def _last_val(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
    return rows[-1].get("val", {}) if rows else {}


def collect(runs: Path, cmumit: list[Path]) -> dict:
    scores = {}
    for path in cmumit:
        for d in json.loads(path.read_text())["detectors"]:
            m = re.search(r"(?:^|/)s(\d+)/([a-z_]+)/detector\.onnx$", d["detector"])
            if m:
                scores[(int(m.group(1)), m.group(2))] = d
    table = {}
    for row in ROWS:
        per_seed = []
        for seed_dir in sorted(d for d in runs.glob("s*") if d.is_dir() and d.name[1:].isdigit()):
            seed = int(seed_dir.name[1:])
            run = seed_dir / row
            if (seed, row) not in scores or not (run / "record.json").exists():
                continue
            d = scores[(seed, row)]
            rec = json.loads((run / "record.json").read_text())
            per_seed.append({"seed": seed, "recall": d["recall"], "precision": d["precision"], "ap": d["ap"],
                             "nme": d["nme"], "min_score": rec.get("min_score"), "val": _last_val(run)})
        table[row] = per_seed
    return table


def _ms(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{100 * np.mean(xs):.1f}" + (f" ± {100 * np.std(xs):.1f}" if len(xs) > 1 else "")


def markdown(table: dict) -> str:
    lines = ["| row | seeds | CMU+MIT AP % | recall % | precision % | NME % | val NME % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row, seeds in table.items():
        if not seeds:
            lines.append(f"| {LABELS[row]} | 0 | not run | | | | |")
            continue
        lines.append(f"| {LABELS[row]} | {len(seeds)} | {_ms([s['ap'] for s in seeds])} | "
                     f"{_ms([s['recall'] for s in seeds])} | {_ms([s['precision'] for s in seeds])} | "
                     f"{_ms([s['nme'] for s in seeds])} | {_ms([s['val'].get('nme') for s in seeds])} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--cmumit", type=Path, nargs="+", required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    table = collect(args.runs, args.cmumit)
    print(markdown(table))
    if args.json:
        from facekd.io_utils import atomic_write_json

        atomic_write_json(args.json, {"rows": table, "cmumit": [str(p) for p in args.cmumit]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
