"""Kill -9 each long facekd command at random moments, rerun it, compare with an
uninterrupted run (issue 30).

    nice -n 15 python eval/kill_sweep.py [--kills 20] [--commands align,pack,...] [--json OUT] [--seed 0]

At CI-friendly sizes on tiny synthetic data (noise photos and crops, a student5 a few
thousand parameters wide, one thread, fp32, no compile, no augmentation): for each
command, one uninterrupted reference run (its duration T), then ``--kills`` rounds of:
start the command fresh, SIGKILL its process group after a uniform random 2-98% of T,
check what the kill left (a command's ``after_kill``: files that must be whole or
absent), rerun it (``--resume`` where the command has it) to the end, compare its outputs
with the reference. A round whose command ends before its kill is not counted as a kill
(up to 3x ``--kills`` rounds are tried); its duration joins the reference's, and T
becomes their median, so the kills follow a load that changes during the sweep.
Printed and written as a table: command, kills, reruns that finished, reruns that
matched bit for bit, the largest difference seen otherwise.

The commands: ``align`` (resumes from its state file), ``pack``, ``distill`` with
``teacher_mode: cache``, ``train``, ``prune``, ``multiexit``, ``export``,
``teacher-outputs`` (teacher-output caching on its own: ``eval/export_teacher_outputs.py``
fills the teacher-output cache and writes the exported file; right after each kill every
cache entry and the exported file must be whole or absent) and ``runner`` (the results
runner, ``eval/reproduce_paper.py --protocol smoke`` over tables A-C: a prerequisite
teacher run, a distillation row and two training rows, each appending one line to a
``.jsonl``; its records are compared on every field but the timings, the time stamp and
the run folder's location, and its runs' checkpoints bit for bit).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("align", "pack", "train", "distill", "prune", "multiexit", "export", "teacher-outputs", "runner")
TINY_MODEL = {"backbone": "student5", "backbone_args": {"widths": [8, 16, 16, 32, 32], "embedding_dim": 64},
              "head": "softmax"}


def facekd(*args: str) -> list[str]:
    return [sys.executable, "-m", "facekd.cli", *args]


def make_photos(root: Path, people: int = 4, per: int = 5, size: tuple[int, int] = (96, 80), seed: int = 0) -> Path:
    """Identity folders of noise photos (the detector finds no face: central crops)."""
    rng = np.random.default_rng(seed)
    for p in range(people):
        (root / f"person{p}").mkdir(parents=True, exist_ok=True)
        for i in range(per):
            img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / f"person{p}" / f"{i}.jpg", quality=90)
    return root


def make_crops(root: Path, people: int = 6, per: int = 8, seed: int = 1) -> Path:
    """Identity folders of 112x96 crops: smooth per-identity patterns plus noise, so a
    tiny network can learn something."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:112, 0:96]
    for p in range(people):
        (root / f"id{p}").mkdir(parents=True, exist_ok=True)
        base = 127 + 100 * np.sin(xx / (4 + p) + p)[..., None] * np.cos(yy / (6 + p))[..., None]
        for i in range(per):
            img = np.clip(base + rng.normal(0, 20, (112, 96, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"id{p}" / f"{i}.jpg", quality=95)
    return root


def make_lfw(root: Path, folds: int = 10, seed: int = 2) -> Path:
    """An aligned LFW folder of 112x96 noise crops: per fold one same and one different
    pair (two photos of one person differ only by a little noise)."""
    rng = np.random.default_rng(seed)
    lines = [f"{folds} 1"]
    for f in range(folds):
        a, b = f"P{f}a", f"P{f}b"
        for name in (a, b):
            (root / name).mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 255, (112, 96, 3))
            for i in (1, 2):
                img = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / name / f"{name}_{i:04d}.jpg", quality=95)
        lines += [f"{a} 1 2", f"{a} 1 {b} 1"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_config(path: Path, crops: Path, **sections: dict) -> Path:
    cfg: dict = {
        "model": dict(TINY_MODEL),
        "data": {"train": [str(crops)], "loader": "memory",
                 "augment": {"flip": 0.0, "affine_p": 0.0, "color_p": 0.0, "gray_p": 0.0}},
        "optim": {"lr": 0.05},
        "schedule": {"warmup_epochs": 0},
        "train": {"epochs": 4, "batch_size": 8, "log_every": 1, "device": "cpu", "threads": 1, "precision": "fp32",
                  "channels_last": False, "compile": False},
        "eval": {"every": 0},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path.write_text(yaml.safe_dump(cfg))
    return path


def ckpt_tensors(path: Path, prefix: str = "model") -> dict[str, np.ndarray]:
    from facekd.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return {f"{prefix}.{k}": v.float().numpy() for k, v in ckpt["model"].items()}


def run_tensors(run: Path) -> dict[str, np.ndarray]:
    """The weights of every checkpoint a run folder holds (prune: one per step and the
    pruned result), keyed by relative path and tensor name."""
    out: dict[str, np.ndarray] = {}
    for path in sorted(run.rglob("*.pt")):
        out.update(ckpt_tensors(path, str(path.relative_to(run))))
    if not out:
        raise FileNotFoundError(f"{run}: no checkpoint")
    return out


def folder_bytes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.name not in skip}


@dataclass
class Case:
    """How to run one command in a work folder, rerun it after a kill, read its outputs."""

    name: str
    run: Callable[[Path], list[str]]
    rerun: Callable[[Path], list[str]]
    outputs: Callable[[Path], dict]
    env: Callable[[Path], dict] = lambda work: {}
    after_kill: Callable[[Path], list[str]] = lambda work: []  # what a kill left half-written


def build_cases(base: Path) -> dict[str, Case]:
    """The cases over shared inputs made once under ``base`` (the teacher checkpoint is a
    tiny ``facekd train`` run, made here)."""
    photos = make_photos(base / "photos")
    crops = make_crops(base / "crops")
    cfg = tiny_config(base / "train.yaml", crops)
    teacher = base / "teacher"
    if not (teacher / "checkpoints/last.pt").is_file():
        subprocess.run(facekd("train", str(cfg), "--out", str(teacher), "--set", "train.epochs=2"), check=True,
                       capture_output=True, timeout=900)
    teacher_ckpt = str(teacher / "checkpoints/last.pt")
    distill_cfg = tiny_config(base / "distill.yaml", crops, teacher={"model": teacher_ckpt},
                              distill={"terms": [{"name": "hard", "weight": 1.0}, {"name": "featurenorm", "weight": 1.0}],
                                       "teacher_mode": "cache"})
    prune_cfg = tiny_config(base / "prune.yaml", crops, prune={"source": teacher_ckpt, "importance": "l1", "ratio": 0.5,
                                                               "steps": 2},
                            train={"epochs": 1})
    multiexit_cfg = tiny_config(base / "multiexit.yaml", crops, exits={"points": [{"at": "features.6"}]})

    def train_like(cmd: str, config: Path) -> Case:
        return Case(cmd, lambda w: facekd(cmd, str(config), "--out", str(w / "run")),
                    lambda w: facekd(cmd, str(config), "--out", str(w / "run"), "--resume"),
                    lambda w: run_tensors(w / "run"),
                    env=lambda w: {"FACEKD_CACHE": str(w / "cache")})

    def teacher_cache(w: Path) -> dict:
        from facekd.train.checkpoint import load_checkpoint

        out = run_tensors(w / "run")
        for f in sorted((w / "cache/teacher_outputs").glob("*.pt")):  # whole: it loads
            out[f"cache.{f.name}"] = load_checkpoint(f)["embeddings"].float().numpy()
        return out

    align = Case("align", lambda w: facekd("align", str(photos), str(w / "out"), "--workers", "1"),
                 lambda w: facekd("align", str(photos), str(w / "out"), "--workers", "1"),
                 lambda w: folder_bytes(w / "out", skip=("align_report.json",)))
    pack = Case("pack", lambda w: facekd("pack", str(crops), "--out", str(w / "crops.fkpack")),
                lambda w: facekd("pack", str(crops), "--out", str(w / "crops.fkpack")),
                lambda w: {"pack": (w / "crops.fkpack").read_bytes()})
    export = Case("export", lambda w: facekd("export", teacher_ckpt, "--onnx", str(w / "m.onnx"), "--no-threshold"),
                  lambda w: facekd("export", teacher_ckpt, "--onnx", str(w / "m.onnx"), "--no-threshold"),
                  lambda w: {"onnx": (w / "m.onnx").read_bytes()})
    distill = train_like("distill", distill_cfg)
    distill.outputs = teacher_cache

    # 1,200 crops of the same 6 identities (14 MB): reading and embedding them is about a
    # third of the run, not only the imports.
    many = make_crops(base / "crops-1200", per=200)
    outputs_cfg = tiny_config(base / "teacher_outputs.yaml", many, teacher={"model": teacher_ckpt},
                              distill={"terms": [{"name": "featurenorm", "weight": 1.0}], "teacher_mode": "cache"})
    export_outputs = [sys.executable, str(REPO / "eval/export_teacher_outputs.py"), str(outputs_cfg)]
    teacher_outputs = Case(
        "teacher-outputs", lambda w: [*export_outputs, str(w / "outputs.pt")],
        lambda w: [*export_outputs, str(w / "outputs.pt")], lambda w: exported_and_cached(w / "outputs.pt", w / "cache"),
        env=lambda w: {"FACEKD_CACHE": str(w / "cache")},
        after_kill=lambda w: torn_teacher_outputs(w / "outputs.pt", w / "cache", 1200))

    lfw = make_lfw(base / "lfw")
    reproduce = [sys.executable, str(REPO / "eval/reproduce_paper.py"), "--protocol", "smoke", "--tables", "A,B,C"]
    settings = [f"data.train=[{crops}]", f"eval.lfw={lfw}", "eval.pairs_per_fold=1", "data.loader=memory",
                "data.augment.flip=0", "data.augment.affine_p=0", "data.augment.color_p=0", "data.augment.gray_p=0",
                "train.epochs=2", "train.batch_size=8", "train.threads=1", "train.precision=fp32",
                "train.channels_last=false", "train.compile=false"]

    def runner_argv(w: Path) -> list[str]:
        return [*reproduce, "--runs", str(w / "runs"), "--results", str(w / "results.jsonl"),
                "--report", str(w / "RESULTS.md"), *(a for kv in settings for a in ("--set", kv))]

    runner = Case("runner", runner_argv, runner_argv, lambda w: runner_outputs(w),
                  env=lambda w: {"FACEKD_CACHE": str(w / "cache")},
                  after_kill=lambda w: torn_results(w / "results.jsonl"))
    return {"align": align, "pack": pack, "train": train_like("train", cfg), "distill": distill,
            "prune": train_like("prune", prune_cfg), "multiexit": train_like("multiexit", multiexit_cfg), "export": export,
            "teacher-outputs": teacher_outputs, "runner": runner}


def exported_and_cached(exported: Path, cache: Path) -> dict:
    """The exported teacher outputs (embeddings, labels, what identifies them) and every
    teacher-output cache entry."""
    from facekd.distill.teacher import read_exported
    from facekd.train.checkpoint import load_checkpoint

    out = read_exported(exported)
    found = {"exported.embeddings": out.embeddings.float().numpy(), "exported.labels": out.labels.numpy(),
             "exported.about": json.dumps([out.teacher, out.key, out.template, out.mean, out.std, out.identities,
                                           out.center]).encode()}
    for f in sorted((cache / "teacher_outputs").glob("*.pt")):
        found[f"cache.{f.name}"] = load_checkpoint(f)["embeddings"].float().numpy()
    return found


def torn_teacher_outputs(exported: Path, cache: Path, crops: int) -> list[str]:
    """Cache entries and an exported file that are there but not whole (empty when every
    file is whole or absent)."""
    from facekd.distill.teacher import read_exported
    from facekd.errors import FacekdError
    from facekd.train.checkpoint import load_checkpoint

    torn = []
    for f in sorted((cache / "teacher_outputs").glob("*.pt")):
        try:
            if load_checkpoint(f)["embeddings"].shape[0] != crops:
                torn.append(f"{f.name}: not {crops} embeddings")
        except (FacekdError, KeyError) as exc:
            torn.append(f"{f.name}: {exc}")
    if exported.exists():
        try:
            if read_exported(exported).embeddings.shape[0] != crops:
                torn.append(f"{exported.name}: not {crops} embeddings")
        except FacekdError as exc:
            torn.append(str(exc))
    return torn


# A record's fields that differ between two runs of the same row: timings and when.
RESULT_TIMINGS = ("cpu_ms", "seconds", "finished")


def runner_outputs(w: Path) -> dict:
    """The results runner's records (every field but :data:`RESULT_TIMINGS`, the run
    folder relative to the work folder; one entry per record, so a duplicate or a lost
    line differs) and every checkpoint of its runs."""
    from dataclasses import asdict

    from facekd.experiments.results import read_results

    records = []
    for rec in read_results(w / "results.jsonl"):
        fields = {k: v for k, v in asdict(rec).items() if k not in RESULT_TIMINGS}
        fields["run"] = rec.run and str(Path(rec.run).relative_to(w))
        records.append(json.dumps(fields, sort_keys=True))
    out: dict = {"results": "\n".join(sorted(records)).encode()}
    out.update(run_tensors(w / "runs"))
    return out


def torn_results(results: Path) -> list[str]:
    """What reading the results file after a kill refuses (a torn last line is skipped)."""
    from facekd.errors import FacekdError
    from facekd.experiments.results import read_results

    try:
        read_results(results)
    except FacekdError as exc:
        return [str(exc)]
    return []


def compare(a: dict, b: dict) -> tuple[bool, float]:
    """(bit for bit, largest absolute difference) between two output dicts."""
    if set(a) != set(b):
        return False, float("inf")
    exact, worst = True, 0.0
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, bytes):
            if x != y:
                return False, float("inf")
            continue
        if x.shape != y.shape:
            return False, float("inf")
        if not np.array_equal(x, y):
            exact = False
            worst = max(worst, float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()))
    return exact, worst


def _run(argv: list[str], env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def sweep(case: Case, base: Path, kills: int, rng: random.Random, say: Callable[[str], None] = print,
          progress: Callable[[dict], None] = lambda row: None) -> dict:
    """One command's row: a reference run, then ``kills`` kill-and-rerun rounds
    (``progress`` gets the row after each round)."""
    ref_dir = base / f"{case.name}-ref"
    stamp = ref_dir / "reference.json"  # a reference run kept from an earlier sweep in the same --work
    if stamp.is_file():
        duration = json.loads(stamp.read_text())["seconds"]
    else:
        shutil.rmtree(ref_dir, ignore_errors=True)
        t0 = time.monotonic()
        done = _run(case.run(ref_dir), case.env(ref_dir))
        duration = time.monotonic() - t0
        if done.returncode != 0:
            raise RuntimeError(f"{case.name}: the reference run failed: {done.stderr[-1500:]}")
        stamp.write_text(json.dumps({"seconds": duration}))
    reference = case.outputs(ref_dir)
    runs = [duration]  # whole runs seen: the reference, then rounds that ended before their kill
    row = {"command": case.name, "kills": 0, "finished": 0, "bit_for_bit": 0, "max_diff": 0.0,
           "reference_s": round(duration, 1), "typical_s": round(duration, 1),
           "kill_at_s": [], "torn_after_kill": 0, "ended_before_kill": 0, "failures": []}
    for k in range(3 * kills):  # a round whose command ends before its kill is not counted
        if row["kills"] == kills:
            break
        work = base / f"{case.name}-kill{k}-{rng.randrange(10**6)}"
        shutil.rmtree(work, ignore_errors=True)
        when = rng.uniform(0.02, 0.98) * duration
        t0 = time.monotonic()
        proc = subprocess.Popen(case.run(work), env={**os.environ, **case.env(work)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=when)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the command and any workers it started
            except ProcessLookupError:  # it ended in between
                pass
            proc.wait()
        if proc.returncode != -signal.SIGKILL:
            row["ended_before_kill"] += 1
            say(f"{case.name} round {k}: the command ended (exit {proc.returncode}) before its kill at {when:.1f}s")
            if proc.returncode == 0:  # a whole run: T follows the machine's load
                runs.append(time.monotonic() - t0)
                duration = statistics.median(runs)
                row["typical_s"] = round(duration, 1)
            progress(row)
            continue
        row["kills"] += 1
        row["kill_at_s"].append(round(when, 2))
        torn = case.after_kill(work)
        if torn:
            row["torn_after_kill"] += 1
            row["failures"].append(f"kill at {when:.1f}s left half-written: {'; '.join(torn)}")
            say(f"{case.name} kill {k} at {when:.1f}s: HALF-WRITTEN {'; '.join(torn)}")
        again = _run(case.rerun(work), case.env(work))
        if again.returncode != 0:
            row["failures"].append(f"kill at {when:.1f}s: rerun exit {again.returncode}: {again.stderr.strip()[-300:]}")
            say(f"{case.name} kill {k} at {when:.1f}s: rerun FAILED")
            progress(row)
            continue
        row["finished"] += 1
        exact, diff = compare(reference, case.outputs(work))
        row["bit_for_bit"] += exact
        row["max_diff"] = max(row["max_diff"], diff)
        if not exact:
            row["failures"].append(f"kill at {when:.1f}s: the rerun differs (largest difference {diff:.3g})")
        say(f"{case.name} kill {k} at {when:.1f}s of {duration:.1f}s: {'bit for bit' if exact else f'max diff {diff:.3g}'}")
        progress(row)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| command | kills | half-written after a kill | reruns finished | bit for bit | "
             "largest difference otherwise | reference run (s) | T at the end (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "—" if r["bit_for_bit"] == r["finished"] else f"{r['max_diff']:.3g}"
        lines.append(f"| {r['command']} | {r['kills']} | {r['torn_after_kill']} | {r['finished']} | {r['bit_for_bit']} "
                     f"| {diff} | {r['reference_s']} | {r['typical_s']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20, help="kills per command (default 20)")
    ap.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated subset of " + ",".join(COMMANDS))
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary folder)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import tempfile

    base = args.work or Path(tempfile.mkdtemp(prefix="facekd-kill-sweep-"))
    base.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    cases = build_cases(base / "inputs")
    rows: list[dict] = []

    def write(current: list[dict]) -> None:  # after every round: a sweep stopped early keeps its rounds
        if args.json:
            args.json.write_text(json.dumps(current, indent=2))

    for name in args.commands.split(","):
        row = sweep(cases[name], base, args.kills, rng, say=lambda m: print(m, flush=True),
                    progress=lambda r: write([*rows, r]))
        rows.append(row)
        write(rows)
    print(table(rows))


if __name__ == "__main__":
    main()
