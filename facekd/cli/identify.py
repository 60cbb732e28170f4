"""``facekd gallery ...``, ``facekd identify`` and ``facekd eval lfw-ident``: parsing and printing.

The work is done by :mod:`facekd.identify` (the gallery) and
:mod:`facekd.identify.evaluation` (the LFW 1:N protocol).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from facekd.cli.args import onnx_model_arg
from facekd.errors import FacekdError
from facekd.identify.location import is_postgres_url, location_arg, open_gallery_at, open_store
from facekd.progress import progress_bar

PHOTO_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_EXTS)


def enrolment_plan(inputs: list[Path], name: str | None) -> dict[str, list[Path]]:
    """Who to enrol from which photos.

    With ``name``: every photo given, and every photo in every folder given (one level
    of sub-folders too), is ``name``. Without: a folder of ``<name>/`` sub-folders
    enrols each sub-folder as that person (``known/<name>/*.jpg``); a folder holding
    photos directly is the person named after the folder; a lone photo needs ``name``.
    """
    plan: dict[str, list[Path]] = {}
    for item in inputs:
        if not item.exists():
            raise FacekdError(f"{item}: no such file or folder")
        if item.is_file():
            if name is None:
                raise FacekdError(f"{item}: a photo needs --name (or give a folder known/<name>/*.jpg)")
            plan.setdefault(name, []).append(item)
            continue
        subs = sorted(d for d in item.iterdir() if d.is_dir())
        direct = _photos_in(item)
        if name is not None:
            plan.setdefault(name, []).extend(direct + [p for d in subs for p in _photos_in(d)])
            continue
        if direct:
            plan.setdefault(item.resolve().name, []).extend(direct)
        for d in subs:
            if photos := _photos_in(d):
                plan.setdefault(d.name, []).extend(photos)
    if not any(plan.values()):
        raise FacekdError(f"no photos found in {', '.join(map(str, inputs))}")
    return {k: v for k, v in plan.items() if v}


# --- gallery -------------------------------------------------------------------------


def _add_gallery(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gallery", help="a gallery of known people for `facekd identify` (one SQLite file)")
    gsub = p.add_subparsers(dest="gallery_command", required=True, metavar="ACTION")

    e = gsub.add_parser("enroll", help="enrol people from photos (created with --model on first use)")
    e.add_argument("gallery", type=location_arg,
                   help="gallery file (.db) or postgresql://user@host:port/db URL; created when missing")
    e.add_argument("inputs", type=Path, nargs="+", metavar="PHOTO|FOLDER",
                   help="photos of --name, or a folder known/<name>/*.jpg enrolling each person")
    e.add_argument("--name", help="the person the photos show (default: from the folders)")
    e.add_argument("--model", type=onnx_model_arg,
                   help="exported .onnx or a shipped model's name; required to create a gallery, fixed afterwards")
    e.add_argument("--detector", default="yunet,mtcnn", help="face detectors tried in order (default yunet,mtcnn)")
    e.add_argument("--json", type=Path, dest="json_out", help="write the enrolments (and errors) here")
    e.set_defaults(func=_run_enroll)

    ls = gsub.add_parser("list", help="the people enrolled, with their face counts")
    ls.add_argument("gallery", type=location_arg)
    ls.add_argument("--faces", action="store_true", help="also list each face (id, source, detector)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_run_list)

    rm = gsub.add_parser("remove", help="remove a person (by id or name) or, with --face, one face")
    rm.add_argument("gallery", type=location_arg)
    rm.add_argument("person", nargs="?", help="person id or name")
    rm.add_argument("--face", type=int, help="remove only this face id")
    rm.set_defaults(func=_run_remove)

    info = gsub.add_parser("info", help="the gallery's model, thresholds and size")
    info.add_argument("gallery", type=location_arg)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_run_info)


def _open_or_create(location: str, model: Path | None):
    from facekd.identify.gallery import file_sha256

    new = not is_postgres_url(location) and not Path(location).exists()
    if new and model is None:
        raise FacekdError(f"{location}: no such gallery; create it by giving the model: --model M.onnx")
    g = open_gallery_at(location, model, create=True)
    if new:
        print(f"{location}: new gallery for {model}")
    elif model is not None and file_sha256(model) != g.model.sha256:
        g.close()
        raise FacekdError(f"{location}: built with {g.model.name} (sha256 {g.model.sha256[:12]}); {model} is another "
                          "model, and a gallery's model is fixed when it is created")
    return g


def _run_enroll(args: argparse.Namespace) -> int:
    from facekd.io_utils import atomic_write_json

    plan = enrolment_plan(args.inputs, args.name)
    total = sum(len(v) for v in plan.values())
    g = _open_or_create(args.gallery, args.model)
    bar = progress_bar("enrol") if total > 1 else None
    done, results, failed = 0, [], []
    with g:
        for name, photos in plan.items():
            offset = done

            def progress(k: int, _n: int, offset: int = offset) -> None:
                if bar:
                    bar(offset + k, total)

            try:
                r = g.enroll(name, photos, detectors=args.detector, progress=progress)
            except FacekdError as exc:
                failed.append(name)
                print(f"facekd: error: {exc}", file=sys.stderr)
                results.append({"name": name, "error": str(exc)})
            else:
                for photo, reason in r.errors:
                    print(f"  skipped {photo}: {reason}", file=sys.stderr)
                print(f"{name}: {len(r.face_ids)} face(s) enrolled, {r.person.faces} in all (person id {r.person.id})"
                      + (f"; {len(r.errors)} photo(s) skipped" if r.errors else ""))
                results.append(r.to_dict())
            done = offset + len(photos)
            if bar:
                bar(done, total)
        people, faces = len(g.people()), len(g)
    print(f"{args.gallery}: {people} people, {faces} faces")
    if args.json_out:
        atomic_write_json(args.json_out, {"gallery": str(args.gallery), "enrolments": results})
    return 1 if failed else 0


def _run_list(args: argparse.Namespace) -> int:
    import json

    with open_store(args.gallery) as s:
        people = s.people()
        faces = s.faces() if args.faces else []
    if args.json:
        out = [p.to_dict() | ({"face_records": [f.to_dict() for f in faces if f.person_id == p.id]} if args.faces else {})
               for p in people]
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'id':>6}  {'faces':>5}  name")
    for p in people:
        print(f"{p.id:>6}  {p.faces:>5}  {p.name}")
        for f in faces:
            if f.person_id == p.id:
                print(f"{'':>14}face {f.id}: {f.source} ({f.detector or 'no detector'})")
    print(f"{len(people)} people, {sum(p.faces for p in people)} faces")
    return 0


def _run_remove(args: argparse.Namespace) -> int:
    if (args.person is None) == (args.face is None):
        raise FacekdError("give a person (id or name) or --face FACE_ID")
    with open_store(args.gallery) as s:
        if args.face is not None:
            pid = s.remove_face(args.face)
            print(f"removed face {args.face} of {s.person(pid).name} (person id {pid})")
            return 0
        person = s.person_by_name(args.person)
        if person is None:
            if not args.person.isdigit():
                raise FacekdError(f"{args.gallery}: nobody named {args.person!r} is enrolled")
            person = s.person(int(args.person))
        ids = s.remove_person(person.id)
        print(f"removed {person.name} (person id {person.id}) and {len(ids)} face(s)")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    import json

    with open_store(args.gallery) as s:
        m, people, faces = s.model(), s.people(), s.face_count()
    size = None if is_postgres_url(args.gallery) else args.gallery.stat().st_size
    info = {"gallery": str(args.gallery), "bytes": size, "people": len(people), "faces": faces, "model": m.to_dict()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.gallery}: {len(people)} people, {faces} faces" + (f", {size / 2**20:.2f} MiB" if size is not None else ""))
    print(f"model: {m.name} (sha256 {m.sha256[:16]}..., {m.embedding_dim}-d, template "
          f"{m.preprocessing.get('template', '?')}); recorded at {m.path}")
    for k, v in sorted(m.thresholds.items()):
        print(f"threshold {k}: {v:.4f}")
    if m.ident_threshold("best") is None:
        print("no identification threshold stored: identify uses the verify threshold, or with none the top match "
              "(store one with `facekd eval lfw-ident --model MODEL.onnx --store-threshold` before creating the gallery, or pass --threshold)")
    return 0


# --- identify ------------------------------------------------------------------------


def _add_identify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("identify", help="who is this? search photos in a gallery (identity, or unknown)")
    p.add_argument("gallery", type=location_arg, help="gallery file or postgresql:// URL")
    p.add_argument("photos", type=Path, nargs="+", metavar="PHOTO")
    p.add_argument("--top-k", type=int, default=5, help="people to list per photo (default 5)")
    p.add_argument("--scoring", default="best", choices=["best", "mean"],
                   help="a person's score: their best face (default) or their mean template")
    p.add_argument("--threshold", type=float, help="cosine below which a probe is unknown (default: the gallery's)")
    p.add_argument("--index", default="exact", help="search index: exact (default) or hnsw")
    p.add_argument("--model", type=onnx_model_arg, help="the gallery's .onnx, if it moved since the gallery was created")
    p.add_argument("--detector", default="yunet,mtcnn", help="face detectors tried in order (default yunet,mtcnn)")
    p.add_argument("--json", type=Path, dest="json_out", help="write one entry per photo here")
    p.set_defaults(func=_run_identify)


def _run_identify(args: argparse.Namespace) -> int:
    from facekd.deploy.photos import PhotoError
    from facekd.io_utils import atomic_write_json

    entries, bad = [], 0
    with open_gallery_at(args.gallery, args.model, index=args.index) as g:
        thr = args.threshold if args.threshold is not None else g.threshold(args.scoring)
        if thr is None:
            print(f"note: {args.gallery} holds no threshold; the top match is reported as the identity",
                  file=sys.stderr)
        elif args.threshold is None and g.model.ident_threshold(args.scoring) is None:
            print(f"note: {args.gallery} holds no identification threshold; using the verify threshold {thr:.4f}",
                  file=sys.stderr)
        bar = progress_bar("identify") if len(args.photos) > 20 else None
        for i, photo in enumerate(args.photos, 1):
            try:
                r = g.identify_photo(photo, args.top_k, args.scoring, args.threshold, args.detector)
            except PhotoError as exc:
                bad += 1
                print(f"facekd: error: {exc}", file=sys.stderr)
                entries.append({"photo": str(photo), "error": exc.reason})
                continue
            finally:
                if bar:
                    bar(i, len(args.photos))
            who = r.name if r.name is not None else "unknown"
            cut = f" (threshold {r.threshold:.4f})" if r.threshold is not None else ""
            others = ", ".join(f"{m.name} {m.score:.3f}" for m in r.matches)
            print(f"{photo}: {who}, score {r.score:.4f}{cut}; top {len(r.matches)}: {others}")
            entries.append({"photo": str(photo), **r.to_dict()})
    if args.json_out:
        atomic_write_json(args.json_out, entries)
        print(f"results: {args.json_out}")
    return 1 if bad else 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_gallery, _add_identify]


# --- eval lfw-ident ------------------------------------------------------------------


def add_eval_lfw_ident(evsub: argparse._SubParsersAction) -> None:
    """``facekd eval lfw-ident``, registered under ``facekd eval`` by the core CLI."""
    p = evsub.add_parser("lfw-ident", help="LFW 1:N open-set identification (rank-1, CMC, DIR at FPIR 1%%/10%%)")
    p.add_argument("--model", required=True, help="registered backbone name, facekd checkpoint, or .onnx file")
    p.add_argument("--weights", help="weights file (or manifest name) for a registered backbone")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--data", type=Path, help="LFW folder, raw or aligned (default: DATA/lfw)")
    p.add_argument("--detector", default="yunet", help="detector that aligns raw photos first (default yunet)")
    p.add_argument("--embeddings", type=Path, help="cache of the embeddings (.npy): read if present, else written")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--enrolled", type=int, nargs="+", default=[1, 3], help="photos enrolled per person (default 1 3)")
    p.add_argument("--scoring", nargs="+", default=["best", "mean"], choices=["best", "mean"])
    p.add_argument("--store-threshold", action="store_true",
                   help="store the open-set thresholds (1 enrolled photo, --target-fpir) in the .onnx model")
    p.add_argument("--target-fpir", type=float, default=0.01, help="FPIR the stored threshold is chosen for")
    p.add_argument("--json", type=Path, dest="json_out", help="write every trial and the summaries here")
    p.set_defaults(func=_run_eval_lfw_ident)


def _run_eval_lfw_ident(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from facekd.identify.evaluation import FPIRS, embed_lfw, evaluate_identification
    from facekd.hub import resolve
    from facekd.identify.threshold import IdentThresholdChoice, store_ident_threshold
    from facekd.io_utils import atomic_write_json

    if args.store_threshold and not str(args.model).lower().endswith(".onnx"):
        raise FacekdError("--store-threshold needs an .onnx model (facekd export)")
    if args.data is None:
        from facekd.paths import data_root

        args.data = data_root() / "lfw"
    resolved = resolve(str(args.model), args.weights)
    embedder = resolved.embedder(args.device)
    lfw = embed_lfw(embedder, args.data, args.detector, args.embeddings, align_progress=progress_bar("align"),
                    embed_progress=progress_bar("embed"))
    how = "read from " + str(args.embeddings) if lfw.cached else f"embedded in {lfw.embed_seconds:.0f} s"
    print(f"{embedder.name}: {len(lfw.labels)} LFW photos of {len(set(lfw.labels))} people ({how}); "
          f"{args.trials} trials")
    fpirs = tuple(sorted(set(FPIRS) | {args.target_fpir}))
    results = []
    print(f"{'enrolled':>8} {'scoring':>7}  {'rank-1 %':>14}  " + "  ".join(f"{'DIR@FPIR ' + f'{f:g}':>18}" for f in fpirs)
          + "  thresholds  search ms/probe")
    for enrolled in args.enrolled:
        for scoring in args.scoring:
            r = evaluate_identification(lfw.embeddings, lfw.labels, embedder.name, args.trials, enrolled, scoring,
                                        fpirs=fpirs)
            results.append(r)
            dirs = "  ".join(f"{r.dir_mean[f'{f:g}']:>9.2f} ± {r.dir_std[f'{f:g}']:<5.2f}" + " " * 1 for f in fpirs)
            thr = " ".join(f"{r.threshold_median[f'{f:g}']:.3f}" for f in fpirs)
            print(f"{enrolled:>8} {scoring:>7}  {r.rank1_mean:>6.2f} ± {r.rank1_std:<5.2f}  {dirs}  {thr}  "
                  f"{r.search_ms_per_probe:.4f}")
    t0 = results[0].trials[0]
    print(f"trial 0: {t0.gallery_people} gallery people, {t0.mated} mated and {t0.non_mated} non-mated probes")
    if args.store_threshold:
        key = f"{args.target_fpir:g}"
        one = {r.scoring: r for r in results if r.enrolled == 1}
        if not one:
            raise FacekdError("--store-threshold chooses on the 1-photo gallery: include 1 in --enrolled")
        choice = IdentThresholdChoice(
            thresholds={s: r.threshold_median[key] for s, r in one.items()}, target_fpir=args.target_fpir,
            tpir={s: r.dir_mean[key] for s, r in one.items()}, data=f"LFW 1:N ({lfw.aligned})", trials=args.trials,
            enrolled=1, detector=args.detector,
        )
        store_ident_threshold(args.model, choice)
        print(f"stored in {args.model}: identification thresholds {choice.thresholds} (FPIR {key})")
    if args.json_out:
        atomic_write_json(args.json_out, {
            "model": embedder.name, "data": str(args.data), "aligned": lfw.aligned, "detector": args.detector,
            "photos": len(lfw.labels), "embed_seconds": lfw.embed_seconds, "results": [asdict(r) for r in results],
        })
        print(f"results: {args.json_out}")
    return 0
