"""Public pretrained weights: the manifest in ``weights/``, local copies and verified downloads."""

from __future__ import annotations

import json
import os
import sys
from functools import lru_cache
from pathlib import Path

from facekd.download import RemoteFile, download, sha256_of
from facekd.errors import FacekdError
from facekd.paths import cache_dir


def _manifest_path() -> Path:
    candidates = [
        Path(__file__).resolve().parent.parent / "weights" / "manifest.json",  # a checkout
        Path(sys.prefix) / "share" / "facekd" / "weights" / "manifest.json",  # an installed wheel
    ]
    for p in candidates:
        if p.is_file():
            return p
    raise FacekdError(f"weights manifest not found (looked in {', '.join(map(str, candidates))})")


@lru_cache(maxsize=1)
def manifest() -> dict[str, dict]:
    """Name -> entry (architecture, url, sha256, filename, preprocessing)."""
    return json.loads(_manifest_path().read_text())


def default_weights_for(architecture: str) -> str | None:
    """The first manifest entry for ``architecture``, if any."""
    for name, entry in manifest().items():
        if entry["architecture"] == architecture:
            return name
    return None


def resolve_weights(name: str, allow_download: bool = True) -> Path:
    """A verified local file for manifest entry ``name``.

    Looks in ``$FACEKD_WEIGHTS`` (a folder of local copies), then the cache, then
    downloads into the cache. A local copy whose SHA-256 does not match is an error.
    """
    entries = manifest()
    if name not in entries:
        raise FacekdError(f"unknown weights {name!r}; known: {', '.join(sorted(entries))}")
    entry = entries[name]
    remote = RemoteFile(url=entry["url"], sha256=entry["sha256"], filename=entry["filename"])
    if env := os.environ.get("FACEKD_WEIGHTS"):
        local = Path(env).expanduser() / remote.filename
        if local.is_file():
            if sha256_of(local) != remote.sha256:
                raise FacekdError(f"{local}: checksum does not match the manifest's for {name!r}")
            return local
    cached = cache_dir() / "weights" / remote.filename
    if cached.is_file() and sha256_of(cached) == remote.sha256:
        return cached
    if not allow_download:
        raise FacekdError(f"weights {name!r} not found locally; pass --weights FILE or set FACEKD_WEIGHTS")
    return download(remote, cached.parent)
