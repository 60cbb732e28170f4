"""The results file (owner of the format): one JSON line per finished run, appended
durably; a line torn by a kill is skipped.

Each line is a :class:`Result`. Records written before a field existed read with that
field as None: nothing is filled in by guessing (the report says "not recorded").
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from facekd.config import from_dict
from facekd.errors import FacekdError


@dataclass(frozen=True)
class Result:
    """One finished run: what it trained, its LFW figure, its size and speed, and how
    (on what, with which settings) it was trained."""

    protocol: str
    row: str
    lfw_acc: float
    lfw_std: float
    table: str | None = None  # "A".."D", "teachers", "sweep"
    seed: int | None = None
    student: str | None = None  # the backbone trained (a ready teacher: its model names)
    lfw_pairs: int | None = None
    flip: bool | None = None  # flip-fused embeddings on LFW
    epochs: int | None = None
    params: int | None = None  # backbone parameters (0: a network run by another library)
    mb: float | None = None  # fp32 size of those parameters
    cpu_ms: float | None = None  # PyTorch eager, batch 1, one thread, on the machine that trained it
    seconds: float | None = None  # wall time of the command that finished the run (pauses and all)
    work_seconds: float | None = None  # training + LFW time summed over its epochs (facekd.train.run_log)
    run: str | None = None  # the run folder
    recipe: str | None = None  # a ready teacher: the LFW figure taken ("<model> flip")
    overrides: list[str] | None = None  # the recipe sweep: the variant's --set overrides
    teacher: str | None = None
    terms: list[dict] | None = None
    lfw_data: str | None = None
    lfw_evaluated_on: str | None = None
    auc: float | None = None
    eer: float | None = None
    lfw_curve: list[list[float]] | None = None  # [epoch, LFW %] at each evaluation during training
    note: str | None = None  # what a reader must know about this run (written by hand)
    # How it was trained (facekd.train.speed.TrainedWith; None: not recorded).
    precision: str | None = None  # the autocast dtype actually used: bf16 | fp16 | fp32
    channels_last: bool | None = None
    compile: bool | None = None
    loader: str | None = None  # the batch loader that ran (facekd.train.loaders)
    device: str | None = None  # cpu | cuda (older GPU records: the GPU's name)
    gpu: str | None = None  # the GPU's name, on CUDA
    cpu: str | None = None  # the CPU: model, cores, torch capability, native bf16 flags
    machine: str | None = None  # host name
    torch: str | None = None
    finished: str | None = None

    def key(self) -> tuple:
        """What identifies a run in a results file: protocol, table, row and seed."""
        return self.protocol, self.table, self.row, self.seed

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, ensure_ascii=False)


def parse_result(data: dict, where: str = "result") -> Result:
    """A :class:`Result` from one decoded line; an unknown key or a wrong type is an error
    naming ``where``."""
    if not isinstance(data, dict):
        raise FacekdError(f"{where}: a JSON object expected, got {type(data).__name__}")
    return from_dict(Result, data, where)


def read_results(path: Path) -> list[Result]:
    """Every record of a results file ([] when there is none); lines torn by a kill are
    skipped."""
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        out.append(parse_result(data, f"{path}:{i}"))
    return out


def append_result(path: Path, rec: Result) -> None:
    """Appends one record as a line and syncs it to disk (a kill leaves at most a torn
    last line, which :func:`read_results` skips). After a torn line the record starts a
    line of its own, so it is not read as part of the torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        end = f.seek(0, os.SEEK_END)
        torn = end > 0 and f.seek(end - 1) >= 0 and f.read(1) != b"\n"
        f.write((("\n" if torn else "") + rec.to_json() + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
