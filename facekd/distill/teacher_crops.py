"""A teacher's own crops of the student's training photos: a *teacher pack beside the
student pack* (or an aligned folder), holding the same photos under the same relative
names, cut with the teacher's geometry from the same detections
(``eval/teacher_crops.py``, then ``facekd pack``).

The student's crops are never resized or padded into the teacher's geometry: a teacher
whose template differs from the student's (FaceNet's 160x160 box, dlib's chip) reads
its input from here, by the relative name of each training crop, and teaches through
cached outputs (its crops cannot follow the student's augmentation).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from facekd.errors import FacekdError


def _relative_name(data, i: int) -> str:
    """The relative name (``identity/file``) of training crop ``i``, from its description
    (``PACK:rel`` for a pack, ``ROOT/rel`` for a folder)."""
    desc = data.describe(i)
    for src in data.info.get("sources", []):
        for prefix in (f"{src}:", f"{src}/"):
            if desc.startswith(prefix):
                return desc[len(prefix):]
    # a folder aligned into the cache: describe() names the aligned copy; keep identity/file
    parts = Path(desc).parts
    return "/".join(parts[-2:])


class TeacherCrops:
    """Crops of one geometry, looked up by relative name.

    Args:
        path: A pack (``.fkpack``) or an aligned folder of the teacher's crops.
        template: The teacher's template; the crops must be of that size.
    """

    def __init__(self, path: Path | str, template: str) -> None:
        from facekd.data.pack import SUFFIX, Pack

        self.path = Path(path).expanduser()
        self.template = template
        if self.path.is_file() and self.path.suffix == SUFFIX:
            self._pack = Pack(self.path)
            if self._pack.template != template:
                raise FacekdError(f"{self.path}: crops are {self._pack.template}, the teacher wants {template}")
            files = self._pack.files
        elif self.path.is_dir():
            self._pack = None
            files = sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*")
                           if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        else:
            raise FacekdError(f"{self.path}: teacher crops not found (a pack or a folder of the teacher's crops)")
        self._index: dict[str, int] = {}
        self._files = files
        dup = set()
        for k, rel in enumerate(files):
            if rel in self._index:
                dup.add(rel)
            self._index[rel] = k
        self._ambiguous = dup

    def fingerprint(self) -> str:
        """Identifies these crops (path, size, names) for the teacher-output cache."""
        h = hashlib.sha256(f"{self.path.resolve()}:{self.path.stat().st_size if self.path.is_file() else 'dir'}".encode())
        h.update("\n".join(self._files).encode())
        return h.hexdigest()[:16]

    def image(self, rel: str) -> np.ndarray:
        from facekd.data.image_io import read_rgb

        if rel in self._ambiguous:
            raise FacekdError(f"{self.path}: {rel} appears more than once; cannot tell which photo it is")
        k = self._index.get(rel)
        if k is None:
            raise FacekdError(f"{self.path}: no teacher crop of {rel} (cut the same photos the student trains on)")
        return self._pack.image(k) if self._pack is not None else read_rgb(self.path / rel)

    def loader(self, data) -> Callable[[int], np.ndarray]:
        """``load(i)``: the teacher's crop of training crop ``i`` of ``data``."""
        names = [_relative_name(data, i) for i in range(len(data))]
        missing = [n for n in names if n not in self._index]
        if missing:
            raise FacekdError(
                f"{self.path}: {len(missing)} of the {len(names)} training photos have no teacher crop, "
                f"e.g. {', '.join(missing[:3])}"
            )
        return lambda i: self.image(names[i])
