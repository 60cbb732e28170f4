"""A run's metrics: one JSON object per line in ``metrics.jsonl``, and TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

from facekd.io_utils import atomic_write_bytes


def _epoch_records(run_dir: Path) -> list[dict]:
    """The ``kind: epoch`` records of a run's ``metrics.jsonl``, in file order (a line
    torn by a kill skipped); [] without a log."""
    path = run_dir / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        if isinstance(rec, dict) and rec.get("kind") == "epoch":
            out.append(rec)
    return out


def lfw_curve(run_dir: Path) -> list[list[float]]:
    """[epoch, LFW %] of each evaluation a run logged, in order (a resumed run's dropped
    lines are already gone); [] without a log or evaluations."""
    out = {int(r["epoch"]): round(float(r["lfw_acc"]), 4)
           for r in _epoch_records(run_dir) if isinstance(r.get("lfw_acc"), (int, float))}
    return [[e, a] for e, a in sorted(out.items())]


def work_seconds(run_dir: Path) -> float | None:
    """Seconds a run spent training and evaluating: each epoch's ``seconds`` plus its
    ``eval_seconds``, from the last record of each epoch (an epoch taken again after a
    kill counts once). Time between a kill and its resume is not in it, unlike a wall
    clock around the command; a process stopped (SIGSTOP) during an epoch is charged
    for the stop, as the trainer times epochs by the wall clock. None without a log or
    epoch records."""
    epochs: dict[int, float] = {}
    for r in _epoch_records(run_dir):
        if isinstance(r.get("seconds"), (int, float)):
            ev = r.get("eval_seconds")
            epochs[int(r["epoch"])] = float(r["seconds"]) + (float(ev) if isinstance(ev, (int, float)) else 0.0)
    return round(sum(epochs.values()), 1) if epochs else None


class RunLog:
    """Appends records to ``RUN_DIR/metrics.jsonl`` and scalars to ``RUN_DIR/tb``.

    Only the main process of a distributed run writes; on others every call is a no-op.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is a dependency; a trimmed install still trains
                self._tb = None
        self._f = self.path.open("a") if enabled else None

    def truncate_after(self, step: int) -> int:
        """Drops records past ``step`` (a run killed mid-epoch logged steps that its
        resumed run will take again); returns how many were dropped."""
        if not self.enabled or not self.path.is_file():
            return 0
        self._f.close()
        keep, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line torn by the kill
                dropped += 1
                continue
            if rec.get("step", 0) <= step:
                keep.append(line)
            else:
                dropped += 1
        atomic_write_bytes(self.path, "".join(k + "\n" for k in keep).encode())
        self._f = self.path.open("a")
        return dropped

    def write(self, record: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("epoch", "step", "kind") and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"{prefix}/{k}", v, record.get("step", 0))

    def close(self) -> None:
        if self._f:
            self._f.close()
        if self._tb is not None:
            self._tb.close()
