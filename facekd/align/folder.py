"""``facekd align``: a whole folder of photos to aligned crops, resumable, on every core.

The one module that writes and reads ``align_report.json`` (:class:`AlignReport`) and the
state file.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

import numpy as np

from facekd.align.aligner import align_detected
from facekd.align.detector import build_detector, check_detector, detector_key
from facekd.align.template import Template, get_template
from facekd.errors import FacekdError
from facekd.image_io import UnreadableImage, read_rgb
from facekd.io_utils import atomic_write_bytes, atomic_write_json
from facekd.workers import run_in_workers

REPORT_NAME = "align_report.json"
STATE_NAME = ".align_state.jsonl"
# Copied as they are, so an aligned LFW folder keeps its pairs.txt.
METADATA_SUFFIXES = frozenset({".txt", ".csv", ".json", ".md", ".lst", ".tsv"})
# Suffixes an RGB crop can be written under as they are; others become .png.
_WRITABLE = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}
CHUNK = 8


@dataclass(frozen=True)
class AlignOptions:
    """How ``facekd align`` runs."""

    template: str = "112x96"
    detector: str = "mtcnn"  # a name in facekd.align.detector.DETECTORS
    workers: int = 0  # 0: every core
    device: str = "cpu"
    min_face_size: int = 20
    jpeg_quality: int = 95


@dataclass(frozen=True)
class Unreadable:
    """A photo ``facekd align`` could not read, and why."""

    file: str  # relative to the source folder
    reason: str


@dataclass(frozen=True)
class AlignReport:
    """What :func:`align_folder` did; ``align_report.json`` holds these fields as they are.

    Paths of photos are relative to ``src``; ``images`` counts the photos covered (all,
    or the requested ``files``), ``resumed`` those an earlier run had aligned and
    ``processed`` those this run tried.
    """

    src: str
    dst: str
    template: str
    detector: str
    images: int
    aligned: int
    fallback: int  # photos with no detected face, cut with the central box
    unreadable: list[Unreadable]
    fallback_files: list[str]
    multiple_faces: int  # photos in which the detector found more than one face
    metadata_copied: list[str]
    resumed: int
    processed: int
    workers: int
    seconds: float
    images_per_second: float | None  # None when nothing was processed

    def to_json(self) -> dict:
        """The ``align_report.json`` object."""
        return asdict(self)


def recorded_fallbacks(folder: Path) -> list[str] | None:
    """The central-box fallback crops the ``align_report.json`` in ``folder`` lists (None:
    no report there, or one without the list)."""
    path = folder / REPORT_NAME
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8
        raise FacekdError(f"{path}: cannot read the align report ({exc})") from None
    if not isinstance(report, dict):
        raise FacekdError(f"{path}: an align report is a JSON object, got {type(report).__name__}")
    files = report.get("fallback_files")
    if files is not None and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        raise FacekdError(f"{path}: fallback_files must be a list of paths")
    return files


def output_relpath(rel: str) -> str:
    """Where the crop of SRC/``rel`` goes under DST (same path; .png for odd formats)."""
    p = Path(rel)
    return rel if p.suffix.lower() in _WRITABLE else str(p.with_suffix(".png"))


def scan_folder(src: Path) -> tuple[list[str], list[str]]:
    """Image candidates and metadata files under ``src``, as sorted relative paths.

    Hidden files and facekd's own report files are skipped. Every other file that is
    not metadata is a candidate: one that does not decode is reported as unreadable.
    """
    images: list[str] = []
    metadata: list[str] = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name == REPORT_NAME:
                continue
            rel = os.path.relpath(os.path.join(root, name), src)
            (metadata if Path(name).suffix.lower() in METADATA_SUFFIXES else images).append(rel)
    return images, metadata


# --- worker side -------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(src: str, dst: str, opts: AlignOptions, template: Template, threads: int) -> None:
    """Builds the worker's detector; ``template`` is passed resolved, since a spawned
    worker knows only the templates its imports register. A failure is raised by
    every chunk (see facekd.workers)."""
    # MTCNN's R- and O-nets see a new batch size on almost every photo; oneDNN's
    # primitive cache keeps a kernel for each, and a worker grew by ~1 MB per 3 photos
    # (1.1 GB -> 1.45 GB in 30 s on LFW). Without the cache it stays flat at ~850 MB
    # for ~7% less speed. Must be set before torch first runs a convolution.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    _WORKER.clear()
    try:
        detector = build_detector(opts.detector, device=opts.device, min_face_size=opts.min_face_size)
    except Exception as exc:  # noqa: BLE001 - the reason, with the detector named
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FacekdError(f"detector {opts.detector!r} (device {opts.device}) cannot start: {reason}") from None
    if detector.uses_torch:
        import torch  # only a torch detector pays for importing torch in every worker

        torch.set_num_threads(threads)
    else:
        import cv2

        cv2.setNumThreads(threads)
    _WORKER.update(src=Path(src), dst=Path(dst), opts=opts, template=template, detector=detector)


def _encode(crop: np.ndarray, suffix: str, quality: int) -> bytes:
    from PIL import Image

    fmt = _WRITABLE.get(suffix.lower(), "PNG")
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(crop, "RGB").save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _align_chunk(rels: list[str]) -> list[dict]:
    src, dst, opts = _WORKER["src"], _WORKER["dst"], _WORKER["opts"]
    template: Template = _WORKER["template"]
    results: list[dict] = []
    images: list[np.ndarray] = []
    keep: list[str] = []
    for rel in rels:
        try:
            images.append(read_rgb(src / rel))
            keep.append(rel)
        except UnreadableImage as exc:
            results.append({"file": rel, "status": "unreadable", "reason": str(exc)})
        except OSError as exc:  # permission denied, vanished file
            results.append({"file": rel, "status": "unreadable", "reason": f"cannot read file ({exc.strerror or exc})"})
    detector = _WORKER["detector"]
    detections = detector.detect_batch(images) if images else []
    for rel, img, dets in zip(keep, images, detections):
        face = align_detected(img, dets, template, detector.min_score)
        out_rel = output_relpath(rel)
        atomic_write_bytes(dst / out_rel, _encode(face.crop, Path(out_rel).suffix, opts.jpeg_quality))
        rec = {
            "file": rel,
            "status": "fallback" if face.fallback else "aligned",
            "faces": face.faces,
            "score": round(face.score, 4),
            "size": [int(img.shape[1]), int(img.shape[0])],
        }
        if face.landmarks is not None:  # lets a later step re-cut the photo for another geometry
            rec["landmarks"] = np.round(face.landmarks, 2).tolist()
        results.append(rec)
    return results


# --- main side -----------------------------------------------------------------------


def _read_state(path: Path) -> dict[str, dict]:
    """Per-file results of earlier runs; a torn last line (a crash mid-write) is ignored."""
    state: dict[str, dict] = {}
    if not path.exists():
        return state
    with path.open() as f:
        for line in f:
            try:
                rec = json.loads(line)
                state[rec["file"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return state


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def align_folder(
    src: Path | str,
    dst: Path | str,
    opts: AlignOptions = AlignOptions(),
    progress: Callable[[int, int], None] | None = None,
    files: list[str] | None = None,
) -> AlignReport:
    """Aligns every photo under ``src`` into ``dst`` (same layout) and writes the report.

    Files already aligned by an earlier run (recorded in ``dst``'s state file, crop
    present) are skipped, so an interrupted run resumes.

    Args:
        src: Folder of photos, any depth.
        dst: Output folder; created. Must not be inside ``src``.
        opts: Template, detector, workers, device.
        progress: Called with (done, total) after each chunk.
        files: Only these photos (paths relative to ``src``), e.g. the images LFW's
            pairs use or a training slice; the report then covers just them.

    Returns:
        The report, also written to ``dst/align_report.json``.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_dir():
        raise FacekdError(f"{src}: source folder does not exist or is not a folder")
    if dst == src or src in dst.parents:
        raise FacekdError(f"{dst}: the output folder must not be the source folder or inside it")
    template = get_template(opts.template)
    check_detector(opts.detector)  # an unknown name fails here, listing the known ones
    dst.mkdir(parents=True, exist_ok=True)
    images, metadata = _photos_and_metadata(src, dst, files)

    state_path = dst / STATE_NAME
    state = _read_state(state_path)
    old_template = _check_state_header(state.pop("__template__", {}), dst, template.key,
                                       detector_key(opts.detector))
    done = {
        rel
        for rel, rec in state.items()
        if rec.get("status") in ("aligned", "fallback") and (dst / output_relpath(rel)).exists()
    }
    todo = [rel for rel in images if rel not in done]
    workers = opts.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(todo) // CHUNK + 1))
    started = time.perf_counter()
    with state_path.open("a") as state_file:
        if old_template is None:
            first = {"file": "__template__", "template": template.key, "detector": detector_key(opts.detector)}
            state_file.write(json.dumps(first) + "\n")
        _align_todo(src, dst, opts, todo, workers, state, state_file, progress, len(done), len(images))
    elapsed = time.perf_counter() - started

    recs = [state[rel] for rel in images if rel in state]
    report = _report(src, dst, template.name, opts.detector, recs, metadata, len(images), len(done), len(todo),
                     workers, elapsed)
    atomic_write_json(dst / REPORT_NAME, report.to_json())
    return report


def _photos_and_metadata(src: Path, dst: Path, files: list[str] | None) -> tuple[list[str], list[str]]:
    """The photos to align (all under ``src``, or ``files``) and the metadata files, which
    are copied into ``dst`` as they are."""
    images, metadata = scan_folder(src)
    if files is not None:
        known = set(images)
        missing = [f for f in files if f not in known]
        if missing:
            raise FacekdError(f"{src}: {len(missing)} requested photos are not there, e.g. {', '.join(missing[:5])}")
        images = sorted(set(files))
    for rel in metadata:  # whole or absent to a reader (another run may share dst)
        atomic_write_bytes(dst / rel, (src / rel).read_bytes())
    return images, metadata


def _check_state_header(header: dict, dst: Path, template: str, detector: str) -> str | None:
    """The template an earlier run recorded in ``dst`` (None: a fresh folder); refuses a
    folder of crops from another template or detector."""
    old_template = header.get("template")
    if old_template not in (None, template):
        raise FacekdError(
            f"{dst}: holds crops for template {old_template}, not {template}; use another output folder"
        )
    # Folders written before detectors were selectable hold MTCNN crops.
    old_detector = header.get("detector", "mtcnn") if header else None
    if old_detector not in (None, detector):
        raise FacekdError(
            f"{dst}: holds crops from detector {old_detector}, not {detector}; use another output folder"
        )
    return old_template


def _align_todo(src: Path, dst: Path, opts: AlignOptions, todo: list[str], workers: int, state: dict[str, dict],
                state_file: TextIO, progress: Callable[[int, int], None] | None, count: int, total: int) -> None:
    """Aligns ``todo`` in chunks on ``workers`` processes (this one when 1), recording each
    result in ``state`` and appending it to ``state_file``; ``count`` were done before."""

    def record(batch: list[dict]) -> None:
        for rec in batch:
            state[rec["file"]] = rec
            state_file.write(json.dumps(rec) + "\n")
        state_file.flush()

    if progress:
        progress(count, total)
    template = get_template(opts.template)
    if workers == 1:
        _init_worker(str(src), str(dst), opts, template, threads=max(1, (os.cpu_count() or 1)))
        for chunk in _chunks(todo, CHUNK):
            record(_align_chunk(chunk))
            count += len(chunk)
            if progress:
                progress(count, total)
        return
    batches = run_in_workers(_align_chunk, _chunks(todo, CHUNK), workers, what=f"align {src}",
                             initializer=_init_worker, initargs=(str(src), str(dst), opts, template, 1), ordered=False)
    for batch in batches:
        record(batch)
        count += len(batch)
        if progress:
            progress(count, total)


def _report(src: Path, dst: Path, template: str, detector: str, recs: list[dict], metadata: list[str], total: int,
            resumed: int, processed: int, workers: int, elapsed: float) -> AlignReport:
    """The report, from the per-photo records ``recs``."""
    fallback = [r["file"] for r in recs if r["status"] == "fallback"]
    return AlignReport(
        src=str(src),
        dst=str(dst),
        template=template,
        detector=detector,
        images=total,
        aligned=sum(r["status"] == "aligned" for r in recs),
        fallback=len(fallback),
        unreadable=[Unreadable(r["file"], r["reason"]) for r in recs if r["status"] == "unreadable"],
        fallback_files=fallback,
        multiple_faces=sum(r.get("faces", 0) > 1 for r in recs),
        metadata_copied=metadata,
        resumed=resumed,
        processed=processed,
        workers=workers,
        seconds=round(elapsed, 2),
        images_per_second=round(processed / elapsed, 2) if elapsed > 0 and processed else None,
    )
