"""Merges ``facekd eval lfw-ident --json`` outputs into one results file and prints the
markdown table of docs/identification.md.

    python eval/ident_table.py /tmp/ident/*.json --out docs/results/lfw-ident.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def table(runs: list[dict]) -> str:
    lines = [
        "| model | enrolled | scoring | rank-1 % | DIR @ FPIR 1% | DIR @ FPIR 10% | threshold @ 1% | search ms/probe |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for r in run["results"]:
            lines.append(
                f"| {run['model']} | {r['enrolled']} | {r['scoring']} | {r['rank1_mean']:.2f} ± {r['rank1_std']:.2f} | "
                f"{r['dir_mean']['0.01']:.2f} ± {r['dir_std']['0.01']:.2f} | {r['dir_mean']['0.1']:.2f} ± {r['dir_std']['0.1']:.2f} | "
                f"{r['threshold_median']['0.01']:.3f} | {r['search_ms_per_probe']:.4f} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in args.runs]
    print(table(runs))
    if args.out:
        from facekd.io_utils import atomic_write_json

        atomic_write_json(args.out, {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
