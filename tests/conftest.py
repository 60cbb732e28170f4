"""Shared fixtures: the real face data beside the checkout (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _shared(env: str, sub: str) -> Path:
    return Path(os.environ.get(env) or REPO.parent / "shared" / sub)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _shared("FACEKD_DATA", "data")
    if not (d / "lfw" / "pairs.txt").is_file():
        pytest.skip(f"shared face data not found at {d} (set FACEKD_DATA)")
    return d


@pytest.fixture(scope="session")
def lfw_dir(data_dir: Path) -> Path:
    return data_dir / "lfw"


@pytest.fixture(scope="session")
def mobilefacenet_weights() -> Path:
    p = _shared("FACEKD_WEIGHTS", "weights") / "mobilefacenet_casia.ckpt"
    if not p.is_file():
        pytest.skip(f"reference weights not found at {p} (set FACEKD_WEIGHTS)")
    return p


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache, so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("FACEKD_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def yunet_weights(monkeypatch) -> Path:
    """$FACEKD_WEIGHTS pointing at a folder with the YuNet model (skipped when it has none),
    so that nothing tries to download it."""
    d = _shared("FACEKD_WEIGHTS", "weights")
    if not (d / "face_detection_yunet_2023mar.onnx").is_file():
        pytest.skip(f"YuNet model not found in {d} (set FACEKD_WEIGHTS)")
    monkeypatch.setenv("FACEKD_WEIGHTS", str(d))
    return d
