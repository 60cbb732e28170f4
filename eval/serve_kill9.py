"""The server half of the crash check: ``kill -9`` `facekd serve` at random moments during
a large enrolment over HTTP, then check the gallery after each kill.

    python eval/serve_kill9.py [--kills 20] [--clients 4] [--model M.onnx] [--lfw LFW] [--json OUT]

Each round starts ``facekd serve`` (a child process on 127.0.0.1) on the same SQLite
gallery, lets ``--clients`` clients enrol LFW people (up to 3 photos each, one request
per person) and sends SIGKILL after a random 0.2-3 s. With the server dead, the gallery
is opened and checked:

- SQLite's integrity and foreign-key checks pass, every face has a whole embedding
  (``SqliteStore.integrity_check``);
- every enrolment the server answered 201 is there: the person, with exactly the face
  ids the answer named;
- nothing half-written: every person in the gallery has as many faces as photos were
  sent for them (an enrolment is one transaction: all its faces or none);
- an enrolment in flight at the kill is either wholly there (committed, answer lost) or
  absent; absent ones are sent again in a later round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from pathlib import Path

import httpx

from facekd.identify.store import SqliteStore
from facekd.io_utils import atomic_write_json
from facekd.serve.process import ServerProcess

REPO = Path(__file__).resolve().parent.parent


async def _round(url: str, queue: list[tuple[str, list[Path]]], clients: int, kill_after: float,
                 server: ServerProcess) -> tuple[dict[str, list[int]], set[str], int]:
    """Enrols from ``queue`` until the kill; (answered 201: name -> face ids, in flight, other answers)."""
    answered: dict[str, list[int]] = {}
    in_flight: set[str] = set()
    other = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal other
        while queue:
            name, photos = queue.pop()
            in_flight.add(name)
            files = [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
            try:
                r = await client.post("/v1/people", data={"name": name}, files=files)
            except httpx.TransportError:
                return  # the server is gone; the name stays in flight
            in_flight.discard(name)
            if r.status_code == 201:
                answered[name] = r.json()["face_ids"]
            else:
                other += 1

    async def killer() -> None:
        await asyncio.sleep(kill_after)
        server.kill9()

    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        await asyncio.gather(killer(), *(client_loop(client) for _ in range(clients)))
    return answered, in_flight, other


def _check(path: Path, sent: dict[str, int], answered: dict[str, list[int]]) -> tuple[list[str], set[str]]:
    """Problems in the gallery, and the names present."""
    with SqliteStore.open(path) as store:
        problems = store.integrity_check()
        people = {p.name: p for p in store.people()}
        faces = store.faces()
    by_person: dict[int, list[int]] = {}
    for f in faces:
        by_person.setdefault(f.person_id, []).append(f.id)
    for name, p in people.items():
        got = sorted(by_person.get(p.id, []))
        if len(got) != sent.get(name, -1):
            problems.append(f"{name}: {len(got)} faces stored, {sent.get(name)} photos sent (half-written)")
    for name, ids in answered.items():
        if name not in people:
            problems.append(f"{name}: answered 201 but missing after the kill")
        elif sorted(by_person.get(people[name].id, [])) != sorted(ids):
            problems.append(f"{name}: answered face ids {ids}, stored {by_person.get(people[name].id)}")
    return problems, set(people)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "weights" / "student5_mobilefacenet_casia.onnx")
    ap.add_argument("--lfw", type=Path, default=Path(os.environ.get("FACEKD_DATA", REPO.parent / "shared" / "data")) / "lfw")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--min-s", type=float, default=0.2, help="earliest kill after the server is ready")
    ap.add_argument("--max-s", type=float, default=3.0, help="latest kill after the server is ready")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, dest="json_out")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    people = sorted(d for d in args.lfw.iterdir() if d.is_dir())
    rng.shuffle(people)
    queue = [(d.name, sorted(d.glob("*.jpg"))[:3]) for d in people]
    queue.reverse()  # popped from the end
    sent = {name: len(photos) for name, photos in queue}
    answered: dict[str, list[int]] = {}
    rounds, all_problems = [], []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="facekd-serve-kill9-") as tmp:
        gallery = Path(tmp) / "g.sqlite"
        for k in range(args.kills):
            server = ServerProcess(["--model", str(args.model), "--gallery", str(gallery)], log=Path(tmp) / "server.log")
            try:
                server.wait_ready()
                kill_after = rng.uniform(args.min_s, args.max_s)
                got, in_flight, other = asyncio.run(_round(server.url, queue, args.clients, kill_after, server))
            finally:
                server.kill9()
            answered.update(got)
            problems, present = _check(gallery, sent, answered)
            committed_unanswered = sorted(n for n in in_flight if n in present)
            retried = [n for n in in_flight if n not in present]
            queue.extend((n, sorted((args.lfw / n).glob("*.jpg"))[:3]) for n in retried)
            rounds.append({"kill_after_s": round(kill_after, 3), "answered_201": len(got), "in_flight": len(in_flight),
                           "committed_without_answer": len(committed_unanswered), "other_answers": other,
                           "people_stored": len(present), "problems": problems})
            all_problems += problems
            print(f"kill {k + 1}/{args.kills} after {kill_after:.2f} s: {len(got)} enrolments answered, "
                  f"{len(in_flight)} in flight ({len(committed_unanswered)} committed without an answer), "
                  f"{len(present)} people stored, {len(problems)} problems", flush=True)
        with SqliteStore.open(gallery) as store:
            faces_total = store.face_count()
    report = {
        "command": f"python eval/serve_kill9.py --kills {args.kills} --clients {args.clients} --seed {args.seed}",
        "kills": args.kills,
        "enrolments_answered": len(answered),
        "faces_stored": faces_total,
        "problems": len(all_problems),
        "examples": all_problems[:10],
        "rounds": rounds,
        "wall_s": time.perf_counter() - t_start,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=1))
    if args.json_out:
        atomic_write_json(args.json_out, report)
    return 1 if all_problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
