"""Figures people would rather look at than read."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from facekd.io_utils import atomic_write_bytes
from facekd.evaluation.metrics import VerificationResult


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported when a plot is made
    (heavy; nothing imports it at start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(results: dict[str, VerificationResult], path: Path | str, title: str = "LFW verification ROC") -> Path:
    """Saves a ROC plot (TAR against FAR, log FAR axis) of one or more results as PNG."""
    from sklearn.metrics import roc_curve

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    floor = 1.0
    for label, r in results.items():
        fpr, tpr, _ = roc_curve(r.issame, r.scores)
        ax.plot(fpr, tpr, label=f"{label}: {100 * r.accuracy:.2f}% acc, AUC {r.auc:.4f}")
        floor = min(floor, float(tpr[fpr >= 1e-4].min()))
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(max(0.0, floor - 0.05), 1.005)  # zoom on the part of the curve that differs
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: Path | str) -> Path:
    """Writes a matplotlib figure as PNG, atomically, and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_pruning(rows: list[dict], path: Path | str, title: str = "Structured pruning") -> Path:
    """LFW accuracy against MACs for pruning runs (``eval/prune_table.py``'s rows): one
    line per importance after recovery (solid) and before it (dotted), the unpruned
    source as a star."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    source = [r for r in rows if r["importance"] == "-"]
    for r in source:
        ax.plot(r["macs"] / 1e6, r["lfw_before"], "k*", markersize=12, label=f"unpruned: {r['lfw_before']:.2f}%")
    for i, imp in enumerate(sorted({r["importance"] for r in rows} - {"-"})):
        runs = sorted((r for r in rows if r["importance"] == imp), key=lambda r: r["macs"])
        macs = [r["macs"] / 1e6 for r in runs]
        color = f"C{i}"
        ax.plot(macs, [r["lfw_after"] for r in runs], "o-", color=color, label=f"{imp}, recovered")
        ax.plot(macs, [r["lfw_before"] for r in runs], "o:", color=color, alpha=0.6, label=f"{imp}, pruned")
    ax.set_xlabel("MMAC per face")
    ax.set_ylabel("LFW accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def plot_precision_recall(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path | str,
                          title: str = "Face detection, CMU+MIT") -> Path:
    """Saves precision-recall curves as PNG: ``curves`` maps a label to ``(recall,
    precision)`` (e.g. ``facekd.detect.scoring.DetectionScore.curve_recall`` and
    ``curve_precision``), drawn as steps."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    floor = 1.0
    for label, (recall, precision) in curves.items():
        ax.step(recall, precision, where="post", label=label)
        floor = min(floor, min(precision))
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(max(0.0, floor - 0.05), 1.005)  # zoom on the part of the curves that differs
    ax.set_xlabel("recall (of all annotated faces)")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)
