"""Where facekd finds data and keeps its cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from facekd.errors import FacekdError


def cache_dir() -> Path:
    """``$FACEKD_CACHE``, else ``$XDG_CACHE_HOME/facekd``, else ``~/.cache/facekd``."""
    if env := os.environ.get("FACEKD_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "facekd"


def data_root(arg: Path | str | None = None) -> Path:
    """The data root: ``--data``, else ``$FACEKD_DATA``, else ``<cache>/data``."""
    if arg:
        return Path(arg).expanduser()
    if env := os.environ.get("FACEKD_DATA"):
        return Path(env).expanduser()
    return cache_dir() / "data"


def bundled_config(rel: str) -> Path:
    """A config that comes with facekd, e.g. ``distill/demo_cpu.yaml``: from the checkout's
    ``configs/``, else from an installed wheel's ``share/facekd/configs/``."""
    candidates = [Path(__file__).resolve().parent.parent / "configs" / rel, Path(sys.prefix) / "share" / "facekd" / "configs" / rel]
    for p in candidates:
        if p.is_file():
            return p
    raise FacekdError(f"config {rel} not found (looked in {', '.join(map(str, candidates))})")
