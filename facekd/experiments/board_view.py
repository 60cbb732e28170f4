"""How a board (:mod:`facekd.experiments.board`) is shown: as aligned text, and as a plot
of LFW flip against latency with the front joined."""

from __future__ import annotations

from pathlib import Path

from facekd.experiments.board import Board, BoardRow
from facekd.evaluation.plots import pyplot


def board_lines(board: Board) -> list[str]:
    """The board as aligned text; figures recorded rather than measured carry a *."""
    w = max([16, *(len(r.name) + 2 for r in board.rows)])
    lines = [f"{'model':<{w}}{'kind':<8}{'params':>9}{'MMAC':>8}{'FP32 ms':>9}{'INT8 ms':>9}{'form':>6}"
             f"{'LFW plain':>11}{'LFW flip':>17}{'TAR@1e-3':>10}  front"]

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    for r in board.rows:
        star = {k: "*" if k in r.recorded else " " for k in ("params", "ms", "lfw_plain", "lfw_flip")}
        flip = "-" if r.lfw_flip is None else f"{r.lfw_flip:.2f} ± {r.lfw_flip_std or 0:.2f}"
        lines.append(
            f"{r.name:<{w}}{r.kind:<8}{f(r.params and r.params / 1e6, '.2f'):>8}{star['params']}"
            f"{f(r.macs and r.macs / 1e6, '.1f'):>8}{f(r.fp32_ms, '.2f'):>9}{f(r.int8_ms, '.2f'):>9}"
            f"{(r.form or '-')[:5]:>6}{f(r.lfw_plain, '.2f'):>10}{star['lfw_plain']}{flip:>16}{star['lfw_flip']}"
            f"{f(r.tar_far_1e3, '.2f'):>10}  {'yes' if r.on_front else ''}"
        )
    if any(r.recorded for r in board.rows):
        lines.append("* recorded in weights/manifest.json, not measured in this run")
    return lines


def _declutter(fig, ax, labels, step_px: float = 2.0, marker_px: float = 4.0, reach_px: float = 300.0) -> None:
    """Moves point labels (a grey line back to the point) to the nearest place inside the
    axes where they overlap no other label and no point's marker. Labels of points in the
    upper half of the axes are placed from the highest point down, each looking downwards
    first; those in the lower half from the lowest point up, each looking upwards first: a
    crowded cluster near either edge keeps its points' order, so the lines do not cross.
    A label with no free place within ``reach_px`` either way stays."""
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    points_per_px = 72.0 / fig.dpi
    frame = ax.get_window_extent(renderer)
    at = ax.transData.transform([t.xy for t in labels])
    placed = [Bbox.from_extents(x - marker_px, y - marker_px, x + marker_px, y + marker_px) for x, y in at]
    steps = [k * step_px for k in range(1, int(reach_px / step_px) + 1)]
    middle = (frame.y0 + frame.y1) / 2
    upper = sorted((i for i in range(len(labels)) if at[i][1] >= middle), key=lambda i: -at[i][1])
    lower = sorted((i for i in range(len(labels)) if at[i][1] < middle), key=lambda i: at[i][1])
    for order, sign in ((upper, -1.0), (lower, 1.0)):
        shifts = [0.0] + [sign * d for d in steps] + [-sign * d for d in steps]
        earlier: list = []  # this pass's labels so far: a later one may not pass one it shares columns with
        for i in order:
            box = labels[i].get_window_extent(renderer)
            for shift in shifts:
                moved = box.translated(0, shift)
                if (frame.y0 <= moved.y0 and moved.y1 <= frame.y1 and not any(b.overlaps(moved) for b in placed)
                        and all(sign * (moved.y0 - e.y0) >= 0 for e in earlier if e.x0 < moved.x1 and moved.x0 < e.x1)):
                    break
            else:
                shift, moved = 0.0, box
            dx, dy = labels[i].xyann
            labels[i].xyann = (dx, dy + shift * points_per_px)
            placed.append(moved)
            earlier.append(moved)


# The zoom panel: models within this share of the reference's ms and this many points of
# its LFW flip, where a choice between them and the reference is made.
ZOOM_MS = 1.25
ZOOM_POINTS = 0.6


def near_reference(board: Board, reference: str) -> tuple[BoardRow | None, list[BoardRow]]:
    """The reference row (None if the board lacks it or its figures) and the rows the zoom
    panel shows: at most ``ZOOM_MS`` x its ms and at least ``ZOOM_POINTS`` below its LFW flip."""
    ref = next((r for r in board.rows if r.name == reference and r.ms and r.lfw_flip is not None), None)
    if ref is None:
        return None, []
    near = [r for r in board.rows if r.ms is not None and r.lfw_flip is not None
            and r.ms <= ZOOM_MS * ref.ms and r.lfw_flip >= ref.lfw_flip - ZOOM_POINTS]
    return ref, near


def _points(ax, rows: list[BoardRow], x, label) -> list:
    labels = []
    for r in rows:
        colour = "tab:blue" if r.kind == "ready" else "tab:red"
        ax.scatter(x(r), r.lfw_flip, c=colour, marker="o" if r.on_front else "x", zorder=3)
        labels.append(ax.annotate(label(r), (x(r), r.lfw_flip), textcoords="offset points", xytext=(5, 4),
                                  fontsize=8, arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5}))
    return labels


def plot_board(board: Board, path: Path | str, reference: str = "mobilefacenet") -> Path:
    """LFW flip against the fastest form's ms (log scale), the front joined by a line; where
    the board holds ``reference``, a second panel zooms on the models near it, their ms as a
    multiple of its fastest form's, with lines at 0.6x and 1.0x of it, its LFW flip and 0.2
    point below that."""
    plt = pyplot()
    ref, near = near_reference(board, reference)
    fig, axes = plt.subplots(1, 2 if ref else 1, figsize=(14, 5.5) if ref else (7.5, 5), squeeze=False)
    ax = axes[0][0]
    pts = [r for r in board.rows if r.ms is not None and r.lfw_flip is not None]
    labels = _points(ax, pts, lambda r: r.ms, lambda r: f"{r.name} ({r.form})")
    front = sorted((r for r in pts if r.on_front), key=lambda r: r.ms)
    if len(front) > 1:
        ax.plot([r.ms for r in front], [r.lfw_flip for r in front], "k--", lw=1, zorder=2, label="front")
    ax.set_xscale("log")
    ax.set_xlabel("ONNX Runtime ms per face (batch 1, one thread; fastest form)")
    ax.set_ylabel("LFW View 2 accuracy, flip (%)")
    ax.scatter([], [], c="tab:blue", label="ready models")
    ax.scatter([], [], c="tab:red", label="facekd models")
    ax.legend(loc="lower right", fontsize=8)
    cpu = board.machine.get("cpu", "?")
    ax.set_title(f"facekd board: {cpu}, {board.machine.get('cores')} cores", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    zoom_labels = []
    if ref:
        zx = axes[0][1]
        zoom_labels = _points(zx, near, lambda r: r.ms / ref.ms, lambda r: r.name)
        for v in (0.6, 1.0):
            zx.axvline(v, color="0.4", ls=":", lw=1)
        zx.axhline(ref.lfw_flip, color="tab:blue", ls=":", lw=1, label=f"{reference} ({ref.lfw_flip:.2f})")
        zx.axhline(ref.lfw_flip - 0.2, color="0.4", ls="--", lw=0.8, label="0.2 point below it")
        zx.set_xlabel(f"ms per face as a multiple of {reference}'s fastest form ({ref.form}, {ref.ms:.2f} ms)")
        zx.set_ylabel("LFW View 2 accuracy, flip (%)")
        zx.set_title(f"near {reference}: within {ZOOM_MS:g}x its ms and {ZOOM_POINTS:g} point of its LFW", fontsize=9)
        zx.legend(loc="lower right", fontsize=8)
        zx.grid(True, alpha=0.3)
        zx.set_xlim(right=1.15 * max(r.ms / ref.ms for r in near))  # room for the labels at the right edge
    fig.tight_layout()
    _declutter(fig, ax, labels)
    if ref:
        _declutter(fig, axes[0][1], zoom_labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
