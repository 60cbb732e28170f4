"""The findings of Wang et al. at every training budget facekd has run, side by side
(docs/findings-by-budget.md and its plot of Table A against epochs).

    python eval/findings_by_budget.py \\
        --budget "2 CPU epochs, FaceNet-CASIA teacher=facekd-dev-cpu:docs/results/facekd-dev-cpu.jsonl" \\
        --budget "12 CPU epochs, FaceNet-CASIA teacher=facekd-dev-cpu:docs/results/facekd-dev-cpu12.jsonl" \\
        --budget "40 GPU epochs, ResNet-27 trained on facekd-dev=facekd-dev:docs/results/facekd-dev.jsonl"

Each ``--budget`` is ``LABEL=PROTOCOL:RESULTS`` (``RESULTS`` "not run" for a budget
without results yet). Without ``--budget`` the three columns above are used.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT = [
    "2 CPU epochs, FaceNet-CASIA teacher=facekd-dev-cpu:docs/results/facekd-dev-cpu.jsonl",
    "12 CPU epochs, FaceNet-CASIA teacher=facekd-dev-cpu:docs/results/facekd-dev-cpu12.jsonl",
    "40 GPU epochs, ResNet-27 trained on facekd-dev=facekd-dev:docs/results/facekd-dev.jsonl",
]


def parse_budget(text: str, known: dict):
    """``LABEL=PROTOCOL:RESULTS`` -> a :class:`~facekd.experiments.budgets.Budget`."""
    from facekd.errors import FacekdError
    from facekd.experiments.budgets import Budget

    label, sep, rest = text.partition("=")
    name, sep2, results = rest.partition(":")
    if not (sep and sep2 and label and name and results):
        raise FacekdError(f"--budget {text!r}: expected LABEL=PROTOCOL:RESULTS (RESULTS may be 'not run')")
    if name not in known:
        raise FacekdError(f"--budget {text!r}: unknown protocol {name!r}; known: {', '.join(sorted(known))}")
    if results == "not run":
        return Budget(label, known[name])
    path = Path(results) if Path(results).is_absolute() else REPO / results
    if not path.is_file():
        raise FacekdError(f"{path}: results file not found (for --budget {label!r})")
    return Budget(label, known[name], path)


def main(argv: list[str] | None = None) -> int:
    from facekd.errors import FacekdError
    from facekd.experiments import protocols
    from facekd.experiments.budgets import budget_table, plot_table_a_by_epochs, plot_table_a_curves
    from facekd.io_utils import atomic_write_bytes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", action="append", help="LABEL=PROTOCOL:RESULTS (repeatable; see above)")
    ap.add_argument("--out", type=Path, default=REPO / "docs/findings-by-budget.md")
    ap.add_argument("--plot", type=Path, default=REPO / "docs/results/findings-by-budget.png")
    args = ap.parse_args(argv)
    try:
        known = protocols(REPO)
        budgets = [parse_budget(b, known) for b in args.budget or DEFAULT]
        png = plot_table_a_by_epochs(budgets, args.plot)
        curves = plot_table_a_curves(budgets, args.plot.with_name(args.plot.stem + "-curves.png"))
        lines = [
            "# The findings of Wang et al. by training budget",
            "",
            "Built by `eval/findings_by_budget.py` from the protocols' results files; each verdict is judged as "
            "in docs/RESULTS.md (a difference smaller than the larger spread of the two rows is not "
            "distinguishable). The columns differ in their epochs and, between the CPU and GPU protocols, in "
            "the teacher and the hardware: a verdict that changes between them may come from either.",
            "",
            *budget_table(budgets),
            "",
        ]
        if png is not None:
            lines += [f"![Table A by training budget]({os.path.relpath(png.resolve(), args.out.resolve().parent)})", ""]
        if curves is not None:
            lines += ["LFW against epochs during the runs (every evaluation each run logged; mean over seeds, "
                      "a band of one std):", "",
                      f"![Table A during training]({os.path.relpath(curves.resolve(), args.out.resolve().parent)})", ""]
        atomic_write_bytes(args.out, "\n".join(lines).encode())
    except FacekdError as exc:
        print(f"findings_by_budget: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}" + (f" and {args.plot}" if png is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
