"""Worker pools fail fast: an initializer error, a task error or a dead worker is one
FacekdError within seconds, for each command that runs workers (issue 30, issue 28 item 6)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from facekd.align.folder import AlignOptions, align_folder
from facekd.align.template import get_template
from facekd.errors import FacekdError
from facekd.teachers.crops import detect_photos
from facekd.workers import run_in_workers

LIMIT_S = 60  # spawning two workers that import torch takes a few seconds on a busy CPU


def _fail_init(reason: str) -> None:
    raise ValueError(reason)


def _square(x: int) -> int:
    if x == 3:
        raise ZeroDivisionError("three is not allowed")
    return x * x


def _die(x: int) -> int:
    os._exit(9)


def _timed(fn):
    t0 = time.monotonic()
    with pytest.raises(FacekdError) as err:
        fn()
    elapsed = time.monotonic() - t0
    assert elapsed < LIMIT_S, f"took {elapsed:.0f} s"
    return str(err.value)


def test_results_in_order_when_all_is_well():
    assert list(run_in_workers(_square, [0, 1, 2, 4], 2, what="squares")) == [0, 1, 4, 16]


def test_initializer_error_is_one_clear_error():
    msg = _timed(lambda: list(run_in_workers(_square, range(50), 2, what="squares", initializer=_fail_init,
                                             initargs=("no weights here",))))
    assert "squares" in msg and "could not start" in msg and "ValueError: no weights here" in msg


def test_task_error_names_the_reason():
    msg = _timed(lambda: list(run_in_workers(_square, range(6), 2, what="squares", ordered=False)))
    assert "ZeroDivisionError: three is not allowed" in msg and "squares" in msg


def test_a_killed_worker_breaks_the_pool():
    msg = _timed(lambda: list(run_in_workers(_die, range(4), 2, what="dying")))
    assert "dying" in msg and "died" in msg


def _photos(root, n=17, size=(120, 100)):
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / f"p{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / f"p{i % 3}" / f"{i}.jpg")


def test_align_workers_that_cannot_start_fail_within_seconds(tmp_path):
    """The detector cannot start in the workers (a device that does not exist): one
    error naming the detector, not a pool that restarts workers forever."""
    _photos(tmp_path / "src")
    opts = AlignOptions(detector="mtcnn", device="nosuchdevice", workers=2)
    msg = _timed(lambda: align_folder(tmp_path / "src", tmp_path / "dst", opts))
    assert "mtcnn" in msg and "nosuchdevice" in msg and "could not start" in msg


def test_teacher_detection_workers_fail_fast(tmp_path):
    _photos(tmp_path / "src", n=4)
    files = sorted(str(p.relative_to(tmp_path / "src")) for p in (tmp_path / "src").rglob("*.jpg"))
    msg = _timed(lambda: detect_photos(tmp_path / "src", files, detector="nosuchdetector", workers=2))
    assert "nosuchdetector" in msg and "could not start" in msg


def test_align_on_workers_cuts_a_box_template(tmp_path):
    """facenet160 is a box geometry: the spawned workers (which import nothing that
    registers teacher crops) cut 160x160 box crops, the teacher's own geometry."""
    _photos(tmp_path / "src")
    report = align_folder(tmp_path / "src", tmp_path / "dst", AlignOptions(template="facenet160", workers=2))
    assert report.workers == 2 and report.images == 17 and not report.unreadable
    crop = np.asarray(Image.open(tmp_path / "dst" / "p0" / "0.jpg"))
    assert crop.shape == (160, 160, 3)
    state = (tmp_path / "dst" / ".align_state.jsonl").read_text().splitlines()[0]
    assert get_template("facenet160").key in state  # not mixed with similarity-warp crops


def test_facenet160_alignment_is_the_teachers_own_box_crop():
    """What facekd align / eval cut for facenet160 is FaceNet's box crop, the same pixels
    the teacher-crop cutter (facekd.teachers.crops) makes from the same detection, with
    or without a face found."""
    from facekd.align.aligner import align_detected
    from facekd.align.detector import Detection
    from facekd.teachers.crops import Cutter

    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (250, 250, 3), dtype=np.uint8)
    lm = np.array([[100.0, 110], [150, 110], [125, 140], [105, 165], [145, 165]])
    face = Detection(box=np.array([80.0, 70, 170, 190]), score=0.99, landmarks=lm)
    template = get_template("facenet160")
    cut = Cutter("facenet160")
    assert np.array_equal(align_detected(img, [face], template).crop, cut(img, face))
    assert np.array_equal(align_detected(img, [], template).crop, cut(img, None))  # the central fallback
