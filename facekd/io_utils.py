"""Atomic file writes: a reader never sees half a file, a crash never leaves one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from facekd.errors import FacekdError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_open(path: Path | str) -> Iterator[BinaryIO]:
    """A binary file to write that appears at ``path`` only if the block completes.

    Writes go to a temporary file beside ``path``, which is synced and renamed into
    place at the end; on any error it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_torn_temps(path: Path | str) -> list[Path]:
    """Removes the temporary files a killed :func:`atomic_open` of ``path`` left beside it
    (``path`` itself is always whole); returns them. Only for a file no other process is
    writing at the moment."""
    path = Path(path)
    torn = sorted(path.parent.glob(f".{path.name}.*{_TEMP_SUFFIX}"))
    for t in torn:
        t.unlink(missing_ok=True)
    return torn


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_text_file(path: Path | str, what: str) -> str:
    """The UTF-8 text of ``path``; a missing or unreadable file is a ``FacekdError``
    naming the file and ``what`` it is ("pairs file": "PATH: pairs file not found")."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FacekdError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FacekdError(f"{path}: cannot read {what} ({exc})") from None
