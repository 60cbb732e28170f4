"""The pruning table: every run's params, MACs, LFW before/after recovery (from its
``prune.json``) and ONNX Runtime latency per face (batch 1, one thread), all models
timed in this one process, interleaved, so that load from other processes falls on
them alike.

Usage (2-core dev CPU; runs from ``facekd prune``)::

    python eval/prune_table.py /tmp/prune/mfn_* --rounds 15 --json /tmp/prune_table.json --plot /tmp/prune.png

Prints a markdown table (first row: the unpruned source of the first run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from facekd.deploy.export import export_onnx, synthetic_inputs
from facekd.evaluation.plots import plot_pruning
from facekd.hub import resolve
from facekd.io_utils import atomic_write_json
from facekd.prune.run import PRUNED, read_result
from facekd.runtime.timing import measure_latency


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="facekd prune run folders")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--plot", type=Path, help="write LFW %% against MACs per importance here (PNG)")
    ap.add_argument("--title", default="Structured pruning", help="the plot's title")
    args = ap.parse_args(argv)
    results = {run: read_result(run) for run in args.runs}
    first = next(iter(results.values()))
    src = resolve(first.source, first.source_weights)
    rows = [{"name": f"{first.source} (unpruned)", "importance": "-", "removed": 0.0, "params": first.source_params,
             "macs": first.source_macs, "lfw_before": first.source_lfw, "lfw_after": None}]
    models = {rows[0]["name"]: src.require_backbone("timing").eval()}
    for run, r in results.items():
        last = r.steps[-1]
        name = run.name
        rows.append({"name": name, "importance": r.importance, "removed": last.removed, "params": last.params,
                     "macs": last.macs, "lfw_before": last.lfw_before, "lfw_after": last.lfw_after})
        models[name] = resolve(run / PRUNED).require_backbone("timing").eval()
    x = synthetic_inputs(1, tuple(models[rows[0]["name"]].cfg.input_size))
    with tempfile.TemporaryDirectory(prefix="facekd-prune-table-") as tmp:
        files = {}
        for i, (name, net) in enumerate(models.items()):
            files[name] = Path(tmp) / f"m{i}.onnx"
            export_onnx(net, files[name], input_size=tuple(net.cfg.input_size))
        timings = measure_latency(files, rounds=args.rounds, inputs=x)
    for row in rows:
        t = timings[row["name"]]
        row["ort_ms_1t"], row["ort_ms_min"], row["ort_ms_max"] = (round(1000 * v, 3) for v in (t.median, t.low, t.high))
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"CPU: {os.cpu_count()} cores; ONNX Runtime FP32, batch 1, 1 thread, median of {args.rounds} interleaved rounds")
    print("| model | importance | filters removed | params (M) | MMAC | ORT ms/face | LFW % pruned | LFW % recovered |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['importance']} | {100 * r['removed']:.0f}% | {r['params'] / 1e6:.3f} | {r['macs'] / 1e6:.1f} | "
              f"{r['ort_ms_1t']:.2f} ({r['ort_ms_min']:.2f}-{r['ort_ms_max']:.2f}) | {fmt(r['lfw_before'])} | {fmt(r['lfw_after'])} |")
    if args.json:
        atomic_write_json(args.json, rows)
    if args.plot:
        plot_pruning(rows, args.plot, title=args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
