"""What the HTTP tests of ``facekd serve`` share: the YuNet weights they need and a server
process started for a module and always stopped."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import pytest

from facekd.serve.process import ServerProcess

REPO = Path(__file__).resolve().parent.parent


def weights_dir() -> Path:
    """The weights folder holding YuNet (``$FACEKD_WEIGHTS`` or ../shared/weights); skips without it."""
    d = Path(os.environ.get("FACEKD_WEIGHTS") or REPO.parent / "shared" / "weights")
    if not (d / "face_detection_yunet_2023mar.onnx").is_file():
        pytest.skip(f"YuNet model not found in {d} (set FACEKD_WEIGHTS)")
    return d


@contextlib.contextmanager
def running_server(tmp: Path, args: list[str]) -> Iterator[ServerProcess]:
    """``facekd serve ARGS`` with its log and cache in ``tmp``, ready, stopped on exit."""
    proc = ServerProcess(args, log=tmp / "server.log",
                         env={"FACEKD_WEIGHTS": str(weights_dir()), "FACEKD_CACHE": str(tmp / "cache")})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
