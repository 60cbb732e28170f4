"""Two runs sharing one crop cache or one teacher-output cache (issue 30): started
together, both finish with the caches a single run makes; a cache file being written
is whole or absent to a reader.

Each test runs ``FACEKD_CONCURRENCY_ROUNDS`` times in a row (default 1; 20 for
docs/reliability.md), against references made once::

    FACEKD_CONCURRENCY_ROUNDS=20 nice -n 10 .venv/bin/python -m pytest -q -x tests/test_concurrency.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.align.folder import STATE_NAME, AlignOptions, align_folder
from facekd.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "eval"))
from kill_sweep import ckpt_tensors, facekd, folder_bytes, make_crops, make_photos, tiny_config  # noqa: E402

ROUNDS = range(int(os.environ.get("FACEKD_CONCURRENCY_ROUNDS", "1")))

_WRITER = """
import sys, torch
from facekd.train.checkpoint import save_checkpoint
path, n = sys.argv[1], int(sys.argv[2])
blobs = [torch.full((256, 1024), float(v)) for v in (1, 2)]
for i in range(n):
    save_checkpoint(path, {"embeddings": blobs[i % 2], "i": i})
"""


@pytest.mark.parametrize("round_", ROUNDS)
def test_a_cache_file_being_written_is_whole_or_absent(tmp_path, round_):
    """A writer replaces a 1 MB teacher-output file 150 times (the cache's own writer,
    facekd.train.checkpoint.save_checkpoint); a reader loading it all the while only ever
    sees a whole file."""
    path = tmp_path / "teacher_outputs" / "key.pt"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "150"])
    seen = 0
    try:
        while writer.poll() is None or seen == 0:
            if path.is_file():
                blob = load_checkpoint(path)  # a half-written file would fail to load here
                value = float(blob["embeddings"][0, 0])
                assert value in (1.0, 2.0) and torch.all(blob["embeddings"] == value)
                seen += 1
            if writer.poll() is not None and not path.is_file():
                break
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0 and seen > 0
    assert not [p for p in path.parent.iterdir() if p.name != "key.pt"], "temporary files left behind"


_ALIGN = """
import sys
from facekd.align.folder import AlignOptions, align_folder
align_folder(sys.argv[1], sys.argv[2], AlignOptions(workers=1))
"""


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    """Noise photos and their crops aligned by one run alone."""
    root = tmp_path_factory.mktemp("align")
    src = make_photos(root / "photos", people=3, per=6)
    (src / "pairs.txt").write_text("1\t1\n")  # metadata is copied too
    align_folder(src, root / "reference", AlignOptions(workers=1))
    return src, root / "reference"


@pytest.mark.slow  # a minute or more of CPU: separate processes importing torch
@pytest.mark.parametrize("round_", ROUNDS)
def test_two_aligns_into_one_crop_cache(photos, tmp_path, round_):
    src, reference = photos
    shared = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-c", _ALIGN, str(src), str(shared)], stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-1500:]
    assert folder_bytes(shared, skip=("align_report.json",)) == folder_bytes(reference, skip=("align_report.json",))
    again = align_folder(src, shared, AlignOptions(workers=1))  # the shared state reads back whole
    assert again.processed == 0 and again.resumed == again.images == 18
    assert not list(shared.rglob(".*.tmp"))
    assert (shared / STATE_NAME).is_file()


@pytest.fixture(scope="module")
def distill_setup(tmp_path_factory) -> tuple[Path, torch.Tensor, dict]:
    """A distillation config over a tiny teacher, and what one run alone makes: its
    teacher-output cache entry and its student."""
    root = tmp_path_factory.mktemp("distill")
    crops = make_crops(root / "crops", people=4, per=6)
    cfg = tiny_config(root / "train.yaml", crops, train={"epochs": 1})
    subprocess.run(facekd("train", str(cfg), "--out", str(root / "teacher")), check=True, capture_output=True,
                   timeout=600)
    dcfg = tiny_config(root / "distill.yaml", crops, train={"epochs": 1},
                       teacher={"model": str(root / "teacher/checkpoints/last.pt")},
                       distill={"terms": [{"name": "featurenorm", "weight": 1.0}], "teacher_mode": "cache"})
    solo_cache = root / "solo-cache"
    subprocess.run(facekd("distill", str(dcfg), "--out", str(root / "solo")), check=True, capture_output=True,
                   env={**os.environ, "FACEKD_CACHE": str(solo_cache)}, timeout=600)
    solo = load_checkpoint(next((solo_cache / "teacher_outputs").glob("*.pt")))["embeddings"]
    return dcfg, solo, ckpt_tensors(root / "solo/checkpoints/last.pt")


@pytest.mark.slow  # a minute or more of CPU: separate processes importing torch
@pytest.mark.parametrize("round_", ROUNDS)
def test_two_distills_share_one_teacher_output_cache(distill_setup, tmp_path, round_):
    dcfg, solo, solo_student = distill_setup
    cache = tmp_path / "cache"
    env = {**os.environ, "FACEKD_CACHE": str(cache)}
    procs = [subprocess.Popen(facekd("distill", str(dcfg), "--out", str(tmp_path / f"run{i}")), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-1500:]
    files = sorted((cache / "teacher_outputs").glob("*"))
    assert [f.suffix for f in files] == [".pt"], f"one cache entry, no temporary files: {files}"
    assert torch.equal(load_checkpoint(files[0])["embeddings"], solo)
    a, b = (ckpt_tensors(tmp_path / r / "checkpoints/last.pt") for r in ("run0", "run1"))
    assert all(np.array_equal(a[k], b[k]) and np.array_equal(a[k], solo_student[k]) for k in solo_student)
