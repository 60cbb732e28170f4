"""A pack: aligned crops as encoded JPEG bytes, an index and labels, in one file.

Training reads crops straight from a memory map (no per-file opens, no decoded copies
in memory), and a whole protocol travels to an accelerator machine as a few files.

Layout (little-endian)::

    MAGIC | blob (encoded images, back to back) | offsets uint64[n+1] | labels int64[n]
          | header JSON | index_pos uint64 | header_len uint64 | MAGIC

The header holds ``count``, ``template``, ``identities`` (label -> name), ``files``
(relative paths), and free-form ``meta`` (e.g. ``pairs_txt`` for an LFW pack).
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from facekd.align.folder import recorded_fallbacks
from facekd.align.template import template_for_size
from facekd.data.identity import scan_identities
from facekd.image_io import UnreadableImage, decode_rgb, encode_jpeg
from facekd.data.lfw import check_images, parse_pairs
from facekd.errors import FacekdError
from facekd.io_utils import atomic_open

MAGIC = b"FKDPACK1"
_FOOTER = struct.Struct("<QQ8s")
SUFFIX = ".fkpack"


def write_pack(
    path: Path | str,
    items: Iterable[tuple[str, int, bytes]],
    identities: list[str],
    template: str,
    meta: dict | None = None,
) -> dict:
    """Writes (relative path, label, encoded bytes) items to a pack, atomically.

    Returns:
        The header written.
    """
    offsets, labels, files = [0], [], []
    with atomic_open(path) as f:
        f.write(MAGIC)
        for rel, label, data in items:
            if not 0 <= label < len(identities):
                raise FacekdError(f"{rel}: label {label} outside 0..{len(identities) - 1}")
            f.write(data)
            offsets.append(offsets[-1] + len(data))
            labels.append(label)
            files.append(rel)
        index_pos = f.tell()
        f.write(np.asarray(offsets, dtype="<u8").tobytes())
        f.write(np.asarray(labels, dtype="<i8").tobytes())
        header = {
            "version": 1,
            "count": len(files),
            "template": template,
            "identities": identities,
            "files": files,
            "meta": meta or {},
        }
        blob = json.dumps(header).encode()
        f.write(blob)
        f.write(_FOOTER.pack(index_pos, len(blob), MAGIC))
    return header


class Pack:
    """Read access to a pack; cheap to pickle (each process maps the file itself)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with self.path.open("rb") as f:
                head = f.read(len(MAGIC))
                if size < len(MAGIC) + _FOOTER.size or head != MAGIC:
                    raise FacekdError(f"{self.path}: not a facekd pack (bad magic)")
                f.seek(size - _FOOTER.size)
                index_pos, header_len, magic = _FOOTER.unpack(f.read(_FOOTER.size))
                if magic != MAGIC:
                    raise FacekdError(f"{self.path}: truncated facekd pack (no footer)")
                if header_len > size - _FOOTER.size or index_pos > size - _FOOTER.size - header_len:
                    raise FacekdError(f"{self.path}: corrupt facekd pack (index or header outside the file)")
                f.seek(size - _FOOTER.size - header_len)
                self.header = _check_header(json.loads(f.read(header_len)), self.path)
                n = self.header["count"]
                if index_pos + 16 * n + 8 > size - _FOOTER.size - header_len:
                    raise FacekdError(f"{self.path}: corrupt facekd pack (index of {n} items does not fit the file)")
                f.seek(index_pos)
                self.offsets = np.frombuffer(f.read(8 * (n + 1)), dtype="<u8").astype(np.int64) + len(MAGIC)
                self.labels = np.frombuffer(f.read(8 * n), dtype="<i8").astype(np.int64)
        except FileNotFoundError:
            raise FacekdError(f"{self.path}: pack not found") from None
        except (json.JSONDecodeError, KeyError, struct.error, ValueError) as exc:  # ValueError: also not UTF-8
            raise FacekdError(f"{self.path}: corrupt facekd pack ({exc})") from None
        if len(self.labels) != n or np.any(np.diff(self.offsets) < 0) or self.offsets[0] != len(MAGIC) \
                or self.offsets[-1] > index_pos:
            raise FacekdError(f"{self.path}: corrupt facekd pack (index does not fit the file)")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.header["identities"])):
            raise FacekdError(f"{self.path}: corrupt facekd pack (a label outside its {len(self.identities)} identities)")
        self._mm: mmap.mmap | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mm"] = None
        return state

    def __len__(self) -> int:
        return int(self.header["count"])

    @property
    def identities(self) -> list[str]:
        return self.header["identities"]

    @property
    def files(self) -> list[str]:
        return self.header["files"]

    @property
    def template(self) -> str:
        return self.header["template"]

    @property
    def meta(self) -> dict:
        return self.header.get("meta", {})

    def raw(self, i: int) -> bytes:
        """The encoded bytes of item ``i``."""
        if self._mm is None:
            with self.path.open("rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm[self.offsets[i] : self.offsets[i + 1]]

    def image(self, i: int) -> np.ndarray:
        """Item ``i`` decoded to HxWx3 uint8 RGB."""
        try:
            return decode_rgb(self.raw(i))
        except UnreadableImage as exc:
            raise FacekdError(f"{self.path}: item {i} ({self.files[i]}): {exc}") from None


def _check_header(header: object, path: Path) -> dict:
    """``header`` if it has the fields a pack needs, with the right types."""
    if not isinstance(header, dict):
        raise FacekdError(f"{path}: corrupt facekd pack (header is not a JSON object)")
    count, files = header.get("count"), header.get("files")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise FacekdError(f"{path}: corrupt facekd pack (count {count!r})")
    if not isinstance(files, list) or len(files) != count or not all(isinstance(f, str) for f in files):
        raise FacekdError(f"{path}: corrupt facekd pack (files must be {count} paths)")
    identities = header.get("identities")
    if not isinstance(identities, list) or not all(isinstance(i, str) for i in identities):
        raise FacekdError(f"{path}: corrupt facekd pack (identities must be a list of names)")
    if not isinstance(header.get("template"), str) or not isinstance(header.get("meta", {}), dict):
        raise FacekdError(f"{path}: corrupt facekd pack (template must be a name, meta a mapping)")
    return header


def _read_crop(path: Path) -> tuple[bytes, np.ndarray]:
    """A crop file's bytes and its decoded RGB pixels."""
    data = path.read_bytes()
    try:
        return data, decode_rgb(data)
    except UnreadableImage as exc:
        raise FacekdError(f"{path}: {exc}") from None


def build_pack(
    roots: list[Path | str],
    out: Path | str,
    quality: int | None = 85,
    pairs_only: bool = False,
    progress=None,
) -> dict:
    """Packs aligned crops from identity folders (merged by name), or one LFW folder.

    A single root holding ``pairs.txt`` is packed as LFW: its pairs file goes into the
    pack's meta, and with ``pairs_only`` only the images the pairs use are kept.

    Args:
        roots: Folders of aligned crops (``facekd align`` output).
        out: Pack file to write.
        quality: JPEG quality to re-encode at (smaller packs); None keeps the bytes.
        pairs_only: For LFW, keep only the images named in pairs.txt.
    """
    roots = [Path(r) for r in roots]
    meta: dict = {"sources": [str(r) for r in roots]}
    samples, identities = scan_identities(roots)
    if len(roots) == 1 and (roots[0] / "pairs.txt").is_file():
        pairs = parse_pairs(roots[0] / "pairs.txt")
        check_images(pairs, roots[0])
        meta["pairs_txt"] = (roots[0] / "pairs.txt").read_text()
        if pairs_only:
            keep = set(pairs.images())
            samples = [s for s in samples if s.rel in keep]
    if not samples:
        raise FacekdError(f"no images to pack under {', '.join(map(str, roots))}")
    # Keep alignment fallbacks visible: an evaluation from the pack reports them too.
    fallback: list[str] = []
    packed = {s.rel for s in samples}
    for r in roots:
        fallback += [f for f in recorded_fallbacks(r) or [] if f in packed]
    meta["fallback_files"] = fallback

    first = template_for_size(*_read_crop(samples[0].path)[1].shape[:2])
    if first is None:
        raise FacekdError(f"{samples[0].path}: not an aligned crop size (112x96, 112x112, or a teacher's "
                          "160x160 / 150x150); run `facekd align` (or eval/teacher_crops.py) first")

    def items():
        for k, s in enumerate(samples):
            data, img = _read_crop(s.path)
            if img.shape[:2] != first.size:
                raise FacekdError(
                    f"{s.path}: {img.shape[1]}x{img.shape[0]} differs from the pack's {first.width}x{first.height} crops"
                )
            if progress:
                progress(k + 1, len(samples))
            yield s.rel, s.label, (encode_jpeg(img, quality) if quality is not None else data)

    return write_pack(out, items(), identities, first.name, meta)
