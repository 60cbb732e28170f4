"""Kill -9 during a large enrolment, 20 times, and check the gallery after each (issue 27).

A worker process enrols people one transaction at a time into one SQLite gallery and
prints ``committed PERSON_ID NAME FIRST_FACE_ID LAST_FACE_ID`` (flushed) after each
commit returns. The parent SIGKILLs it at a random moment, then checks:

- ``PRAGMA integrity_check`` and ``foreign_key_check`` pass, every face has a
  ``dim``-float32 embedding and a person (``SqliteStore.integrity_check``);
- every face the worker reported as committed is there, with the embedding it wrote
  (the embeddings are a function of the face's person name and its index);
- no half enrolment: every person has exactly ``batch`` faces (a transaction that was
  killed left nothing).

Modes: ``synthetic`` (``Gallery.enroll_embeddings`` with seeded 128-d vectors, batches
of 50; commits several times a second, so kills land in and between transactions) and
``cli`` (``facekd gallery enroll`` on a folder of real photos; checks the people the
CLI printed as enrolled).

    python eval/ident_kill9.py --kills 20 --json docs/results/ident-kill9.json
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facekd.identify.gallery import Gallery
from facekd.identify.records import GalleryModel
from facekd.identify.store import SqliteStore

DIM = 128


def embeddings_for(name: str, n: int) -> np.ndarray:
    seed = int.from_bytes(name.encode()[-8:].rjust(8, b"\0"), "little") % (2**32)
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def worker(path: Path, batch: int, people: int) -> None:
    g = Gallery.open(path)
    start = len(g.people())
    print("ready", flush=True)
    for i in range(start, start + people):
        name = f"person{i:06d}"
        r = g.enroll_embeddings(name, embeddings_for(name, batch))
        print(f"committed {r.person.id} {name} {r.face_ids[0]} {r.face_ids[-1]}", flush=True)


def check_synthetic(path: Path, reported: list[tuple[int, str, int, int]], batch: int) -> dict:
    with SqliteStore.open(path) as s:
        problems = s.integrity_check()
        face_ids, person_ids, emb = s.all_embeddings()
        people = {p.id: p for p in s.people()}
    where = {int(f): k for k, f in enumerate(face_ids)}
    missing = 0
    for pid, name, first, last in reported:
        ids = list(range(first, last + 1))
        if pid not in people or any(i not in where for i in ids):
            missing += 1
            continue
        got = emb[[where[i] for i in ids]]
        if not np.allclose(got, embeddings_for(name, batch), atol=1e-6):
            problems.append(f"{name}: embeddings differ from what was written")
    half = [p.name for p in people.values() if p.faces != batch]
    # committed but killed before it was printed: allowed (nothing lost), counted
    unreported = len(people) - len({r[0] for r in reported})
    return {"problems": problems, "reported": len(reported), "reported_missing": missing, "half_enrolled": half,
            "people": len(people), "faces": int(len(face_ids)), "committed_unreported": unreported}


def run_synthetic(args, path: Path) -> list[dict]:
    SqliteStore.create(path, GalleryModel(name="synthetic", sha256="0" * 64, preprocessing={}, embedding_dim=DIM)).close()
    all_reported, rows = [], []
    rng = random.Random(args.seed)
    for k in range(args.kills):
        proc = subprocess.Popen([sys.executable, __file__, "--worker", str(path), "--batch", str(args.batch)],
                                stdout=subprocess.PIPE, text=True)
        delay = rng.uniform(args.min_delay, args.max_delay)
        assert proc.stdout.readline().strip() == "ready"  # the gallery is open: kill during enrolment
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        lines = [ln.split() for ln in out.splitlines() if ln.startswith("committed ")]
        all_reported += [(int(a), b, int(c), int(d)) for _, a, b, c, d in lines]
        row = check_synthetic(path, all_reported, args.batch) | {"kill": k + 1, "after_s": round(delay, 3),
                                                                  "committed_this_run": len(lines)}
        rows.append(row)
        print(f"kill {k + 1:>2} after {delay:.2f} s: {len(lines)} enrolments committed in this run; "
              f"{row['people']} people, {row['faces']} faces; missing {row['reported_missing']}, "
              f"half-enrolled {len(row['half_enrolled'])}, integrity problems {len(row['problems'])}")
    return rows


def run_cli(args, path: Path) -> list[dict]:
    """``facekd gallery enroll`` on ``--photos`` (known/<name>/*.jpg) killed repeatedly;
    each run enrols the people not yet in the gallery."""
    rows, reported = [], {}
    rng = random.Random(args.seed)
    people_dirs = sorted(d for d in Path(args.photos).iterdir() if d.is_dir())
    for k in range(args.kills):
        done = set()
        if path.exists():
            with SqliteStore.open(path) as s:
                done = {p.name for p in s.people()}
        todo = [str(d) for d in people_dirs if d.name not in done][:200]
        if not todo:
            break
        cmd = [sys.executable, "-m", "facekd.cli", "gallery", "enroll", str(path), *todo, "--detector", "yunet"]
        if not path.exists():
            cmd += ["--model", str(args.model)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        delay = rng.uniform(args.min_delay, args.max_delay) * 4
        first = proc.stdout.readline()  # the CLI is up (seconds of imports): kill during its enrolment
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out = first + out
        for ln in out.splitlines():  # "NAME: k face(s) enrolled, n in all (person id N)"
            if " face(s) enrolled, " in ln:
                name, rest = ln.split(": ", 1)
                reported[name] = int(rest.split(" in all")[0].split(", ")[-1])
        if not path.exists():  # killed before the gallery was created: nothing to lose yet
            rows.append({"kill": k + 1, "after_s": round(delay, 3), "problems": [], "reported": 0,
                         "reported_missing": 0, "people": 0, "faces": 0, "created": False})
            print(f"kill {k + 1:>2} after {delay:.2f} s: before the gallery was created")
            continue
        with SqliteStore.open(path) as s:
            problems = s.integrity_check()
            have = {p.name: p.faces for p in s.people()}
        missing = [n for n, c in reported.items() if have.get(n) != c]
        rows.append({"kill": k + 1, "after_s": round(delay, 3), "problems": problems, "reported": len(reported),
                     "reported_missing": len(missing), "people": len(have), "faces": sum(have.values())})
        print(f"kill {k + 1:>2} after {delay:.2f} s: {len(reported)} people reported, {len(have)} in the gallery; "
              f"missing {len(missing)}, integrity problems {len(problems)}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="synthetic", choices=["synthetic", "cli"])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--batch", type=int, default=50, help="faces per enrolment transaction (synthetic)")
    ap.add_argument("--min-delay", type=float, default=0.0, help="seconds of enrolment before the kill, at least")
    ap.add_argument("--max-delay", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", type=Path, help="cli mode: folder known/<name>/*.jpg")
    ap.add_argument("--model", type=Path, help="cli mode: the .onnx to create the gallery with")
    ap.add_argument("--gallery", type=Path, help="gallery file (default: a new temporary one)")
    ap.add_argument("--json", type=Path, dest="json_out")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.batch, people=10**6)
        return 0
    path = args.gallery or Path(tempfile.mkdtemp()) / "kill9.db"
    rows = run_synthetic(args, path) if args.mode == "synthetic" else run_cli(args, path)
    bad = [r for r in rows if r["problems"] or r["reported_missing"] or r.get("half_enrolled")]
    print(f"{len(rows)} kills: {len(rows) - len(bad)} left an intact gallery, {len(bad)} did not")
    if args.json_out:
        from facekd.io_utils import atomic_write_json

        atomic_write_json(args.json_out, {"mode": args.mode, "gallery": str(path), "kills": rows,
                                          "intact": len(rows) - len(bad)})
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
