"""Reproduce the paper's tables (SPEC 3-4) on a protocol, resumably, and write docs/RESULTS.md.

    python eval/reproduce_paper.py --protocol facekd-dev --tables A --seeds 1 --budget-minutes 9 \\
        --set 'data.train=[.carry/dev_train_q85.fkpack]' --set eval.lfw=.carry/lfw_pairs_q85.fkpack

Each finished run appends a line to ``--results`` (default ``docs/results/<protocol>.jsonl``);
rows already there are skipped, so a suite spreads over several commands of at most
10 minutes (teachers are retrained by each command that needs them). ``--protocol smoke``
runs one row per table with tiny models on the CPU (what CI runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from facekd.experiments import TABLES, Runner, protocols, write_report
    from facekd.experiments.results import append_result, read_results
    from facekd.experiments.runner import ready_teacher_records

    known = protocols(REPO)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=sorted(known), default="facekd-dev")
    p.add_argument("--tables", default="A,B,C,D", help="comma-separated, e.g. A,B")
    p.add_argument("--seeds", type=int, help="seeds per row (default: each row's own count, 3 for the rows "
                   "whose spread decides a finding, 1 for the rest)")
    p.add_argument("--row", dest="rows", action="append", metavar="TEXT",
                   help="run only the rows whose name contains TEXT, e.g. --row 'label smoothing' (repeatable)")
    p.add_argument("--budget-minutes", type=float, help="start no new run after this long (0 or less: start none)")
    p.add_argument("--runs", type=Path, help="run folders (default runs/paper-<protocol>)")
    p.add_argument("--results", type=Path, help="results file to append to (default docs/results/<protocol>.jsonl)")
    p.add_argument("--report", type=Path, help="Markdown report (default: docs/RESULTS.md for facekd-dev-cpu, docs/RESULTS-gpu.md for "
                   "facekd-dev; smoke: beside --results)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the results file; train nothing")
    p.add_argument("--packs", type=Path, help="folder holding the ready teachers' crop packs "
                   "(dev_train_facenet160.fkpack, dev_train_dlib150.fkpack; see eval/teacher_crops.py)")
    p.add_argument("--teacher-lfw", type=Path, help="eval/teacher_lfw.py's JSON: add the ready teachers' LFW, "
                   "size and CPU latency to the results (once)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override every run's config, e.g. data.train=[pack] (repeatable)")
    args = p.parse_args(argv)
    tables = [t.strip().upper() for t in args.tables.split(",") if t.strip()]
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        p.error(f"unknown tables {unknown}; known: {', '.join(TABLES)}")
    proto = known[args.protocol]
    results = args.results or REPO / "docs" / "results" / f"{proto.name}.jsonl"
    report = args.report or (results.with_suffix(".md") if proto.smoke_only else REPO / "docs" / proto.report)
    runner = Runner(
        REPO, proto, args.runs or REPO / "runs" / f"paper-{proto.name}", results, args.overrides,
        deadline=time.time() + 60 * args.budget_minutes if args.budget_minutes is not None else None, packs=args.packs,
    )
    if args.teacher_lfw:
        have = {(r.protocol, r.table, r.row) for r in read_results(results)}
        for rec in ready_teacher_records(proto, json.loads(args.teacher_lfw.read_text())):
            if (rec.protocol, "teachers", rec.row) not in have:
                append_result(results, rec)
                print(f"teacher {rec.row}: LFW {rec.lfw_acc:.2f} ({rec.recipe}), {rec.cpu_ms:.1f} ms per face")
    left = 0 if args.report_only else runner.run(tables, args.seeds, args.rows)
    write_report(results, report, proto)
    print(f"report: {report}" + (f"; {left} runs left" if left else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
