"""Where facekd finds data and keeps its cache."""

from __future__ import annotations

import os
from pathlib import Path


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
