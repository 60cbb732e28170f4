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
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from facekd.data.identity import photo_key
from facekd.image_io import read_rgb
from facekd.data.pack import SUFFIX, Pack
from facekd.errors import FacekdError
from facekd.train.data import resolve_path


class TeacherCrops:
    """Crops of one geometry, looked up by relative name.

    Args:
        path: A pack (``.fkpack``) or an aligned folder of the teacher's crops.
        template: The teacher's template; the crops must be of that size.
    """

    def __init__(self, path: Path | str, template: str) -> None:
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
        self._files = files
        self._where: dict[str, list[int]] = {}
        for k, rel in enumerate(files):
            self._where.setdefault(photo_key(rel), []).append(k)

    def fingerprint(self) -> str:
        """Identifies these crops (path, size, names) for the teacher-output cache."""
        h = hashlib.sha256(f"{self.path.resolve()}:{self.path.stat().st_size if self.path.is_file() else 'dir'}".encode())
        h.update("\n".join(self._files).encode())
        return h.hexdigest()[:16]

    def image(self, k: int) -> np.ndarray:
        """Crop ``k`` (in the pack's or folder's order)."""
        return self._pack.image(k) if self._pack is not None else read_rgb(self.path / self._files[k])

    def loader(self, data) -> Callable[[int], np.ndarray]:
        """``load(i)``: the teacher's crop of training crop ``i`` of ``data``.

        A name can occur more than once when packs merge folders (the same CelebA photo
        aligned and in the wild): the n-th training crop of that name gets the n-th
        teacher crop of it, which is the same photo when the teacher pack was packed from
        the same folders in the same order as the student's.
        """
        names = [photo_key(data.name(i)) for i in range(len(data))]
        seen: dict[str, int] = {}
        keys, missing = [], []
        for n in names:
            j = seen.get(n, 0)
            seen[n] = j + 1
            where = self._where.get(n, [])
            if j < len(where):
                keys.append(where[j])
            else:
                missing.append(n)
        if missing:
            raise FacekdError(
                f"{self.path}: {len(missing)} of the {len(names)} training photos have no teacher crop, "
                f"e.g. {', '.join(missing[:3])} (cut the same photos the student trains on)"
            )
        return lambda i: self.image(keys[i])


class TeacherView:
    """The training set as a teacher with its own crops sees it: the same samples,
    labels and order, each image read from the teacher's crops of the same photo."""

    def __init__(self, data, crops: TeacherCrops) -> None:
        self._data = data
        self._load = crops.loader(data)
        self.labels, self.identities, self.template = data.labels, data.identities, crops.template
        self.identity = replace(data.identity, template=crops.template, teacher_crops=crops.fingerprint())

    def __len__(self) -> int:
        return len(self._data)

    def describe(self, i: int) -> str:
        return self._data.describe(i)

    def name(self, i: int) -> str:
        return self._data.name(i)

    def image(self, i: int) -> np.ndarray:
        return self._load(i)


def teacher_inputs(crops: str | None, template: str, data):
    """What a teacher embeds: the student's crops, or its own (``teacher.crops``, a pack
    or folder of crops aligned to ``template``)."""
    if not crops:
        return data
    return TeacherView(data, TeacherCrops(resolve_path(crops, None), template))
