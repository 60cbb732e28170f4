"""Models side by side, as ``facekd demo`` prints them: LFW accuracy (plain and flip),
size, and ONNX Runtime latency per face on this CPU, and each student's speed-up over
the teacher it was distilled from.

Every model is timed the same way: exported to ONNX (or its shipped ONNX file), batch 1,
one thread, in interleaved rounds (:func:`facekd.runtime.timing.measure_latency`), so a
burst of load falls on all alike. A figure that could not be measured here (a teacher
whose package is not installed, a teacher's LFW on its own crops) is taken from the
weights manifest and marked as recorded.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from facekd.deploy.export import export_onnx
from facekd.errors import FacekdError
from facekd.evaluation.embed import OnnxEmbedder
from facekd.evaluation.pairs import evaluate_pairs_plain_and_flip
from facekd.evaluation.plots import plot_roc
from facekd.hub import resolve
from facekd.hub.resolved import ResolvedModel
from facekd.io_utils import atomic_write_json
from facekd.runtime.timing import measure_latency
from facekd.weights import manifest, onnx_models

Progress = Callable[[int, int], None]


@dataclass
class ComparedModel:
    """One model of the comparison.

    Attributes:
        name: What the table calls it.
        role: "reference", "teacher", "student", or what a shipped model says it is
            (its manifest's ``role``, e.g. "INT8 of mobilefacenet").
        resolved: The model (None: only ``recorded`` figures, e.g. its package is missing).
        teacher: For a student, the name of the teacher it was distilled from.
        recorded: Figures from the manifest for what is not measured here
            (``lfw_plain``, ``lfw_flip``, ``ms``, ``params``, ``mb``, ``how``).
        lfw: "plain" / "flip" -> :class:`~facekd.evaluation.pairs.PairsEvaluation`, once evaluated.
        onnx: The ONNX file it is evaluated and timed as, once made (:func:`ensure_onnx`).
    """

    name: str
    role: str
    resolved: ResolvedModel | None
    teacher: str | None = None
    recorded: dict = field(default_factory=dict)
    lfw: dict = field(default_factory=dict)
    onnx: Path | None = None


@dataclass(frozen=True)
class ComparisonRow:
    """A line of the comparison; ``None`` where a figure is unknown."""

    model: str
    role: str
    teacher: str | None
    params: int | None
    mb: float | None
    ms: float | None  # ONNX Runtime, batch 1, one thread, median of interleaved rounds
    lfw_plain: float | None  # %
    lfw_flip: float | None
    lfw_flip_std: float | None
    speedup: float | None  # the teacher's ms / this model's ms
    recorded: tuple[str, ...] = ()  # which figures come from the manifest, not this machine


def shipped_students(say: Callable[[str], None] = print,
                     only_teacher: str | None = None) -> list[tuple[ComparedModel, ComparedModel]]:
    """(student, teacher) for each ONNX student in the weights manifest (with
    ``only_teacher``: only the best of that model's students, by recorded LFW flip). The
    teacher is resolved when its package is installed (to time it here); its LFW figure
    is the recorded one, measured on its own crops (the entry's ``teacher.recorded``)."""
    names = onnx_models()
    if only_teacher is not None:
        own = [n for n in names if manifest()[n]["teacher"]["model"] == only_teacher]
        best = max(own, key=lambda n: manifest()[n].get("lfw", {}).get("flip", 0.0), default=None)
        for n in names:
            if n != best:
                say(f"{n} left out: only the best shipped student of {only_teacher} is shown")
        names = [best] if best else []
    out = []
    for name in names:
        t = manifest()[name]["teacher"]
        try:
            teacher_model = resolve(t["model"], t.get("weights"))
        except FacekdError as exc:
            say(f"{t['model']} cannot be loaded here ({exc}); its recorded figures are shown")
            teacher_model = None
        teacher = ComparedModel(t["model"], "teacher", teacher_model, recorded=t.get("recorded", {}))
        # A shipped model may say what it is ("INT8 of mobilefacenet"); by default a student.
        student = ComparedModel(name, manifest()[name].get("role", "student"), resolve(name), teacher=t["model"])
        out.append((student, teacher))
    return out


def evaluate_lfw(model: ComparedModel, lfw: Path, detector: str, onnx_folder: Path,
                 align_progress: Progress | None = None, embed_progress: Progress | None = None) -> dict:
    """LFW View 2, plain and flip from one pass, on ``lfw`` aligned (into the cache,
    resumably) with the model's template and ``detector``. The model runs as the ONNX
    file it is timed as (ONNX Runtime; several times faster than PyTorch eager for
    student5 on a CPU), or as its own embedder where it has no ONNX form."""
    path = ensure_onnx(model, onnx_folder)
    embedder = OnnxEmbedder(path, pre=model.resolved.pre) if path is not None else model.resolved.embedder()
    embedder.name = model.name
    return evaluate_pairs_plain_and_flip(embedder, lfw, detector=detector, align_progress=align_progress,
                                         embed_progress=embed_progress)


def ensure_onnx(model: ComparedModel, folder: Path) -> Path | None:
    """The model's ONNX file, made once (see :func:`onnx_file`)."""
    if model.onnx is None:
        model.onnx = onnx_file(model, folder)
    return model.onnx


def onnx_file(model: ComparedModel, folder: Path) -> Path | None:
    """The model as an ONNX file: its own, or its backbone exported into ``folder``."""
    r = model.resolved
    if r is None:
        return None
    if r.path is not None and r.path.suffix.lower() == ".onnx":
        return r.path
    if r.backbone is None:
        return None  # an external embedder (dlib) has no ONNX form
    path = folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", model.name).strip("_") + ".onnx")
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(r.backbone, path, input_size=tuple(r.pre.input_size))  # anew: the weights may have changed
    return path


def onnx_params(path: Path) -> int:
    """Weights in an ONNX file: the elements of its initializers."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return int(sum(np.prod(init.dims) for init in proto.graph.initializer))


def time_onnx(paths: dict[str, Path], rounds: int = 15) -> dict[str, float]:
    """Median ms per face of each ONNX file: batch 1, one thread, interleaved rounds."""
    return {name: t.median_ms for name, t in measure_latency(paths, rounds=rounds).items()}


def compare(models: list[ComparedModel], onnx_folder: Path) -> list[ComparisonRow]:
    """Times every model and assembles the rows, each student's speed-up over its teacher."""
    files = {m.name: p for m in models if (p := ensure_onnx(m, onnx_folder)) is not None}
    ms = time_onnx(files) if files else {}
    rows = [_row(m, files.get(m.name), ms.get(m.name)) for m in models]
    by_name = {r.model: r for r in rows}
    return [replace(r, speedup=t.ms / r.ms) if (t := by_name.get(r.teacher)) and t.ms and r.ms else r for r in rows]


def _row(m: ComparedModel, onnx: Path | None, ms: float | None) -> ComparisonRow:
    """The measured figures, and the recorded ones where nothing was measured."""
    rec = m.recorded
    recorded = [k for k in ("params", "mb", "ms") if onnx is None and k in rec]
    recorded += [k for k in ("lfw_plain", "lfw_flip") if not m.lfw and k in rec]
    plain, flip = m.lfw.get("plain"), m.lfw.get("flip")
    return ComparisonRow(
        model=m.name, role=m.role, teacher=m.teacher,
        params=onnx_params(onnx) if onnx else rec.get("params"),
        mb=onnx.stat().st_size / 2**20 if onnx else rec.get("mb"),
        ms=ms if ms is not None else rec.get("ms"),
        lfw_plain=100 * plain.result.accuracy if plain else rec.get("lfw_plain"),
        lfw_flip=100 * flip.result.accuracy if flip else rec.get("lfw_flip"),
        lfw_flip_std=100 * flip.result.std if flip else rec.get("lfw_flip_std"),
        speedup=None,
        recorded=tuple(recorded),
    )


def _fmt(v, spec: str, suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def comparison_table(rows: list[ComparisonRow]) -> list[str]:
    """The rows as aligned text lines; figures recorded rather than measured carry a *."""
    w = max([26, *(len(r.model) + 2 for r in rows)])  # whole names: the demo's rows are read by them
    lines = [f"{'model':<{w}}{'role':<28}{'params':>9}{'MB':>7}{'ms/face':>9}{'speed-up':>9}"
             f"{'LFW plain':>11}{'LFW flip':>17}"]
    for r in rows:
        def star(key: str) -> str:
            return "*" if key in r.recorded else " "

        role = f"student of {r.teacher}" if r.teacher and r.role == "student" else r.role
        flip = "-" if r.lfw_flip is None else f"{r.lfw_flip:.2f} ± {r.lfw_flip_std or 0:.2f}"
        lines.append(
            f"{r.model:<{w}}{role[:27]:<28}{_fmt(r.params and r.params / 1e6, '.2f', ' M'):>8}{star('params')}"
            f"{_fmt(r.mb, '.1f'):>6}{star('mb')}{_fmt(r.ms, '.2f'):>8}{star('ms')}{_fmt(r.speedup, '.1f', 'x'):>9}"
            f"{_fmt(r.lfw_plain, '.2f'):>10}{star('lfw_plain')}{flip:>16}{star('lfw_flip')}"
        )
    if any(r.recorded for r in rows):
        lines.append("* recorded in weights/manifest.json (not measurable here: a teacher on its own crops, "
                     "or its package is missing)")
    return lines


def print_comparison(rows: list[ComparisonRow]) -> None:
    for line in comparison_table(rows):
        print("    " + line)


def write_outputs(rows: list[ComparisonRow], models: list[ComparedModel], out: Path) -> list[Path]:
    """``comparison.json`` (rows and each LFW evaluation) and ``lfw_roc.png`` (every
    model evaluated here, flip); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    data = {"rows": [asdict(r) for r in rows],
            "lfw": {m.name: {k: v.to_dict() for k, v in m.lfw.items()} for m in models if m.lfw}}
    atomic_write_json(out / "comparison.json", data)
    plot_roc({f"{m.name} flip": m.lfw["flip"].result for m in models if "flip" in m.lfw}, out / "lfw_roc.png")
    return [out / "comparison.json", out / "lfw_roc.png"]
