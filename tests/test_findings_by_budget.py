"""The findings side by side across budgets: verdicts per column, and whether they change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facekd.errors import FacekdError
from facekd.experiments.budgets import Budget, budget_table, plot_table_a_by_epochs
from facekd.experiments.tables import Protocol

REPO = Path(__file__).resolve().parent.parent


def _results(path: Path, protocol: str, accs: dict[str, float], epochs: int) -> Path:
    recs = [{"protocol": protocol, "table": "A", "row": row, "seed": 0, "student": "student5", "lfw_acc": acc,
             "lfw_std": 0.3, "params": 1_000_000, "mb": 3.8, "cpu_ms": 2.0, "epochs": epochs} for row, acc in accs.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_a_verdict_that_flips_between_budgets_is_flagged_and_an_unrun_budget_says_so(tmp_path):
    short = _results(tmp_path / "short.jsonl", "p", {"Hard+Soft+Feature": 86.0, "Hard+Soft": 88.0}, 2)  # < holds
    long = _results(tmp_path / "long.jsonl", "q", {"Hard+Soft+Feature": 91.0, "Hard+Soft": 89.0}, 40)  # and fails
    budgets = [Budget("short", Protocol("p", "", ""), short), Budget("middle", Protocol("p", "", "")),
               Budget("long", Protocol("q", "", ""), long)]
    lines = budget_table(budgets)
    assert lines[0] == "| finding | short | middle | long | changes with the budget? |"
    row = next(line for line in lines if line.startswith("| Hard+Soft+Feature < Hard+Soft |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].startswith("**confirmed**<br>Hard+Soft+Feature 86.00 ± 0.30¹ vs Hard+Soft 88.00 ± 0.30¹")
    assert cells[2] == "not run" and cells[3].startswith("**refuted**") and cells[4] == "yes"
    # Confirmed or refuted in one column only: not decided.
    weighting = next(line for line in lines if line.startswith("| Teacher weighting helps |"))
    assert weighting.endswith("| not decided (confirmed or refuted in fewer than two columns) |")
    png = plot_table_a_by_epochs(budgets, tmp_path / "a.png")
    assert png is not None and png.stat().st_size > 10_000


def test_the_script_refuses_a_malformed_budget_and_an_unknown_protocol(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "eval"))
    from findings_by_budget import parse_budget

    from facekd.experiments import protocols

    known = protocols(REPO)
    with pytest.raises(FacekdError, match="expected LABEL=PROTOCOL:RESULTS"):
        parse_budget("no separators", known)
    with pytest.raises(FacekdError, match="unknown protocol 'nope'"):
        parse_budget("x=nope:not run", known)
    with pytest.raises(FacekdError, match="results file not found"):
        parse_budget(f"x=facekd-dev:{tmp_path / 'missing.jsonl'}", known)
    assert parse_budget("x=facekd-dev:not run", known).results is None


def test_table_a_curves_average_the_seeds_at_each_epoch_and_skip_records_without_one(tmp_path):
    from facekd.experiments.budgets import plot_table_a_curves, table_a_curves

    base = {"protocol": "p", "table": "A", "student": "student5", "lfw_std": 0.3, "epochs": 4}
    recs = [
        {**base, "row": "Hard", "seed": 0, "lfw_acc": 80.0, "lfw_curve": [[2, 70.0], [4, 80.0]]},
        {**base, "row": "Hard", "seed": 1, "lfw_acc": 82.0, "lfw_curve": [[2, 72.0], [4, 82.0]]},
        {**base, "row": "Soft", "seed": 0, "lfw_acc": 85.0},  # an older record: no curve
        {**base, "row": "Hard", "seed": 0, "lfw_acc": 99.0, "table": "B", "lfw_curve": [[2, 99.0]]},  # not Table A
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    budget = Budget("12 epochs", Protocol("p", "", ""), path)
    assert table_a_curves(budget) == {"Hard": [(2.0, 71.0, 1.0, 2), (4.0, 81.0, 1.0, 2)]}
    png = plot_table_a_curves([Budget("none", Protocol("p", "", "")), budget], tmp_path / "c.png")
    assert png is not None and png.stat().st_size > 10_000
    assert plot_table_a_curves([Budget("none", Protocol("p", "", ""))], tmp_path / "d.png") is None
