"""Kill -9 each long facekd command at random moments, rerun it, compare with an
uninterrupted run (issue 30).

    nice -n 15 python eval/kill_sweep.py [--kills 20] [--commands align,pack,...] [--json OUT] [--seed 0]

At CI-friendly sizes on tiny synthetic data (noise photos and crops, a student5 a few
thousand parameters wide, one thread, fp32, no compile, no augmentation): for each
command, one uninterrupted reference run (its duration T), then ``--kills`` rounds of:
start the command fresh, SIGKILL its process group after a uniform random 2-98% of T,
rerun it (``--resume`` where the command has it) to the end, compare its outputs with the
reference. Printed and written as a table: command, kills, reruns that finished, reruns
that matched bit for bit, the largest difference seen otherwise.

The commands: ``align`` (resumes from its state file), ``pack``, ``distill`` with
``teacher_mode: cache`` (teacher-output caching: its cache file must be whole or absent
after a kill), ``train``, ``prune``, ``multiexit``, ``export``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from PIL import Image

COMMANDS = ("align", "pack", "train", "distill", "prune", "multiexit", "export")
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
    return {"align": align, "pack": pack, "train": train_like("train", cfg), "distill": distill,
            "prune": train_like("prune", prune_cfg), "multiexit": train_like("multiexit", multiexit_cfg), "export": export}


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


def sweep(case: Case, base: Path, kills: int, rng: random.Random, say: Callable[[str], None] = print) -> dict:
    """One command's row: a reference run, then ``kills`` kill-and-rerun rounds."""
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
    row = {"command": case.name, "kills": 0, "finished": 0, "bit_for_bit": 0, "max_diff": 0.0,
           "reference_s": round(duration, 1), "failures": []}
    for k in range(kills):
        work = base / f"{case.name}-kill{k}-{rng.randrange(10**6)}"
        shutil.rmtree(work, ignore_errors=True)
        when = rng.uniform(0.02, 0.98) * duration
        proc = subprocess.Popen(case.run(work), env={**os.environ, **case.env(work)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=when)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the command and any workers it started
            proc.wait()
        row["kills"] += 1
        again = _run(case.rerun(work), case.env(work))
        if again.returncode != 0:
            row["failures"].append(f"kill at {when:.1f}s: rerun exit {again.returncode}: {again.stderr.strip()[-300:]}")
            say(f"{case.name} kill {k} at {when:.1f}s: rerun FAILED")
            continue
        row["finished"] += 1
        exact, diff = compare(reference, case.outputs(work))
        row["bit_for_bit"] += exact
        row["max_diff"] = max(row["max_diff"], diff)
        say(f"{case.name} kill {k} at {when:.1f}s of {duration:.1f}s: {'bit for bit' if exact else f'max diff {diff:.3g}'}")
    return row


def table(rows: list[dict]) -> str:
    lines = ["| command | kills | reruns finished | bit for bit | largest difference otherwise | reference run (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        diff = "—" if r["bit_for_bit"] == r["finished"] else f"{r['max_diff']:.3g}"
        lines.append(f"| {r['command']} | {r['kills']} | {r['finished']} | {r['bit_for_bit']} | {diff} | {r['reference_s']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    rows = []
    for name in args.commands.split(","):
        rows.append(sweep(cases[name], base, args.kills, rng))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
