"""Runs table rows (and the teacher runs they need) and appends their results."""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from facekd.config import apply_overrides, from_dict, read_config_tree
from facekd.distill.config import DistillConfig
from facekd.distill.objective import make_distill_objective
from facekd.errors import FacekdError
from facekd.experiments.results import append_result, read_results
from facekd.experiments.tables import PREREQS, PUBLIC_TEACHERS, TABLES, Protocol, Row
from facekd.models import build_backbone
from facekd.train.checkpoint import CHECKPOINT, load_checkpoint
from facekd.train.config import TrainConfig
from facekd.train.loop import fit


def cpu_ms_per_face(backbone: str, backbone_args: dict, repeats: int = 30) -> float:
    """Median PyTorch eager latency for one face, batch 1, one thread (this machine's CPU)."""
    net = build_backbone(backbone, **backbone_args).eval()
    x = torch.zeros(1, 3, *net.cfg.input_size)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(5):
                net(x)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    return 1000 * statistics.median(times)


@dataclass
class Runner:
    """Runs table rows (and the teachers they need) and appends their results."""

    repo: Path
    protocol: Protocol
    runs: Path
    results: Path
    overrides: list[str] = field(default_factory=list)
    say: Callable[[str], None] = print
    deadline: float | None = None
    _prereq_ckpt: dict = field(default_factory=dict)

    def _raw(self, config: str, backbone: str, seed: int, epochs_scale: float = 1.0) -> dict:
        raw = read_config_tree(config)
        raw.setdefault("model", {})["backbone"] = backbone
        if backbone in self.protocol.shrink:
            raw["model"]["backbone_args"] = self.protocol.shrink[backbone]
        raw.setdefault("train", {})["seed"] = seed
        raw = apply_overrides(raw, [*self.protocol.overrides, *self.overrides])
        if epochs_scale != 1.0:
            epochs = raw["train"].get("epochs", 40)
            raw["train"]["epochs"] = max(1, round(epochs * epochs_scale))
        return raw

    def _fit(self, raw: dict, run: Path, distill: bool) -> dict:
        if distill:
            cfg = from_dict(DistillConfig, raw, str(run))
            maker = make_distill_objective
        else:
            cfg = from_dict(TrainConfig, raw, str(run))
            maker = None
        return fit(cfg, run, resume=(run / CHECKPOINT).is_file(), say=self.say, make_objective=maker)

    def prerequisite(self, key: str, seed: int) -> Path:
        """The checkpoint of a teacher run, trained here unless this command already did."""
        if (key, seed) in self._prereq_ckpt:
            return self._prereq_ckpt[(key, seed)]
        backbone, scale = PREREQS[key]
        config = self.protocol.teacher if backbone == "resnet27" else self.protocol.base
        raw = self._raw(config, backbone, seed, scale)
        run = self.runs / f"{key}-seed{seed}"
        last = run / CHECKPOINT
        done = last.is_file() and load_checkpoint(last)["epoch"] >= raw["train"].get("epochs", 40)
        if not done:
            self.say(f"== prerequisite {key} (seed {seed}): {backbone}, {raw['train'].get('epochs')} epochs -> {run}")
            t0 = time.perf_counter()
            metrics = self._fit(raw, run, distill=False)
            known = {(r["protocol"], r["table"], r["row"], r["seed"]) for r in read_results(self.results)}
            if (self.protocol.name, "teachers", key, seed) not in known and "lfw_acc" in metrics:
                append_result(self.results, self._record("teachers", key, backbone, seed, raw, metrics, run, t0))
        self._prereq_ckpt[(key, seed)] = last
        return last

    def run_row(self, row: Row, seed: int) -> dict:
        raw = self._raw(self.protocol.base, row.student, seed)
        if row.kind == "distill":
            if row.teacher in PUBLIC_TEACHERS:
                name, weights = PUBLIC_TEACHERS[row.teacher]
                raw["teacher"] = {"model": name, "weights": weights}
            elif row.teacher:
                raw["teacher"] = {"model": str(self.prerequisite(row.teacher, seed))}
            raw["distill"] = {"terms": [json.loads(t) for t in row.terms], "teacher_weighting": row.weighting}
        slug = "".join(c if c.isascii() and c.isalnum() else "_" for c in f"{row.table}-{row.name}")[:80]
        run = self.runs / f"{slug}-seed{seed}"
        self.say(f"== table {row.table}: {row.name} (seed {seed}) -> {run}")
        t0 = time.perf_counter()
        metrics = self._fit(raw, run, distill=row.kind == "distill")
        return self._record(row.table, row.name, row.student, seed, raw, metrics, run, t0)

    def _record(self, table: str, name: str, student: str, seed: int, raw: dict, metrics: dict, run: Path,
                t0: float) -> dict:
        if "lfw_acc" not in metrics:
            raise FacekdError(f"{run}: no LFW result (eval.every is 0?)")
        args = raw["model"].get("backbone_args", {})
        params = sum(p.numel() for p in build_backbone(student, **args).parameters())
        return {
            "protocol": self.protocol.name, "table": table, "row": name, "seed": seed,
            "student": student, "lfw_acc": metrics["lfw_acc"], "lfw_std": metrics["lfw_std"],
            "lfw_pairs": metrics.get("lfw_pairs"), "flip": raw.get("eval", {}).get("flip", False),
            "epochs": metrics.get("epoch"), "params": params, "mb": params * 4 / 2**20,
            "cpu_ms": cpu_ms_per_face(student, args), "seconds": round(time.perf_counter() - t0, 1),
            "run": str(run), "machine": platform.node(), "cpu": platform.processor() or platform.machine(),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": str(torch.__version__),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def run(self, tables: list[str], seeds: int) -> int:
        """Runs every wanted row that has no result yet; returns how many remain."""
        done = {(r["protocol"], r["table"], r["row"], r["seed"]) for r in read_results(self.results)}
        todo = [
            (row, seed)
            for t in tables
            for row in TABLES[t]
            if row.smoke or not self.protocol.smoke_only
            for seed in range(seeds)
            if (self.protocol.name, row.table, row.name, seed) not in done
        ]
        self.say(f"{len(todo)} runs to do ({len(done)} results already in {self.results})")
        for k, (row, seed) in enumerate(todo):
            if self.deadline is not None and time.time() > self.deadline:
                self.say(f"budget reached; {len(todo) - k} runs left: run the same command again to continue")
                return len(todo) - k
            append_result(self.results, self.run_row(row, seed))
        return 0
