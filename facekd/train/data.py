"""Training data: encoded crops from packs or folders (:class:`TrainSet`) and the sharded
batches of an epoch. The loaders that turn batches into tensors are in
:mod:`facekd.train.loaders`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from facekd.align.folder import AlignOptions, align_folder, output_relpath, recorded_fallbacks
from facekd.align.template import template_for_size
from facekd.data.identity import scan_identities
from facekd.data.pack import SUFFIX, Pack
from facekd.errors import FacekdError
from facekd.image_io import UnreadableImage, decode_rgb, read_rgb
from facekd.paths import data_root

Progress = Callable[[int, int], None]


# --- sources of encoded crops --------------------------------------------------------


class _PackSource:
    def __init__(self, pack) -> None:
        self.pack = pack

    def raw(self, key: int) -> bytes:
        return self.pack.raw(int(key))

    def name(self, key: int) -> str:
        return self.pack.files[int(key)]

    def describe(self, key: int) -> str:
        return f"{self.pack.path}:{self.name(key)}"


class _FolderSource:
    def __init__(self, root: Path, files: list[str]) -> None:
        self.root, self.files = root, files

    def raw(self, key: int) -> bytes:
        return (self.root / self.files[int(key)]).read_bytes()

    def name(self, key: int) -> str:
        return self.files[int(key)]

    def describe(self, key: int) -> str:
        return str(self.root / self.name(key))


@dataclass(slots=True)
class _Candidate:
    source: int
    key: int
    identity: str
    rel: str


@dataclass(frozen=True)
class TrainSetId:
    """What a training set's images are: the record that logs and the teacher-output
    cache key read (:meth:`cache_parts`).

    Attributes:
        sources: The ``data.train`` entries, resolved to paths.
        template: The crop geometry of the images (a facekd template name).
        detector: The detector that aligned unaligned folders.
        teacher_crops: When a teacher reads its own crops of the same photos instead
            (:class:`facekd.distill.teacher_crops.TeacherCrops`), their fingerprint.
    """

    sources: tuple[str, ...]
    template: str
    detector: str = "mtcnn"
    teacher_crops: str = ""

    def cache_parts(self) -> list[str]:
        """One string per source (path and size) and per teacher crop set, as the
        teacher-output cache hashes them; the bytes are those of earlier facekd
        versions, so caches written by them stay valid."""
        parts = []
        for src in self.sources:
            p = Path(src)
            parts.append(f"{p}:{p.stat().st_size if p.is_file() else 'dir'}")
        if self.teacher_crops:
            parts.append(f"teacher crops {self.teacher_crops}:dir")
        return parts


class TrainSet:
    """Encoded aligned crops with labels, gathered from packs and folders.

    Attributes:
        identities: Identity names; label ``i`` is ``identities[i]``.
        labels: (N,) int64 label per crop.
        template: The crops' alignment template.
        identity: What the crops are (sources, template, detector).
        fallbacks_dropped: Central-box fallback crops left out.
    """

    def __init__(self, sources: list, src: np.ndarray, keys: np.ndarray, labels: np.ndarray,
                 identities: list[str], identity: TrainSetId, fallbacks_dropped: int = 0) -> None:
        self._sources, self._src, self._keys = sources, src, keys
        self.labels, self.identities = labels, identities
        self.identity, self.fallbacks_dropped = identity, fallbacks_dropped
        self.template = identity.template

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> bytes:
        """The encoded bytes of crop ``i``."""
        return self._sources[self._src[i]].raw(self._keys[i])

    def describe(self, i: int) -> str:
        """Where crop ``i`` is read from (``PACK:rel`` or a file path), for messages."""
        return self._sources[self._src[i]].describe(self._keys[i])

    def name(self, i: int) -> str:
        """The relative name (``identity/file``) of crop ``i`` in its pack or folder."""
        return self._sources[self._src[i]].name(self._keys[i])

    def image(self, i: int) -> np.ndarray:
        """Crop ``i`` decoded to HxWx3 uint8 RGB."""
        try:
            return decode_rgb(self.raw(i))
        except UnreadableImage as exc:
            raise FacekdError(f"{self.describe(i)}: {exc}") from None


def resolve_path(entry: str, root: str | Path | None) -> Path:
    """A config path: absolute or ``~`` as written; a relative one from the working
    directory when it exists there (``.carry/dev.fkpack``), otherwise under the data root
    (``celeba-10k`` -> ``$FACEKD_DATA/celeba-10k``)."""
    p = Path(entry).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return data_root(Path(root) if root else None) / p


def _first_crop_template(path: Path) -> str | None:
    try:
        t = template_for_size(*read_rgb(path).shape[:2])
    except UnreadableImage as exc:
        raise FacekdError(f"{path}: {exc}") from None
    return t.name if t else None


@dataclass
class _Gathered:
    """The crops that the ``data.train`` entries hold, before the identity selection."""

    sources: list = field(default_factory=list)
    cands: list[_Candidate] = field(default_factory=list)
    fallback: set[tuple[int, str]] = field(default_factory=set)  # (source index, rel) of central-box crops
    to_align: list[tuple[int, Path]] = field(default_factory=list)  # (source index, raw folder)

    def add_pack(self, path: Path, template: str) -> None:
        s = len(self.sources)
        pack = Pack(path)
        if pack.template != template:
            raise FacekdError(f"{path}: crops are aligned to {pack.template}, the backbone wants {template}")
        self.sources.append(_PackSource(pack))
        names = pack.identities
        self.cands += [_Candidate(s, i, names[int(lab)], rel) for i, (rel, lab) in enumerate(zip(pack.files, pack.labels))]
        self.fallback |= {(s, f) for f in pack.meta.get("fallback_files", [])}

    def add_folder(self, path: Path, template: str) -> None:
        """An aligned folder, or an unaligned one to align once the identities are chosen."""
        s = len(self.sources)
        samples, names = scan_identities([path])
        crop_t = _first_crop_template(samples[0].path)
        if crop_t is not None and crop_t != template:
            raise FacekdError(f"{path}: crops are aligned to {crop_t}, the backbone wants {template}")
        if crop_t is None:
            self.to_align.append((s, path))
        else:
            self.fallback |= {(s, f) for f in recorded_fallbacks(path) or []}
        files = [smp.rel for smp in samples]
        self.sources.append(_FolderSource(path, files))
        self.cands += [_Candidate(s, i, names[smp.label], smp.rel) for i, smp in enumerate(samples)]

    def align(self, s: int, raw_root: Path, template: str, by_id: dict[str, list[_Candidate]],
              progress: Progress | None, detector: str = "mtcnn") -> None:
        """Aligns the chosen photos of unaligned folder ``s`` into the cache with
        ``detector``, drops those that cannot be read and reads the crops from there on."""
        wanted = sorted(c.rel for v in by_id.values() for c in v if c.source == s)
        # On use: evaluation.pairs brings ONNX Runtime and scikit-learn, and every module
        # that builds a training set (loaders, distill, prune) imports this one.
        from facekd.evaluation.pairs import aligned_folder_for

        dst = aligned_folder_for(raw_root, template, detector)
        opts = AlignOptions(template=template, detector=detector)
        report = align_folder(raw_root, dst, opts, progress=progress, files=wanted)
        bad = {u.file for u in report.unreadable}
        self.fallback |= {(s, f) for f in report.fallback_files}
        for v in by_id.values():
            v[:] = [c for c in v if not (c.source == s and c.rel in bad)]
        src = self.sources[s]
        self.sources[s] = _FolderSource(dst, [output_relpath(f) for f in src.files])


def _select_identities(cands: list[_Candidate], cfg) -> dict[str, list[_Candidate]]:
    """Candidates by identity, cut to ``max_per_identity`` each and the ``max_identities``
    identities with the most."""
    by_id: dict[str, list[_Candidate]] = {}
    for c in cands:
        by_id.setdefault(c.identity, []).append(c)
    if cfg.max_per_identity:
        by_id = {k: v[: cfg.max_per_identity] for k, v in by_id.items()}
    if cfg.max_identities:
        chosen = sorted(by_id, key=lambda k: (-len(by_id[k]), k))[: cfg.max_identities]
        by_id = {k: by_id[k] for k in chosen}
    return by_id


def _drop_fallbacks(by_id: dict[str, list[_Candidate]], fallback: set[tuple[int, str]]) -> int:
    """Removes central-box fallback crops from ``by_id``; returns how many."""
    dropped = 0
    for k, v in by_id.items():
        keep = [c for c in v if (c.source, c.rel) not in fallback]
        dropped += len(v) - len(keep)
        by_id[k] = keep
    return dropped


def build_train_set(cfg, template: str, align_progress: Progress | None = None) -> TrainSet:
    """Gathers the crops ``cfg`` (a :class:`~facekd.train.config.DataCfg`) names.

    Unaligned photo folders are aligned into the cache first (only the photos that the
    identity selection keeps), with ``template`` and ``cfg.detector``; packs and aligned folders must already
    use ``template``.
    """
    if not cfg.train:
        raise FacekdError("data.train is empty: name at least one pack or folder of face crops")
    found = _Gathered()
    for entry in cfg.train:
        path = resolve_path(entry, cfg.root)
        if path.is_file() and path.suffix == SUFFIX:
            found.add_pack(path, template)
        elif path.is_dir():
            found.add_folder(path, template)
        else:
            raise FacekdError(f"{path}: no such pack or folder (data.train entry {entry!r})")
    by_id = _select_identities(found.cands, cfg)
    for s, raw_root in found.to_align:
        found.align(s, raw_root, template, by_id, align_progress, cfg.detector)
    dropped = _drop_fallbacks(by_id, found.fallback) if cfg.drop_fallbacks else 0

    identities = sorted(k for k, v in by_id.items() if len(v) >= max(1, cfg.min_images))
    if not identities:
        raise FacekdError(f"no identity keeps {cfg.min_images}+ crops in {', '.join(cfg.train)}")
    chosen = [(label, c) for label, k in enumerate(identities) for c in by_id[k]]
    identity = TrainSetId(sources=tuple(str(resolve_path(e, cfg.root)) for e in cfg.train), template=template,
                          detector=cfg.detector)
    return TrainSet(
        found.sources,
        src=np.array([c.source for _, c in chosen], dtype=np.int32),
        keys=np.array([c.key for _, c in chosen], dtype=np.int64),
        labels=np.array([label for label, _ in chosen], dtype=np.int64),
        identities=identities,
        identity=identity,
        fallbacks_dropped=dropped,
    )


# --- batches --------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """This process's place in a (possibly distributed) run."""

    rank: int = 0
    world_size: int = 1


def epoch_batches(n: int, global_batch: int, seed: int, epoch: int, shard: Shard = Shard()) -> list[np.ndarray]:
    """This process's batches of one epoch: a permutation fixed by (seed, epoch), cut
    into global batches (the last, partial one dropped), each split evenly by rank.

    Any number of processes sees the same global batches, so a 2-process run takes the
    same steps as a 1-process run with the same global batch.
    """
    steps = steps_per_epoch(n, global_batch, shard)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=gen).numpy()
    local = global_batch // shard.world_size
    lo = shard.rank * local
    return [perm[b * global_batch + lo : b * global_batch + lo + local] for b in range(steps)]


def steps_per_epoch(n: int, global_batch: int, shard: Shard = Shard()) -> int:
    """Steps in an epoch of :func:`epoch_batches`; errors when the batch cannot be split
    evenly over the processes or is larger than the set."""
    if global_batch % shard.world_size:
        raise FacekdError(
            f"train.batch_size {global_batch} does not split evenly over {shard.world_size} processes"
        )
    if n < global_batch:
        raise FacekdError(f"{n} training crops are fewer than one batch of {global_batch}; lower train.batch_size")
    return n // global_batch
