"""The findings of Wang et al. side by side across training budgets: one column per
protocol (its results file), each finding's verdict in every column, and a plot of
Table A's LFW accuracy against the epochs each protocol trains.

A verdict that differs between columns is a finding that depends on the budget (or on
whatever else differs between the protocols, such as the teacher: each column names its
own).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from facekd.evaluation.plots import pyplot, save_figure
from facekd.experiments.findings import Finding, finding_rows
from facekd.experiments.report import summaries
from facekd.experiments.results import read_results
from facekd.experiments.tables import TABLES, Protocol


@dataclass(frozen=True)
class Budget:
    """One column: a protocol's results under a label ("2 CPU epochs, FaceNet-CASIA
    teacher"); ``results`` None is a budget not run yet (its column says so)."""

    label: str
    protocol: Protocol
    results: Path | None = None

    @cached_property
    def records(self) -> list:
        """This protocol's records in the results file (empty when not run)."""
        if self.results is None or not self.results.is_file():
            return []
        return [r for r in read_results(self.results) if r.protocol == self.protocol.name]

    @cached_property
    def rows(self) -> dict:
        """(table, row) -> summary of this protocol's records (empty when not run); read
        once, for the table and the plot alike."""
        return summaries(self.records) if self.records else {}


def _cell(f: Finding) -> str:
    return f"**{f.verdict}**" + (f"<br>{f.detail}" if f.detail else "")


def budget_table(budgets: list[Budget]) -> list[str]:
    """A Markdown table: a line per finding, a column per budget, and a last column that
    says whether the verdicts measured in two or more columns agree."""
    judged = [finding_rows(b.rows, b.protocol.deep_teacher) if b.results else None for b in budgets]
    labels = [f.label for f in finding_rows({})]
    lines = ["| finding | " + " | ".join(b.label for b in budgets) + " | changes with the budget? |",
             "|---|" + "---|" * len(budgets) + "---|"]
    for i, label in enumerate(labels):
        cells = ["not run" if j is None else _cell(j[i]) for j in judged]
        decided = [j[i].verdict for j in judged if j is not None and j[i].verdict in ("confirmed", "refuted")]
        change = ("yes" if len(set(decided)) > 1 else "no" if len(decided) > 1
                  else "not decided (confirmed or refuted in fewer than two columns)")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {change} |")
    return lines


def plot_table_a_by_epochs(budgets: list[Budget], path: Path) -> Path | None:
    """Each Table A row's LFW (mean, error bar: its spread) at each budget's epochs,
    one marker per budget; None when no budget has Table A rows."""
    names = [r.name for r in TABLES["A"]]
    series = []
    for b in budgets:
        rows = b.rows
        pts = [(i, rows[("A", n)]) for i, n in enumerate(names) if ("A", n) in rows]
        if pts:
            series.append((b, pts))
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.6))
    width = 0.8 / len(series)
    for k, (b, pts) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, _ in pts]
        epochs = sorted({s["epochs"] for _, s in pts if s.get("epochs")})
        ax.errorbar(xs, [s["mean"] for _, s in pts], yerr=[s["std"] for _, s in pts], fmt="o", capsize=3,
                    label=f"{b.label} ({', '.join(map(str, epochs))} epochs)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace(", teacher weighting", "\n+ weighting") for n in names], rotation=30, ha="right",
                       fontsize=8)
    ax.set_ylabel("LFW View 2 accuracy, % (flip)")
    ax.set_title("Table A (student5) by training budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def table_a_curves(budget: Budget) -> dict[str, list[tuple[float, float, float, int]]]:
    """Each Table A row's LFW at every evaluated epoch, over the seeds whose records carry
    the run's curve: row -> [(epoch, mean, std, seeds)] (rows without curves left out)."""
    by: dict[str, dict[float, list[float]]] = {}
    names = {r.name for r in TABLES["A"]}
    for rec in budget.records:
        if rec.table == "A" and rec.row in names and rec.lfw_curve:
            for epoch, acc in rec.lfw_curve:
                by.setdefault(rec.row, {}).setdefault(float(epoch), []).append(float(acc))
    out = {}
    for row, points in by.items():
        out[row] = [(e, float(np.mean(v)), float(np.std(v)), len(v))
                    for e, v in sorted(points.items())]
    return out


def plot_table_a_curves(budgets: list[Budget], path: Path) -> Path | None:
    """LFW against epochs for the Table A rows, one panel per budget whose records carry
    their runs' curves (mean over seeds, a band of one std); None when none does."""
    panels = [(b, c) for b in budgets if (c := table_a_curves(b))]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.2), squeeze=False)
    order = [r.name for r in TABLES["A"]]
    for ax, (b, curves) in zip(axes[0], panels):
        for row in sorted(curves, key=order.index):
            pts = curves[row]
            e = [p[0] for p in pts]
            m = np.array([p[1] for p in pts])
            sd = np.array([p[2] for p in pts])
            seeds = max(p[3] for p in pts)
            (line,) = ax.plot(e, m, marker="o", ms=3, label=f"{row} ({seeds} seed{'s' if seeds > 1 else ''})")
            ax.fill_between(e, m - sd, m + sd, color=line.get_color(), alpha=0.12)
        ax.set_xlabel("epoch")
        ax.set_ylabel("LFW View 2 accuracy, % (flip)")
        ax.set_title(f"Table A during training: {b.label}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
