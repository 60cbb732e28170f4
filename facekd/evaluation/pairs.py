"""LFW-style verification of an embedder: from a folder or an insightface .bin to scores."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from facekd.align.detector import detector_key
from facekd.align.folder import REPORT_NAME, AlignOptions, align_folder, recorded_fallbacks
from facekd.align.template import get_template, template_for_size
from facekd.data.insightface_bin import read_bin
from facekd.data.lfw import check_images, parse_pairs, parse_pairs_text
from facekd.data.pack import SUFFIX, Pack
from facekd.image_io import UnreadableImage, decode_rgb, read_rgb
from facekd.evaluation.embed import Embedder, crop_loader, embed_images, fuse_flip
from facekd.errors import FacekdError
from facekd.evaluation.metrics import VerificationResult, verify
from facekd.paths import cache_dir

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PairsEvaluation:
    """A verification result and how it was obtained.

    Attributes:
        result: The scores.
        model: The embedder's name.
        data: The folder, pack or ``.bin`` evaluated on.
        protocol: The pairs and folds, in words.
        template: The alignment template of the crops embedded.
        flip: Whether the mirror image's embedding was added.
        flip_fusion: The embedder's fusion rule when ``flip``, else None.
        subtract_fold_mean: Whether the training folds' mean embedding was subtracted.
        images: Images embedded.
        embedding_dim: Length of a (fused) embedding.
        embed_seconds: Time spent embedding.
        seconds: Time for the whole evaluation.
        fallback_images: Pair images that were central-box alignment fallbacks (None: unknown).
        aligned_copy: Where an unaligned folder was aligned to first (None: used as it is).
    """

    result: VerificationResult
    model: str
    data: str
    protocol: str
    template: str
    flip: bool
    flip_fusion: str | None
    subtract_fold_mean: bool
    images: int
    embedding_dim: int
    embed_seconds: float
    seconds: float
    fallback_images: int | None = None
    aligned_copy: str | None = None

    def summary(self, label: str) -> str:
        """One line a person reads: accuracy ± std over folds and the threshold-free metrics."""
        r = self.result
        tar = "  ".join(f"TAR@FAR={far:g} {100 * v:.2f}%" for far, v in r.tar_at_far.items())
        return f"{label:<26} {100 * r.accuracy:6.2f} ± {100 * r.std:.2f} %   AUC {r.auc:.4f}   EER {100 * r.eer:.2f}%   {tar}"

    def to_dict(self) -> dict:
        """JSON-ready: how the result was obtained, then :meth:`VerificationResult.to_dict`."""
        how = {"model": self.model, "data": self.data}
        if self.aligned_copy is not None:
            how["aligned_copy"] = self.aligned_copy
        how |= {
            "fallback_images": self.fallback_images,
            "protocol": self.protocol,
            "template": self.template,
            "flip": self.flip,
            "flip_fusion": self.flip_fusion,
            "subtract_fold_mean": self.subtract_fold_mean,
            "images": self.images,
            "pairs": self.result.pairs,
            "embedding_dim": self.embedding_dim,
            "embed_seconds": self.embed_seconds,
            "seconds": self.seconds,
        }
        return {**how, **self.result.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "PairsEvaluation":
        """The inverse of :meth:`to_dict` (without the per-pair scores)."""
        return cls(
            result=VerificationResult.from_dict(d), model=d["model"], data=d["data"], protocol=d["protocol"],
            template=d["template"], flip=d["flip"], flip_fusion=d["flip_fusion"],
            subtract_fold_mean=d["subtract_fold_mean"], images=d["images"], embedding_dim=d["embedding_dim"],
            embed_seconds=d["embed_seconds"], seconds=d["seconds"], fallback_images=d.get("fallback_images"),
            aligned_copy=d.get("aligned_copy"),
        )


def _first_image_size(paths: list[Path]) -> tuple[int, int]:
    try:
        return read_rgb(paths[0]).shape[:2]
    except UnreadableImage as exc:
        raise FacekdError(f"{paths[0]}: {exc}") from None


def aligned_folder_for(root: Path, template: str, detector: str = "mtcnn") -> Path:
    """Where ``facekd eval`` keeps its own alignment of an unaligned folder; the template
    and the detector are part of the name, so crops of different detectors never mix."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "aligned" / f"{root.name}-{key}-{get_template(template).key}-{detector_key(detector)}"


@dataclass
class _Pairs:
    """Images to embed, read one at a time, and the pairs over them."""

    count: int
    read: Callable[[int], np.ndarray]
    describe: Callable[[int], str]
    idx1: np.ndarray
    idx2: np.ndarray
    issame: np.ndarray
    fold_ids: np.ndarray | None
    folds: int
    protocol: str
    fallback_images: int | None = None  # see PairsEvaluation
    aligned_copy: str | None = None


def _pairs_from_bin(path: Path, template: str, aligned: bool | None, align_progress: Progress | None, per_fold) -> _Pairs:
    if per_fold:
        raise FacekdError(f"{path}: a pairs subset needs LFW's pairs.txt folds; an insightface .bin has none")
    vb = read_bin(path)
    n = len(vb.images)
    return _Pairs(
        count=n,
        read=lambda i: decode_rgb(vb.images[i]),
        describe=lambda i: f"{path} image {i}",
        idx1=np.arange(0, n, 2),
        idx2=np.arange(1, n, 2),
        issame=np.array(vb.issame),
        fold_ids=None,
        folds=10,
        protocol=f"insightface .bin ({len(vb)} pairs, 10 consecutive folds)",
    )


def _fallbacks_among(fallback_files: list[str] | None, names: list[str]) -> int | None:
    """How many of the images the pairs use were central-box fallbacks (None: unknown)."""
    if fallback_files is None:
        return None
    fb = set(fallback_files)
    return sum(n in fb for n in names)


def _lfw_pairs(pairs, names: list[str], read, describe, fallback_images: int | None,
               aligned_copy: str | None = None) -> _Pairs:
    index = {n: i for i, n in enumerate(names)}
    return _Pairs(
        count=len(names),
        read=read,
        describe=describe,
        idx1=np.array([index[n] for n in pairs.left]),
        idx2=np.array([index[n] for n in pairs.right]),
        issame=np.array(pairs.issame),
        fold_ids=np.array(pairs.fold),
        folds=pairs.folds,
        protocol=f"LFW View 2 ({pairs.folds} folds, {len(pairs)} pairs)",
        fallback_images=fallback_images,
        aligned_copy=aligned_copy,
    )


def _pairs_from_pack(path: Path, template: str, aligned: bool | None, align_progress: Progress | None, per_fold) -> _Pairs:
    pack = Pack(path)
    if "pairs_txt" not in pack.meta:
        raise FacekdError(f"{path}: this pack holds no pairs.txt (pack an LFW folder to evaluate on it)")
    pairs = parse_pairs_text(pack.meta["pairs_txt"], f"{path} (pairs.txt)")
    if per_fold:
        pairs = pairs.subset(per_fold)
    where = {f: i for i, f in enumerate(pack.files)}
    names = pairs.images()
    missing = [n for n in names if n not in where]
    if missing:
        raise FacekdError(f"{path}: {len(missing)} pair images are not in the pack, e.g. {', '.join(missing[:5])}")
    return _lfw_pairs(
        pairs,
        names,
        read=lambda i: pack.image(where[names[i]]),
        describe=lambda i: f"{path}:{names[i]}",
        fallback_images=_fallbacks_among(pack.meta.get("fallback_files"), names),
    )


def _pairs_from_folder(
    data: Path, template: str, aligned: bool | None, align_progress: Progress | None, per_fold, detector: str = "mtcnn"
) -> _Pairs:
    pairs = parse_pairs(data / "pairs.txt")
    if per_fold:
        pairs = pairs.subset(per_fold)
    check_images(pairs, data)
    names = pairs.images()
    root = data
    fallback_images = aligned_copy = None
    if aligned is None:
        aligned = template_for_size(*_first_image_size([data / names[0]])) is not None
    if not aligned:
        root = aligned_folder_for(data, template, detector)
        opts = AlignOptions(template=template, detector=detector)
        report = align_folder(data, root, opts, progress=align_progress, files=names)
        wanted = set(names)
        bad = [u.file for u in report.unreadable if u.file in wanted]
        if bad:
            raise FacekdError(f"{data}: {len(bad)} pair images are unreadable: {', '.join(bad[:10])}")
        aligned_copy = str(root)
        fallback_images = _fallbacks_among(report.fallback_files, names)
    elif (data / REPORT_NAME).is_file():
        fallback_images = _fallbacks_among(recorded_fallbacks(data), names)

    def read(i: int) -> np.ndarray:
        try:
            return read_rgb(root / names[i])
        except UnreadableImage as exc:
            raise FacekdError(f"{root / names[i]}: {exc}") from None

    return _lfw_pairs(pairs, names, read, lambda i: str(root / names[i]), fallback_images, aligned_copy)


def _load_pairs(
    data: Path, template: str, aligned: bool | None, align_progress: Progress | None, per_fold: int | None,
    detector: str = "mtcnn",
) -> _Pairs:
    if data.is_dir():
        return _pairs_from_folder(data, template, aligned, align_progress, per_fold, detector)
    if data.is_file():
        loader = _pairs_from_pack if data.suffix == SUFFIX else _pairs_from_bin
        return loader(data, template, aligned, align_progress, per_fold)
    raise FacekdError(f"{data}: no such file or folder (expected an LFW folder with pairs.txt, a .bin or a {SUFFIX})")


def evaluate_pairs(
    embedder: Embedder,
    data: Path | str,
    *,
    flip: bool = False,
    aligned: bool | None = None,
    batch_size: int | None = None,
    align_progress: Progress | None = None,
    embed_progress: Progress | None = None,
    pairs_per_fold: int | None = None,
    detector: str = "mtcnn",
) -> PairsEvaluation:
    """Verifies LFW View 2 (a folder with pairs.txt, or an LFW pack) or an insightface ``.bin``.

    An LFW folder of aligned crops is used as it is (detected from the image size, or
    forced with ``aligned=True``); otherwise it is first aligned into the cache with
    the embedder's template and ``detector`` (``facekd align``; only the images the
    pairs use), which resumes if interrupted. ``pairs_per_fold`` evaluates a quick subset (N same and N
    different pairs per fold), e.g. during training.
    """
    return _evaluate(embedder, data, ("flip",) if flip else ("plain",), aligned=aligned, batch_size=batch_size,
                     align_progress=align_progress, embed_progress=embed_progress, pairs_per_fold=pairs_per_fold,
                     detector=detector)["flip" if flip else "plain"]


def evaluate_pairs_plain_and_flip(embedder: Embedder, data: Path | str, **kwargs) -> dict[str, PairsEvaluation]:
    """"plain" and "flip" evaluations (as :func:`evaluate_pairs`) from one pass over the
    images and their mirrors: two thirds of the embedding work of two calls."""
    return _evaluate(embedder, data, ("plain", "flip"), **kwargs)


def _evaluate(
    embedder: Embedder,
    data: Path | str,
    modes: tuple[str, ...],
    *,
    aligned: bool | None = None,
    batch_size: int | None = None,
    align_progress: Progress | None = None,
    embed_progress: Progress | None = None,
    pairs_per_fold: int | None = None,
    detector: str = "mtcnn",
) -> dict[str, PairsEvaluation]:
    data = Path(data)
    want = get_template(embedder.pre.template)
    started = time.perf_counter()
    p = _load_pairs(data, want.name, aligned, align_progress, pairs_per_fold, detector)
    protocol = p.protocol
    if pairs_per_fold:
        protocol += f"; quick subset, the first {pairs_per_fold} same and different pairs per fold"
    load = crop_loader(want, p.read, p.describe)
    t0 = time.perf_counter()
    flip = "flip" in modes
    raw = embed_images(embedder, load, p.count, flip=flip, batch_size=batch_size, progress=embed_progress, fuse=False)
    embed_seconds = time.perf_counter() - t0
    fusion = embedder.pre.flip_fusion
    embeddings = {"plain": raw[:, : raw.shape[1] // 2] if flip else raw, "flip": fuse_flip(raw, fusion) if flip else None}
    out = {}
    for mode in modes:
        emb = embeddings[mode]
        result = verify(
            emb[p.idx1], emb[p.idx2], p.issame, folds=p.folds, fold_ids=p.fold_ids,
            subtract_mean=embedder.pre.subtract_fold_mean,
        )
        out[mode] = PairsEvaluation(
            result=result, model=embedder.name, data=str(data), protocol=protocol, template=want.name,
            flip=mode == "flip", flip_fusion=fusion if mode == "flip" else None,
            subtract_fold_mean=embedder.pre.subtract_fold_mean, images=p.count, embedding_dim=int(emb.shape[1]),
            embed_seconds=round(embed_seconds, 2), seconds=round(time.perf_counter() - started, 2),
            fallback_images=p.fallback_images, aligned_copy=p.aligned_copy,
        )
    return out
