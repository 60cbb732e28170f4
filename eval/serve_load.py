"""Load test of `facekd serve` on 127.0.0.1: concurrent clients mixing identify and enrol
for a bounded time, then a serial replay that checks every identification.

    python eval/serve_load.py [--model M.onnx] [--lfw LFW] [--clients 16] [--duration 60] [--json OUT]

1. Starts ``facekd serve`` (a child process, loopback only) on a new gallery and enrols
   ``--base`` LFW people with one photo each, serially.
2. ``--clients`` asyncio clients (httpx) each loop for ``--duration`` seconds: with
   probability ``--identify-share`` identify a random LFW photo (of a base person, a person
   enrolled during the run, or someone never enrolled), otherwise enrol a new LFW person
   with one photo. Bounded: no request starts after the duration, and at most
   ``--max-requests`` in all.
3. Reports throughput, p50/p99 latency (all, identify, enrol), the count of each status
   (5xx must be 0) and the server's RSS at the start and end of the load.
4. Serial replay: a fresh server on a fresh gallery replays the committed enrolments one
   at a time, in the order of their face ids (the order the server committed them), and
   after the n-th face re-asks every identification that reported ``gallery_faces == n``.
   Identity, top-k names and scores must match what the concurrent run answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from facekd.io_utils import atomic_write_json
from facekd.serve.process import ServerProcess, rss_mib

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Call:
    kind: str  # "identify" or "enrol"
    photo: str  # path relative to the LFW folder
    start: float
    seconds: float
    status: int
    name: str = ""  # enrol: the person's name
    body: dict = field(default_factory=dict)


def _people(lfw: Path) -> dict[str, list[Path]]:
    people = {}
    for d in sorted(p for p in lfw.iterdir() if p.is_dir()):
        photos = sorted(d.glob("*.jpg"))
        if photos:
            people[d.name] = photos
    return people


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def _latency(calls: list[Call]) -> dict:
    ms = [c.seconds * 1000 for c in calls]
    return {"count": len(ms), "p50_ms": _percentile(ms, 50), "p99_ms": _percentile(ms, 99),
            "mean_ms": statistics.fmean(ms) if ms else float("nan")}


async def _post(client: httpx.AsyncClient, kind: str, photo: Path, lfw: Path, name: str = "") -> Call:
    data = photo.read_bytes()
    t0 = time.perf_counter()
    if kind == "identify":
        r = await client.post("/v1/identify", files={"photo": (photo.name, data, "image/jpeg")}, data={"top_k": "3"})
    else:
        r = await client.post("/v1/people", files={"photos": (photo.name, data, "image/jpeg")}, data={"name": name})
    dt = time.perf_counter() - t0
    try:
        body = r.json()
    except ValueError:
        body = {"raw": r.text[:200]}
    return Call(kind, str(photo.relative_to(lfw)), t0, dt, r.status_code, name, body)


async def _load(url: str, lfw: Path, base: list[str], fresh: list[str], people: dict[str, list[Path]],
                clients: int, duration: float, identify_share: float, max_requests: int, seed: int) -> list[Call]:
    rng = random.Random(seed)
    fresh_iter = iter(fresh)
    enrolled = list(base)
    strangers = fresh[len(fresh) // 2 :]  # the tail of the queue is rarely reached: mostly never enrolled
    calls: list[Call] = []
    deadline = time.perf_counter() + duration

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline and len(calls) < max_requests:
            if rng.random() < identify_share:
                pool = enrolled if rng.random() < 0.7 else strangers
                who = rng.choice(pool)
                photo = rng.choice(people[who])
                calls.append(await _post(client, "identify", photo, lfw))
            else:
                who = next(fresh_iter, None)
                if who is None:
                    continue
                call = await _post(client, "enrol", people[who][0], lfw, who)
                if call.status == 201:
                    enrolled.append(who)
                calls.append(call)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return calls


def _enrol_serially(url: str, lfw: Path, enrolments: list[tuple[str, Path]]) -> list[Call]:
    async def run() -> list[Call]:
        async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
            return [await _post(client, "enrol", photo, lfw, name) for name, photo in enrolments]

    return asyncio.run(run())


def _replay(url: str, lfw: Path, enrolments: list[tuple[int, str, Path]], identifies: list[Call]) -> dict:
    """Serial replay on a fresh server; the mismatches found."""
    by_size: dict[int, list[Call]] = {}
    for c in identifies:
        by_size.setdefault(c.body["gallery_faces"], []).append(c)
    mismatches, checked, max_score_diff = [], 0, 0.0

    async def run() -> None:
        nonlocal checked, max_score_diff
        async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
            async def ask(n: int) -> None:
                nonlocal checked, max_score_diff
                for c in by_size.get(n, []):
                    again = await _post(client, "identify", lfw / c.photo, lfw)
                    checked += 1
                    a, b = c.body, again.body
                    if again.status != 200 or b["gallery_faces"] != n:
                        mismatches.append({"photo": c.photo, "gallery_faces": n, "replay": b})
                        continue
                    diff = abs(a["score"] - b["score"])
                    max_score_diff = max(max_score_diff, diff)
                    same = (a["identity"] == b["identity"] and [m["name"] for m in a["matches"]] ==
                            [m["name"] for m in b["matches"]] and diff <= 1e-5)
                    if not same:
                        mismatches.append({"photo": c.photo, "gallery_faces": n, "load": a, "replay": b})

            await ask(0)
            for n, (face_id, name, photo) in enumerate(enrolments, 1):
                r = await _post(client, "enrol", photo, lfw, name)
                if r.status != 201:
                    mismatches.append({"enrol": name, "status": r.status, "body": r.body})
                await ask(n)

    asyncio.run(run())
    return {"identifies_checked": checked, "mismatches": len(mismatches), "examples": mismatches[:5],
            "max_score_difference": max_score_diff}


def _report(args: argparse.Namespace, pre: list[Call], calls: list[Call], wall: float, rss_start: float,
            rss_end: float) -> dict:
    """The load run's figures: statuses, throughput, latency percentiles, memory."""
    statuses: dict[str, int] = {}
    for c in calls:
        statuses[str(c.status)] = statuses.get(str(c.status), 0) + 1
    ok = [c for c in calls if c.status < 400]
    return {
        "command": "python eval/serve_load.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (("clients", args.clients), ("duration", args.duration),
                                                        ("identify_share", args.identify_share),
                                                        ("base", args.base), ("workers_threads", args.workers_threads),
                                                        ("seed", args.seed))),
        "model": args.model.name,
        "clients": args.clients,
        "duration_s": args.duration,
        "wall_s": wall,
        "requests": len(calls),
        "throughput_rps": len(calls) / wall,
        "statuses": statuses,
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "latency": {"all": _latency(ok), "identify": _latency([c for c in ok if c.kind == "identify"]),
                    "enrol": _latency([c for c in ok if c.kind == "enrol"])},
        "rss_mib": {"start": rss_start, "end": rss_end},
        "base_enrolled": sum(c.status == 201 for c in pre),
        "cpu_count": os.cpu_count(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "weights" / "student5_mobilefacenet_casia.onnx")
    ap.add_argument("--lfw", type=Path, default=Path(os.environ.get("FACEKD_DATA", REPO.parent / "shared" / "data")) / "lfw")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    ap.add_argument("--identify-share", type=float, default=0.8)
    ap.add_argument("--base", type=int, default=100, help="people enrolled before the load (default 100)")
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--workers-threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--json", type=Path, dest="json_out")
    args = ap.parse_args()
    if not (args.lfw / "pairs.txt").is_file():
        raise SystemExit(f"LFW not found at {args.lfw} (--lfw)")

    people = _people(args.lfw)
    names = sorted(people)
    random.Random(args.seed).shuffle(names)
    base, fresh = names[: args.base], names[args.base :]
    serve_args = ["--model", str(args.model), "--workers-threads", str(args.workers_threads)]
    with tempfile.TemporaryDirectory(prefix="facekd-serve-load-") as tmp:
        tmp = Path(tmp)
        with ServerProcess([*serve_args, "--gallery", str(tmp / "load.sqlite")], log=tmp / "load.log") as server:
            server.wait_ready()
            pre = _enrol_serially(server.url, args.lfw, [(n, people[n][0]) for n in base])
            rss_start = rss_mib(server.pid)
            t0 = time.perf_counter()
            calls = asyncio.run(_load(server.url, args.lfw, base, fresh, people, args.clients, args.duration,
                                      args.identify_share, args.max_requests, args.seed))
            wall = time.perf_counter() - t0
            rss_end = rss_mib(server.pid)
        report = _report(args, pre, calls, wall, rss_start, rss_end)
        print(json.dumps({k: v for k, v in report.items()}, indent=1))
        if not args.no_replay:
            committed = sorted(
                [(c.body["face_ids"][0], c.name, args.lfw / c.photo) for c in pre + calls
                 if c.kind == "enrol" and c.status == 201]
            )
            identifies = [c for c in calls if c.kind == "identify" and c.status == 200]
            with ServerProcess([*serve_args, "--gallery", str(tmp / "replay.sqlite")], log=tmp / "replay.log") as s2:
                s2.wait_ready()
                report["replay"] = _replay(s2.url, args.lfw, committed, identifies)
            print(json.dumps(report["replay"], indent=1))
    if args.json_out:
        atomic_write_json(args.json_out, report)
    bad = report["server_errors_5xx"] or report.get("replay", {}).get("mismatches", 0)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
