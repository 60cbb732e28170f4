"""Getting LFW onto a fresh machine: the official archive, checksum-verified."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from facekd.download import DownloadFailed, RemoteFile, download, move_tree, safe_extract
from facekd.errors import FacekdError


@dataclass(frozen=True)
class LfwSource:
    """An LFW image archive (with its top folder) and the View-2 pairs file."""

    archive: RemoteFile
    top_folder: str
    pairs: RemoteFile


# The funneled LFW archive and pairs.txt at the mirrors scikit-learn uses, with its
# checksums. (The shared development data is the deep-funneled variant; both are
# re-aligned by MTCNN before evaluation.)
LFW_FUNNELED = LfwSource(
    archive=RemoteFile(
        url="https://ndownloader.figshare.com/files/5976015",
        sha256="b47c8422c8cded889dc5a13418c4bc2abbda121092b3533a83306f90d900100a",
        filename="lfw-funneled.tgz",
    ),
    top_folder="lfw_funneled",
    pairs=RemoteFile(
        url="https://ndownloader.figshare.com/files/5976006",
        sha256="ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592",
        filename="pairs.txt",
    ),
)


def ensure_lfw(
    root: Path | str,
    source: LfwSource = LFW_FUNNELED,
    allow_download: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """``root/lfw`` with its pairs.txt, downloading and extracting it if it is missing.

    Raises:
        FacekdError: when LFW is missing and may not (or cannot) be downloaded.
    """
    lfw = Path(root) / "lfw"
    if (lfw / "pairs.txt").is_file():
        return lfw
    if not allow_download:
        raise FacekdError(f"{lfw}: LFW not found (no pairs.txt); pass --data or set FACEKD_DATA")
    downloads = Path(root) / "downloads"
    try:
        archive = download(source.archive, downloads, progress)
        pairs = download(source.pairs, downloads)
    except DownloadFailed as exc:
        raise FacekdError(f"{lfw}: LFW not found and not downloaded ({exc}); set FACEKD_DATA (or pass --data) "
                          "to a folder holding lfw/ with its pairs.txt") from None
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        safe_extract(archive, tmp)
        top = Path(tmp) / source.top_folder
        if not top.is_dir():
            raise FacekdError(f"{archive}: expected a top folder {source.top_folder!r} in the archive")
        (top / "pairs.txt").write_bytes(pairs.read_bytes())
        move_tree(top, lfw)
    return lfw
