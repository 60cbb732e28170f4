"""One model on the board (:mod:`facekd.experiments.board`): what names it, its FP32 and INT8 ONNX
files and their calibration, a model without an ONNX form called through its own library,
and each form's LFW figures, kept in the work folder for a later run of the same model
bytes, LFW and detector (the untimed part of a board: it resumes, and needs no idle machine)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facekd.align.template import TemplateMismatch
from facekd.deploy.export import calibration_and_probe, default_normalize, export_onnx
from facekd.deploy.quantize import quantize_int8
from facekd.download import sha256_of
from facekd.errors import FacekdError
from facekd.evaluation.embed import OnnxEmbedder
from facekd.evaluation.pairs import PairsEvaluation, evaluate_pairs_plain_and_flip
from facekd.io_utils import atomic_write_json
from facekd.onnx_metadata import MODEL_META_KEY, ModelInfo, read_metadata
from facekd.progress import progress_bar

Say = Callable[[str], None]


@dataclass(frozen=True)
class BoardSpec:
    """A model to put on the board.

    Attributes:
        name: The row's name.
        model: What :func:`facekd.hub.resolve` takes (a name, checkpoint or ``.onnx``).
        weights: Weights for a registered backbone (a file or manifest name).
        kind: "ready" (a published model) or "facekd" (made by facekd).
        recorded: Figures measured elsewhere, used where this run cannot measure them
            (``lfw_plain``, ``lfw_flip``, ``lfw_flip_std``, ``ms``, ``params``, ``how``).
    """

    name: str
    model: str
    weights: str | None = None
    kind: str = "facekd"
    recorded: dict = field(default_factory=dict)


@dataclass
class Entry:
    """A model of the board as it is measured: its resolved model, forms and LFW figures."""

    spec: BoardSpec
    resolved: object | None = None
    fp32: Path | None = None
    int8: Path | None = None
    int8_note: str | None = None
    own_call: Callable[[], object] | None = None
    lfw: dict = field(default_factory=dict)  # form -> {"plain": PairsEvaluation, "flip": ...}
    problem: str | None = None


def slug(name: str) -> str:
    """``name`` as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def onnx_forms(e: Entry, folder: Path, calib: np.ndarray | None, probe: np.ndarray | None, say: Say,
                no_calib: str) -> None:
    """The entry's FP32 and INT8 ONNX files: its own file, or its backbone exported and
    quantized with facekd's recipes (INT8 kept only where it is faster and faithful);
    ``no_calib``: why there is no ``calib`` (the INT8 note when it is None)."""
    r = e.resolved
    if r.path is not None and r.path.suffix.lower() == ".onnx":
        meta = read_metadata(r.path)
        info = ModelInfo.from_json(meta[MODEL_META_KEY]) if MODEL_META_KEY in meta else None
        if info is not None and info.int8:
            e.int8 = r.path  # a shipped INT8 model: its FP32 form is not shipped
        else:
            e.fp32 = r.path
        return
    if r.backbone is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    e.fp32 = folder / f"{slug(e.spec.name)}.fp32.onnx"
    say(f"  {e.spec.name}: exporting to ONNX")
    export_onnx(r.backbone, e.fp32, input_size=tuple(r.pre.input_size), normalize=default_normalize(r.pre))
    if calib is None:
        e.int8_note = no_calib
        return
    out = folder / f"{slug(e.spec.name)}.int8.onnx"
    try:
        res = quantize_int8(e.fp32, out, "static", calib=calib, probe=probe)
        e.int8 = out
        say(f"  {e.spec.name}: INT8 {res.recipe}, {res.ratio:.2f}x FP32 latency in the quantizer's own timing")
    except FacekdError as exc:
        e.int8_note = str(exc)
        say(f"  {e.spec.name}: no INT8 form ({exc})")


def calibration(calib: Sequence[Path], pre, cache: dict) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """The calibration and probe faces for a model reading ``pre``'s crops, from the
    first source of ``calib`` whose crops convert to its template (``adapt_crop``'s
    rule: 112x96 and 112x112 convert into each other, facenet160 into neither); or None
    and why not. ``cache`` keeps one answer per template."""
    if not calib:
        return None, "no calibration faces given (--calib)"
    if pre.template not in cache:
        why = []
        for source in calib:
            try:
                x, probe, _ = calibration_and_probe(source, pre, tuple(pre.input_size))
            except TemplateMismatch as exc:
                why.append(f"{source.name}: {exc}")
                continue
            cache[pre.template] = (x, probe), ""
            break
        else:
            cache[pre.template] = None, (f"INT8 not tried: it reads {pre.template} crops, which cannot be cut "
                                          f"from the faces of --calib ({'; '.join(why)})")
    return cache[pre.template]


def measure_lfw(e: Entry, form: str, path: Path | None, lfw: Path, detector: str, work: Path, say: Say) -> None:
    """LFW plain and flip of one form, or the figures an earlier board run in ``work`` kept for
    the same model bytes, LFW and detector (untimed work: a board stopped before its timing
    resumes from here, and the accuracies need no idle machine)."""
    kept = work / f"lfw-{slug(e.spec.name)}-{slug(form)}.json"
    key = {"version": 1, "model": sha256_of(path) if path is not None else e.resolved.key,
           "template": e.resolved.pre.template, "lfw": str(Path(lfw).resolve()), "detector": detector}
    if (found := _kept_lfw(kept, key, say)) is not None:
        e.lfw[form] = found
        say(f"  {e.spec.name} {form}: LFW kept by an earlier run ({kept})")
        return
    emb = OnnxEmbedder(path, pre=e.resolved.pre) if path is not None else e.resolved.embedder()
    emb.name = f"{e.spec.name} {form}"
    try:
        e.lfw[form] = evaluate_pairs_plain_and_flip(emb, lfw, detector=detector,
                                                    embed_progress=progress_bar(f"{e.spec.name} {form}"))
    except FacekdError as exc:
        say(f"  {e.spec.name} {form}: LFW not measured here ({exc}); the recorded figure is shown")
        return
    atomic_write_json(kept, {"key": key, **{mode: ev.to_dict() for mode, ev in e.lfw[form].items()}})


def _kept_lfw(kept: Path, key: dict, say: Say) -> dict[str, PairsEvaluation] | None:
    """The evaluations in ``kept`` if it was written for ``key``; None otherwise (a file that
    does not parse is measured again, with a note)."""
    if not kept.is_file():
        return None
    try:
        d = json.loads(kept.read_text())
        if d.get("key") != key:
            return None
        return {mode: PairsEvaluation.from_dict(d[mode]) for mode in ("plain", "flip")}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        say(f"  {kept}: not a board LFW file ({type(exc).__name__}: {exc}); measuring again")
        return None


def own_call(resolved) -> Callable[[], object] | None:
    """A batch-1 call of a model that only runs through its own library (dlib), on one
    thread where the library allows."""
    try:
        emb = resolved.embedder()
    except FacekdError:
        return None
    h, w = resolved.pre.input_size
    face = np.zeros((1, h, w, 3), np.uint8)
    return lambda: emb(face)  # an Embedder is called on a uint8 batch (N, H, W, 3)
