"""The accuracy–latency board: every ready model and every facekd model, measured in one
run on this CPU, and the front they draw.

Each model is measured the same way: LFW View 2 plain and flip (10-fold accuracy,
TAR@FAR=1e-3) on one set of crops, parameters and MACs counted from its ONNX graph, and
ONNX Runtime latency per face (batch 1, one thread, every model's FP32 and INT8 forms
interleaved round by round, medians; :func:`facekd.runtime.timing.measure_latency`). A
model's *fastest form* is its INT8 form where one exists and is faster, else FP32; its
LFW figures are those of that form. A figure that cannot be measured here (a teacher on
crops of its own geometry, a model without an ONNX form) is taken from the weights
manifest and listed in the row's ``recorded``.

The front is the set of rows no other row beats on both LFW flip and latency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import facekd.hub.sources  # noqa: F401  (registers dlib_resnet with the hub)
from facekd.deploy.macs import count_macs
from facekd.errors import FacekdError
from facekd.experiments.board_forms import BoardSpec, Entry, calibration, measure_lfw, onnx_forms, own_call
from facekd.experiments.compare import onnx_params
from facekd.hub import resolve
from facekd.runtime.timing import measure_latency
from facekd.train.speed import cpu_info
from facekd.weights import onnx_models

Say = Callable[[str], None]


@dataclass(frozen=True)
class BoardRow:
    """One model's figures; ``None`` where unknown.

    Attributes:
        form: The form the LFW and ``ms`` columns describe: "fp32", "int8" or "own
            runtime" (a model with no ONNX form, timed through its own library).
        fp32_ms, int8_ms: ONNX Runtime ms per face of each form (batch 1, one thread).
        ms: The fastest form's ms.
        tar_far_1e3: TAR at FAR = 1e-3 with flip, %.
        int8_note: Why there is no INT8 form, where there is none.
        recorded: Which figures come from the manifest, not from this run.
        on_front: No other row has both higher LFW flip and lower ms.
    """

    name: str
    kind: str
    form: str | None
    params: int | None
    macs: int | None
    fp32_ms: float | None
    int8_ms: float | None
    ms: float | None
    lfw_plain: float | None
    lfw_flip: float | None
    lfw_flip_std: float | None
    tar_far_1e3: float | None
    int8_note: str | None = None
    recorded: tuple[str, ...] = ()
    on_front: bool = False


@dataclass
class Board:
    """A board run: its rows and the machine it ran on."""

    rows: list[BoardRow]
    machine: dict
    protocol: str

    def to_dict(self) -> dict:
        return {"machine": self.machine, "protocol": self.protocol, "rows": [asdict(r) for r in self.rows]}


# LFW figures of the ready models measured on their own crops (eval/teacher_lfw.py, the
# MTCNN detections of facekd align; docs/BENCHMARKS.md, "Ready teachers"), used where a
# board run cannot align LFW with a model's own crop geometry. The ensemble's members are
# the three models above it; its latency is the sum of theirs.
TEACHER_LFW_HOW = "eval/teacher_lfw.py on the model's own crops (MTCNN detections), 2026-11"
READY_RECORDED = {
    "mobilefacenet": {"lfw_plain": 98.97, "lfw_flip": 99.07, "lfw_flip_std": 0.40, "how": TEACHER_LFW_HOW},
    "facenet_casia": {"lfw_plain": 98.80, "lfw_flip": 99.02, "lfw_flip_std": 0.52, "how": TEACHER_LFW_HOW},
    "dlib_resnet": {"lfw_plain": 98.68, "how": TEACHER_LFW_HOW},
    "ensemble": {"lfw_flip": 99.25, "lfw_flip_std": 0.39, "tar_far_1e3": 98.53, "how": TEACHER_LFW_HOW},
}
ENSEMBLE_MEMBERS = ("facenet_casia", "mobilefacenet", "dlib_resnet")


def ready_specs() -> list[BoardSpec]:
    """The published models facekd knows, with the figures recorded for them."""
    return [
        BoardSpec("mobilefacenet", "mobilefacenet", weights="mobilefacenet_casia", kind="ready",
                  recorded=READY_RECORDED["mobilefacenet"]),
        BoardSpec("facenet_casia", "facenet_casia", kind="ready", recorded=READY_RECORDED["facenet_casia"]),
        BoardSpec("dlib_resnet", "dlib_resnet", kind="ready", recorded=READY_RECORDED["dlib_resnet"]),
    ]


def ensemble_row(rows: list[BoardRow]) -> BoardRow | None:
    """The ensemble of :data:`ENSEMBLE_MEMBERS`: its recorded LFW, the sum of its
    members' measured latency and parameters (None unless every member was measured).
    Its LFW was recorded with every member in full precision, so each member is costed
    in its FP32 form (or its own runtime), not in an INT8 form that figure never saw."""
    by = {r.name: r for r in rows}
    members = [by.get(m) for m in ENSEMBLE_MEMBERS]
    if any(m is None or m.ms is None for m in members):
        return None
    rec = READY_RECORDED["ensemble"]
    params = sum(m.params for m in members) if all(m.params for m in members) else None
    ms = sum(m.fp32_ms if m.fp32_ms is not None else m.ms for m in members)
    return BoardRow(
        name="ensemble", kind="ready", form="members' FP32", params=params, macs=None, fp32_ms=None,
        int8_ms=None, ms=ms, lfw_plain=None, lfw_flip=rec["lfw_flip"],
        lfw_flip_std=rec["lfw_flip_std"], tar_far_1e3=rec["tar_far_1e3"], recorded=("lfw_flip", "tar_far_1e3"),
    )


def shipped_specs() -> list[BoardSpec]:
    """Every ONNX model facekd ships (weights/manifest.json)."""
    return [BoardSpec(name, name, kind="facekd") for name in onnx_models()]


def machine_facts() -> dict:
    """The CPU this board ran on, its SIMD flags that matter for latency, and versions."""
    import onnxruntime as ort

    cpu = cpu_info()
    return {"cpu": cpu.model, "cores": cpu.cores, "flags": list(cpu.simd), "onnxruntime": ort.__version__}


def _acc(ev, key: str) -> float | None:
    if ev is None:
        return None
    r = ev.result
    if key == "acc":
        return 100 * r.accuracy
    if key == "std":
        return 100 * r.std
    return 100 * r.tar_at_far.get(1e-3, float("nan"))


def pareto_front(points: list[tuple[float | None, float | None]]) -> list[bool]:
    """For each (ms, accuracy): whether no other point has lower-or-equal ms and
    higher-or-equal accuracy, one of them strictly. Points with a None are off the front."""
    out = []
    for i, (ms, acc) in enumerate(points):
        if ms is None or acc is None:
            out.append(False)
            continue
        dominated = any(
            j != i and m is not None and a is not None and m <= ms and a >= acc and (m < ms or a > acc)
            for j, (m, a) in enumerate(points)
        )
        out.append(not dominated)
    return out


def _row(e: Entry, t: dict) -> BoardRow:
    fp32_ms = t[f"{e.spec.name}/fp32"].median_ms if f"{e.spec.name}/fp32" in t else None
    int8_ms = t[f"{e.spec.name}/int8"].median_ms if f"{e.spec.name}/int8" in t else None
    own_ms = t[f"{e.spec.name}/own"].median_ms if f"{e.spec.name}/own" in t else None
    forms = {k: v for k, v in (("fp32", fp32_ms), ("int8", int8_ms), ("own runtime", own_ms)) if v is not None}
    form = min(forms, key=forms.get) if forms else None
    if form == "int8" and "fp32" in forms and not e.lfw and "lfw_flip" in e.spec.recorded:
        form = "fp32"  # its LFW comes from the record, which is of the full-precision model
    ev = e.lfw.get(form) or (e.lfw.get("fp32") if form == "int8" else None)
    rec, recorded = e.spec.recorded, []
    path = e.int8 if form == "int8" else e.fp32
    params = macs = None
    if path is not None:
        params = onnx_params(path)
        try:
            macs = count_macs(e.fp32 or path)
        except FacekdError:  # a graph whose shapes do not infer: the row keeps its other figures
            macs = None
    elif "params" in rec:
        params, recorded = rec["params"], recorded + ["params"]
    ms = forms.get(form) if form else None
    if ms is None and "ms" in rec:
        ms, recorded = rec["ms"], recorded + ["ms"]
    plain, flip = (ev.get("plain"), ev.get("flip")) if ev else (None, None)
    lfw_plain, lfw_flip, std = _acc(plain, "acc"), _acc(flip, "acc"), _acc(flip, "std")
    tar = _acc(flip, "tar")
    if lfw_flip is None and "lfw_flip" in rec:
        lfw_flip, std, recorded = rec["lfw_flip"], rec.get("lfw_flip_std"), recorded + ["lfw_flip"]
    if lfw_plain is None and "lfw_plain" in rec:
        lfw_plain, recorded = rec["lfw_plain"], recorded + ["lfw_plain"]
    return BoardRow(
        name=e.spec.name, kind=e.spec.kind, form=form, params=params, macs=macs, fp32_ms=fp32_ms, int8_ms=int8_ms,
        ms=ms, lfw_plain=lfw_plain, lfw_flip=lfw_flip, lfw_flip_std=std, tar_far_1e3=tar,
        int8_note=e.int8_note or e.problem, recorded=tuple(recorded),
    )


def run_board(
    specs: list[BoardSpec],
    lfw: Path,
    *,
    work: Path,
    calib: Path | Sequence[Path] | None = None,
    detector: str = "mtcnn",
    rounds: int = 15,
    say: Say = print,
) -> Board:
    """Measures every model of ``specs`` in one run (see the module docstring).

    Args:
        lfw: LFW with pairs.txt (raw photos, aligned into the cache with each model's
            template; or aligned crops; or a pack).
        work: Folder for the exported ONNX files and each form's LFW figures (kept for
            a later run of the same models, LFW and detector).
        calib: Aligned training faces (folder or pack), or several, to calibrate INT8 on;
            each model uses the first whose crops convert to its template. Without any,
            the ready models get no INT8 form.
        rounds: Interleaved timing rounds.
    """
    entries = []
    for spec in specs:
        e = Entry(spec)
        try:
            e.resolved = resolve(spec.model, spec.weights, allow_download=False)
        except FacekdError as exc:
            e.problem = f"not loadable here: {exc}"
            say(f"  {spec.name}: {e.problem}; its recorded figures are shown")
        entries.append(e)
    sources = [Path(c) for c in ([calib] if isinstance(calib, (str, Path)) else calib or [])]
    calib_cache: dict[str, tuple[tuple[np.ndarray, np.ndarray] | None, str]] = {}
    for e in entries:
        if e.resolved is None:
            continue
        cp, no_calib = calibration(sources, e.resolved.pre, calib_cache)
        onnx_forms(e, work, cp[0] if cp else None, cp[1] if cp else None, say, no_calib)
        if e.fp32 is None and e.int8 is None:
            e.own_call = own_call(e.resolved)
    for e in entries:
        if e.resolved is None:
            continue
        for form, path in (("fp32", e.fp32), ("int8", e.int8)):
            if path is not None:
                measure_lfw(e, form, path, lfw, detector, work, say)
        if e.fp32 is None and e.int8 is None:
            measure_lfw(e, "own runtime", None, lfw, detector, work, say)
    targets = {}
    for e in entries:
        if e.fp32 is not None:
            targets[f"{e.spec.name}/fp32"] = e.fp32
        if e.int8 is not None:
            targets[f"{e.spec.name}/int8"] = e.int8
        if e.own_call is not None:
            targets[f"{e.spec.name}/own"] = e.own_call
    say(f"timing {len(targets)} forms, interleaved, {rounds} rounds (batch 1, one thread)")
    timings = measure_latency(targets, rounds=rounds) if targets else {}
    rows = [_row(e, timings) for e in entries]
    if (ens := ensemble_row(rows)) is not None:
        rows.append(ens)
    front = pareto_front([(r.ms, r.lfw_flip) for r in rows])
    rows = [replace(r, on_front=f) for r, f in zip(rows, front)]
    protocol = (f"LFW View 2 ({lfw}), 10 folds, {detector} crops; ONNX Runtime batch 1, one thread, "
                f"{rounds} interleaved rounds, medians")
    return Board(rows, machine_facts(), protocol)
