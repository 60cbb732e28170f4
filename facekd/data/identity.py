"""Identity-folder datasets (CASIA-WebFace layout: ROOT/<identity>/<image>)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from facekd.image_io import UnreadableImage, is_image_path, read_rgb
from facekd.errors import FacekdError


@dataclass(frozen=True)
class Sample:
    path: Path
    rel: str  # "<identity>/<file>", unique across merged roots
    label: int


def scan_identities(roots: list[Path | str], min_images: int = 1) -> tuple[list[Sample], list[str]]:
    """Samples and the label map of one or more identity-folder roots.

    Identities are merged by folder name across roots (CelebA's numbers are global, so
    ``celeba-10k/123`` and ``celeba-wild/123`` are one person); labels follow the sorted
    names. Identities with fewer than ``min_images`` images are left out.

    Returns:
        (samples sorted by label then path, identity names indexed by label)
    """
    by_id: dict[str, list[tuple[Path, str]]] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise FacekdError(f"{root}: dataset folder does not exist")
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(d.iterdir()):
                if f.is_file() and is_image_path(f):
                    rel = f"{d.name}/{f.name}"
                    by_id.setdefault(d.name, []).append((f, rel))
    names = sorted(n for n, files in by_id.items() if len(files) >= min_images)
    if not names:
        raise FacekdError(f"no identity folders with images under {', '.join(map(str, roots))}")
    samples = []
    for label, name in enumerate(names):
        seen: set[str] = set()
        for path, rel in by_id[name]:
            if rel in seen:  # the same file name in two roots: keep both, tell them apart
                rel = f"{name}/{path.parent.parent.name}__{path.name}"
            seen.add(rel)
            samples.append(Sample(path=path, rel=rel, label=label))
    return samples, names


def photo_key(rel: str) -> str:
    """``identity/file`` of a sample, without the ``<folder>__`` prefix
    :func:`scan_identities` gives the second copy of a file name two folders share: the
    same photo under differently named folders (a student's and a teacher's crops) has
    one key."""
    ident, _, name = rel.rpartition("/")
    return f"{ident}/{name.split('__', 1)[1]}" if "__" in name else rel


class IdentityFolderDataset:
    """A torch-style dataset over identity folders; items are (transformed image, label).

    Args:
        roots: One or more identity-folder roots, merged by identity name.
        transform: Called on the HxWx3 uint8 RGB image (e.g. an albumentations pipeline
            from :mod:`facekd.data.transforms`); default returns the array.
        min_images: Leave out identities with fewer images.
    """

    def __init__(self, roots: list[Path | str], transform: Callable | None = None, min_images: int = 1) -> None:
        self.samples, self.identities = scan_identities(roots, min_images)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples])

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            img = read_rgb(s.path)
        except UnreadableImage as exc:
            raise FacekdError(f"{s.path}: {exc}") from None
        return (self.transform(img) if self.transform else img), s.label


class PackDataset:
    """A torch-style dataset over a :class:`~facekd.data.pack.Pack`; decodes on access."""

    def __init__(self, pack, transform: Callable | None = None) -> None:
        self.pack = pack
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pack)

    def __getitem__(self, i: int):
        img = self.pack.image(i)
        return (self.transform(img) if self.transform else img), int(self.pack.labels[i])
