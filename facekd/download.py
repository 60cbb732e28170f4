"""Verified downloads and safe archive extraction."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from facekd.errors import FacekdError


class DownloadFailed(FacekdError):
    """The address could not be reached or read (no internet, a dead link), as opposed
    to a file that arrived with the wrong checksum."""


@dataclass(frozen=True)
class RemoteFile:
    """A public file: where it is and what its bytes hash to."""

    url: str
    sha256: str
    filename: str


def sha256_of(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(remote: RemoteFile, dest_dir: Path | str, progress: Callable[[int, int], None] | None = None) -> Path:
    """Downloads ``remote`` into ``dest_dir`` unless a verified copy is already there.

    The file is streamed to a temporary name, hashed on the way, and renamed into place
    only when its SHA-256 matches; a mismatch deletes it and raises.
    """
    dest_dir = Path(dest_dir)
    dest = dest_dir / remote.filename
    if dest.is_file() and sha256_of(dest) == remote.sha256:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=dest_dir)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(remote.url, timeout=60) as resp:
                    total = int(resp.headers.get("Content-Length") or 0)
                    done = 0
                    while block := resp.read(1 << 20):
                        out.write(block)
                        h.update(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
            except OSError as exc:  # URLError, timeouts, refused connections
                raise DownloadFailed(f"{remote.url}: download failed ({getattr(exc, 'reason', exc)})") from None
        if h.hexdigest() != remote.sha256:
            raise FacekdError(
                f"{remote.url}: checksum mismatch (expected sha256 {remote.sha256}, got {h.hexdigest()}); "
                "the file was discarded"
            )
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def _check_member(member: tarfile.TarInfo, dest: Path) -> None:
    target = (dest / member.name).resolve()
    if member.name.startswith(("/", "\\")) or not (target == dest or dest in target.parents):
        raise FacekdError(f"refusing archive member {member.name!r}: it points outside the extraction folder")
    if member.issym() or member.islnk():
        raise FacekdError(f"refusing archive member {member.name!r}: links are not allowed")
    if not (member.isfile() or member.isdir()):
        raise FacekdError(f"refusing archive member {member.name!r}: not a regular file or folder")


def safe_extract(archive: Path | str, dest: Path | str) -> None:
    """Extracts a tar archive, refusing members that escape ``dest``, links and devices.

    Every member is checked before anything is written, so a hostile archive leaves
    nothing behind.
    """
    archive, dest = Path(archive), Path(dest).resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, dest)
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python < 3.11.4: the checks above are the filter
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FacekdError(f"{archive}: cannot extract ({exc})") from None


def move_tree(src: Path, dst: Path) -> None:
    """Moves ``src`` to ``dst`` (replacing an empty or partial ``dst``)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.move(str(src), str(dst))
