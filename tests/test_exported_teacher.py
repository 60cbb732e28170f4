"""eval/export_teacher_outputs.py + eval/distill_exported_teacher.py: distilling on a machine
that has the teacher's outputs but not the teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from test_distill_run import _synthetic_pack, _teacher_checkpoint

REPO = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, pack: Path, teacher: str) -> Path:
    cfg = {
        "model": {"backbone": "student5", "backbone_args": {"widths": [4, 8, 8, 8, 16]}, "head": "softmax"},
        "teacher": {"model": teacher},
        "distill": {"terms": [{"name": "featurenorm", "weight": 10.0}], "teacher_mode": "cache"},
        "data": {"train": [str(pack)], "workers": 0, "augment": {"flip": 0.0, "affine_p": 0.0, "color_p": 0.0, "gray_p": 0.0}},
        "train": {"device": "cpu", "epochs": 1, "batch_size": 4, "log_every": 1, "compile": False, "seed": 3},
        "eval": {"every": 0},
    }
    path = tmp_path / f"cfg-{pack.stem}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FACEKD_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


def _losses(run: Path) -> list[float]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["featurenorm"] for r in recs if r.get("kind") == "train"]


def test_exported_outputs_teach_exactly_as_the_teacher_and_refuse_other_data(tmp_path):
    _synthetic_pack(tmp_path / "p.fkpack", n=12)
    _synthetic_pack(tmp_path / "q.fkpack", n=9)
    _teacher_checkpoint(tmp_path / "teacher.pt")
    cfg = _config(tmp_path, tmp_path / "p.fkpack", str(tmp_path / "teacher.pt"))

    # The reference: the teacher itself, through facekd's own cache.
    ref = _run("-m", "facekd.cli", "distill", str(cfg), "--out", str(tmp_path / "ref"), cache=tmp_path / "c1")
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = _run(str(REPO / "eval/export_teacher_outputs.py"), str(cfg), str(tmp_path / "t.pt"), cache=tmp_path / "c2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(12, 32) embeddings" in out.stdout

    # The teacher is gone: its checkpoint is deleted, and the run still matches step for step.
    (tmp_path / "teacher.pt").unlink()
    small = tmp_path / "small.pt"
    got = _run(str(REPO / "eval/distill_exported_teacher.py"), str(tmp_path / "t.pt"), str(cfg),
               "--out", str(tmp_path / "exp"), "--small", str(small), cache=tmp_path / "c3")
    assert got.returncode == 0, got.stderr[-2000:]
    want, have = _losses(tmp_path / "ref"), _losses(tmp_path / "exp")
    assert len(want) == 3 and have == want  # 12 crops / batch 4, same seed, same targets

    import torch

    blob = torch.load(small, map_location="cpu", weights_only=True)
    assert blob["backbone"] == "student5" and all(k.startswith("backbone.") for k in blob["model"])
    assert {v.dtype for v in blob["model"].values() if v.is_floating_point()} == {torch.float16}

    # Another training set (9 crops) is refused, naming the file.
    other = _config(tmp_path, tmp_path / "q.fkpack", str(tmp_path / "teacher.pt"))
    bad = _run(str(REPO / "eval/distill_exported_teacher.py"), str(tmp_path / "t.pt"), str(other),
               "--out", str(tmp_path / "bad"), cache=tmp_path / "c4")
    assert bad.returncode != 0 and "t.pt: exported for 12 crops" in bad.stdout + bad.stderr
