"""Runs table rows (and the teacher runs they need) and appends their results."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from filelock import FileLock, Timeout

from facekd.config import apply_overrides, from_dict, read_config_tree
from facekd.distill.config import DistillConfig
from facekd.distill.objective import make_distill_objective
from facekd.errors import FacekdError
from facekd.experiments.results import Result, append_result, read_results
from facekd.experiments.tables import PREREQS, TABLES, Protocol, Row, teacher_section
from facekd.hub import resolve
from facekd.models import build_backbone
from facekd.runtime.timing import measure_latency, torch_call
from facekd.train.checkpoint import CHECKPOINT, load_checkpoint
from facekd.train.config import TrainConfig
from facekd.train.loop import fit
from facekd.train.run_log import lfw_curve, work_seconds
from facekd.train.speed import cpu_info


def cpu_ms_per_face(backbone: str, backbone_args: dict, repeats: int = 30) -> float:
    """Median PyTorch eager latency for one face, batch 1, one thread (this machine's CPU)."""
    return _one_thread_ms(build_backbone(backbone, **backbone_args).eval(), repeats)


def _one_thread_ms(net: torch.nn.Module, rounds: int) -> float:
    before = torch.get_num_threads()
    try:
        return measure_latency({"net": torch_call(net, threads=1)}, rounds=rounds)["net"].median_ms
    finally:
        torch.set_num_threads(before)


def embedder_ms_per_face(resolved, repeats: int = 20) -> float:
    """Median latency of one face through a ready model (a hub ``ResolvedModel``): its
    PyTorch backbone on one thread, else its own embedder (dlib's runs as its library
    does)."""
    if resolved.backbone is not None:
        return _one_thread_ms(resolved.backbone.eval(), repeats)
    embedder = resolved.embedder()
    crop = np.zeros((1, *resolved.pre.input_size, 3), np.uint8)
    return measure_latency({"embedder": lambda: embedder(crop)}, rounds=repeats)["embedder"].median_ms


def ready_teacher_records(protocol: Protocol, lfw: dict) -> list[Result]:
    """A "teachers" record for each of the protocol's ready teachers whose LFW figure is in
    ``lfw`` (the JSON of eval/teacher_lfw.py: "<model> flip" preferred, then "<model>
    plain"; the ensemble as "ensemble a + b + c"), with its size and CPU latency (an
    ensemble: the sum of its members')."""
    out = []
    for key, section in protocol.teachers.items():
        if key == "teacher":
            continue
        members = section.get("members", [section])
        names = [m["model"] for m in members]
        found = [f"ensemble {' + '.join(names)}"] if "members" in section else [f"{key} flip", f"{key} plain"]
        hit = next((k for k in found if k in lfw), None)
        if hit is None:
            continue
        models = [resolve(m["model"], m.get("weights")) for m in members]
        params = sum(sum(p.numel() for p in r.backbone.parameters()) for r in models if r.backbone is not None)
        ms = sum(embedder_ms_per_face(r) for r in models)
        r = lfw[hit]
        out.append(Result(
            protocol=protocol.name, table="teachers", row=key, seed=0, student=" + ".join(names),
            lfw_acc=r["accuracy"], lfw_std=r["std"], lfw_pairs=r.get("pairs"), flip="flip" in hit,
            recipe=hit, params=params, mb=params * 4 / 2**20, cpu_ms=ms, machine=platform.node(),
            cpu=cpu_info().describe(), torch=str(torch.__version__), finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        ))
    return out


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
    packs: Path | None = None  # where the ready teachers' crop packs are (their file names)
    _prereq_ckpt: dict = field(default_factory=dict)

    def _raw(self, config: str, backbone: str, seed: int, epochs_scale: float = 1.0, row_overrides=()) -> dict:
        raw = read_config_tree(config)
        raw.setdefault("model", {})["backbone"] = backbone
        if backbone in self.protocol.shrink:
            raw["model"]["backbone_args"] = self.protocol.shrink[backbone]
        raw.setdefault("train", {})["seed"] = seed
        raw = apply_overrides(raw, [*self.protocol.overrides, *row_overrides, *self.overrides])
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
        # Always resume: a run killed before its first checkpoint leaves only its log, which a
        # fresh fit would refuse as another run's (a run without a checkpoint starts afresh).
        return fit(cfg, run, resume=True, say=self.say, make_objective=maker)

    def prerequisite(self, key: str, seed: int) -> Path:
        """The checkpoint of a teacher run, trained here unless this command already did."""
        if (key, seed) in self._prereq_ckpt:
            return self._prereq_ckpt[(key, seed)]
        backbone, scale = PREREQS[key]
        config = self.protocol.teacher if backbone == "resnet27" else self.protocol.base
        raw = self._raw(config, backbone, seed, scale)
        run = self.runs / f"{key}-seed{seed}"
        last = run / CHECKPOINT
        # Another process of the same suite may be training it: wait for that one.
        with self._lock(run):
            done = last.is_file() and load_checkpoint(last)["epoch"] >= raw["train"].get("epochs", 40)
            if done:  # trained by an earlier command, perhaps killed before it appended the record
                t0, metrics = None, load_checkpoint(last).get("metrics", {})
            else:
                self.say(f"== prerequisite {key} (seed {seed}): {backbone}, {raw['train'].get('epochs')} epochs -> {run}")
                t0 = time.perf_counter()
                metrics = self._fit(raw, run, distill=False)
            known = {r.key() for r in read_results(self.results)}
            if (self.protocol.name, "teachers", key, seed) not in known and "lfw_acc" in metrics:
                self._append(self._record("teachers", key, backbone, seed, raw, metrics, run, t0))
        self._prereq_ckpt[(key, seed)] = last
        return last

    def row_config(self, row: Row, seed: int) -> dict:
        """The raw config a row trains with: the protocol's base with the row's student,
        its teacher (a ready one of the protocol's short list, or a prerequisite run, trained
        here if needed) and its terms."""
        raw = self._raw(self.protocol.base, row.student, seed, row_overrides=row.overrides)
        if row.kind == "distill":
            teacher = raw.setdefault("teacher", {})
            if row.teacher in self.protocol.teachers:
                teacher.update(teacher_section(self.protocol.teachers[row.teacher], self.packs))
            elif row.teacher:
                teacher["model"] = str(self.prerequisite(row.teacher, seed))
            raw.setdefault("distill", {}).update(
                {"terms": [json.loads(t) for t in row.terms], "teacher_weighting": row.weighting})
        return raw

    def run_dir(self, row: Row, seed: int) -> Path:
        slug = "".join(c if c.isascii() and c.isalnum() else "_" for c in f"{row.table}-{row.name}")[:80]
        return self.runs / f"{slug}-seed{seed}"

    @staticmethod
    def _lock(run: Path) -> FileLock:
        """The lock of one run (``RUN.lock`` beside its folder): the operating system drops
        it when its process ends, so a killed run never blocks the next command."""
        run.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(run) + ".lock")

    def _append(self, rec: Result) -> None:
        """Appends a record, one process at a time."""
        self.results.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.results) + ".lock"):
            append_result(self.results, rec)

    def run_row(self, row: Row, seed: int) -> Result:
        raw = self.row_config(row, seed)
        run = self.run_dir(row, seed)
        self.say(f"== table {row.table}: {row.name} (seed {seed}) -> {run}")
        t0 = time.perf_counter()
        metrics = self._fit(raw, run, distill=row.kind == "distill")
        return self._record(row.table, row.name, row.student, seed, raw, metrics, run, t0)

    def _record(self, table: str, name: str, student: str, seed: int, raw: dict, metrics: dict, run: Path,
                t0: float | None) -> Result:
        """The record of a finished run (``t0``: when it started; None: trained by an
        earlier command, its time not known here)."""
        if "lfw_acc" not in metrics:
            raise FacekdError(f"{run}: no LFW result (eval.every is 0?)")
        args = raw["model"].get("backbone_args", {})
        params = sum(p.numel() for p in build_backbone(student, **args).parameters())
        # How the trainer ran (facekd.train.speed.TrainedWith, in the checkpoint's metrics);
        # absent from a checkpoint older than the record: those fields stay None.
        how = metrics.get("trained_with") or {}
        return Result(
            protocol=self.protocol.name, table=table, row=name, seed=seed, student=student,
            lfw_acc=metrics["lfw_acc"], lfw_std=metrics["lfw_std"], lfw_pairs=metrics.get("lfw_pairs"),
            flip=raw.get("eval", {}).get("flip", False), epochs=metrics.get("epoch"), params=params,
            lfw_curve=lfw_curve(run) or None,
            mb=params * 4 / 2**20, cpu_ms=cpu_ms_per_face(student, args),
            seconds=None if t0 is None else round(time.perf_counter() - t0, 1), work_seconds=work_seconds(run),
            run=str(run), machine=platform.node(), cpu=how.get("cpu") or cpu_info().describe(),
            device=how.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"), gpu=how.get("gpu"),
            precision=how.get("precision"), channels_last=how.get("channels_last"), compile=how.get("compile"),
            loader=how.get("loader"), torch=str(torch.__version__), finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        )

    def plan(self, tables: list[str], seeds: int | None = None, rows: list[str] | None = None) -> list[tuple[Row, int]]:
        """The runs still to do, table by table: every row's first seed, then the further
        seeds of the rows that get several (``seeds`` instead of each row's own count; a
        smoke protocol runs one). ``rows``: keep only the rows whose name contains one of
        these texts (case-insensitive); a text that names no row of ``tables`` is an error."""
        wanted = [w.lower() for w in rows or ()]
        if wanted:
            names = [r.name for t in tables for r in TABLES[t]]
            unmatched = [w for w in wanted if not any(w in n.lower() for n in names)]
            if unmatched:
                raise FacekdError(f"--row {unmatched[0]!r} names no row of table(s) {', '.join(tables)}; "
                                  f"rows: {'; '.join(names)}")
        done = {r.key() for r in read_results(self.results)}
        if seeds is None and self.protocol.smoke_only:
            seeds = 1
        todo = []
        for t in tables:
            kept = [r for r in TABLES[t] if (r.smoke or not self.protocol.smoke_only) and not self.protocol.skips(r)
                    and (not wanted or any(w in r.name.lower() for w in wanted))]
            most = max((seeds or r.seeds for r in kept), default=0)
            todo += [(row, seed) for seed in range(most) for row in kept
                     if seed < (seeds or row.seeds) and (self.protocol.name, row.table, row.name, seed) not in done]
        return todo

    def run(self, tables: list[str], seeds: int | None = None, rows: list[str] | None = None) -> int:
        """Runs every wanted row that has no result yet; returns how many remain (those
        left at the deadline and those another process was running), counted from the
        results file when it returns, so runs other processes finished meanwhile are not.

        Several processes may share one suite (the same ``runs`` folder and results file,
        e.g. one per core or three on one GPU): each run is locked while it trains, a
        process skips the runs another one holds and the runs that finished meanwhile."""
        done = read_results(self.results)
        todo = self.plan(tables, seeds, rows)
        self.say(f"{len(todo)} runs to do ({len(done)} results already in {self.results})")
        for row, seed in todo:
            if self.deadline is not None and time.time() > self.deadline:
                left = len(self.plan(tables, seeds, rows))
                self.say(f"budget reached; {left} runs left: run the same command again to continue")
                return left
            lock = self._lock(self.run_dir(row, seed))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                self.say(f"== table {row.table}: {row.name} (seed {seed}): another process is running it; skipped")
                continue
            try:
                if (self.protocol.name, row.table, row.name, seed) in {r.key() for r in read_results(self.results)}:
                    continue  # finished by another process since the plan was made
                self._append(self.run_row(row, seed))
            finally:
                lock.release()
        return len(self.plan(tables, seeds, rows))
