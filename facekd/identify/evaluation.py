"""1:N open-set identification on LFW: the protocol as pure functions over embeddings.

One trial (seeded): the gallery is a random half of the identities with at least two
photos; each gallery person enrols ``enrolled`` random photos (at most all but one, so
every gallery person keeps a mated probe); their other photos are the **mated probes**;
every photo of every other identity (the other half, and all single-photo people) is a
**non-mated probe**. Each probe is scored against every gallery person by their best
face ("best") or their L2-normalised mean template ("mean").

Reported per trial (ISO/IEC 19795-1 / NIST FRVT 1:N terms):

- rank-1 and the CMC: the fraction of mated probes whose person is among the top r;
- FPIR(t): the fraction of non-mated probes whose top score is >= t; the threshold for
  a target FPIR is the matching quantile of the non-mated top scores;
- DIR (= TPIR) at that FPIR: the fraction of mated probes ranked first *and* scoring
  >= t;
- search time: an exact index (:mod:`facekd.identify.index`) over the trial's gallery
  faces, all probes searched top-10 in one batch, milliseconds per probe.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import facekd.teachers.crops  # noqa: F401  registers the teachers' crop sizes (facenet160, dlib150) as templates
from facekd.align.folder import AlignOptions, align_folder
from facekd.align.template import get_template, template_for_size
from facekd.errors import FacekdError
from facekd.evaluation.embed import crop_loader, embed_images
from facekd.evaluation.pairs import aligned_folder_for
from facekd.identify.index import build_index
from facekd.image_io import UnreadableImage, read_rgb
from facekd.io_utils import atomic_open

FPIRS = (0.01, 0.1)
CMC_RANKS = 20


@dataclass(frozen=True)
class IdentSplit:
    """Which photos are enrolled and which are probes in one trial (indices into the set)."""

    gallery: np.ndarray  # photo indices enrolled
    gallery_person: np.ndarray  # their person (identity label)
    mated: np.ndarray  # photo indices of mated probes
    mated_person: np.ndarray
    non_mated: np.ndarray  # photo indices of non-mated probes
    people: np.ndarray  # the gallery's identity labels, sorted
    short: int  # gallery people who enrolled fewer photos than asked (too few photos)


def split_trial(labels: np.ndarray, seed: int, enrolled: int = 1) -> IdentSplit:
    """The gallery/probe split of one seeded trial (see the module docstring).

    Args:
        labels: (N,) integer identity of each photo.
        seed: The trial's seed.
        enrolled: Photos enrolled per gallery person (fewer when they have fewer than
            ``enrolled + 1``: one photo always stays a mated probe).
    """
    if enrolled < 1:
        raise FacekdError(f"enrolled must be at least 1, not {enrolled}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    ids, counts = np.unique(labels, return_counts=True)
    multi = ids[counts >= 2]
    if len(multi) < 2:
        raise FacekdError("the 1:N protocol needs at least two identities with two or more photos")
    people = np.sort(rng.choice(multi, size=len(multi) // 2, replace=False))
    in_gallery = np.isin(labels, people)
    gallery, gallery_person, mated, mated_person, short = [], [], [], [], 0
    for p in people:
        photos = rng.permutation(np.flatnonzero(labels == p))
        k = min(enrolled, len(photos) - 1)
        short += k < enrolled
        gallery += photos[:k].tolist()
        gallery_person += [p] * k
        mated += photos[k:].tolist()
        mated_person += [p] * (len(photos) - k)
    return IdentSplit(
        gallery=np.array(gallery), gallery_person=np.array(gallery_person), mated=np.array(mated),
        mated_person=np.array(mated_person), non_mated=np.flatnonzero(~in_gallery), people=people, short=short,
    )


def person_scores(probes: np.ndarray, gallery: np.ndarray, gallery_person: np.ndarray, people: np.ndarray,
                  scoring: str = "best") -> np.ndarray:
    """(P, len(people)) cosine of each probe to each person: their best face or their
    mean template. Embeddings must be L2-normalised."""
    col = np.searchsorted(people, gallery_person)
    if scoring == "best":
        order = np.argsort(col, kind="stable")
        s = probes @ gallery[order].T
        present, starts = np.unique(col[order], return_index=True)
        out = np.full((len(probes), len(people)), -np.inf, dtype=np.float32)
        out[:, present] = np.maximum.reduceat(s, starts, axis=1)  # a person's best face
        return out
    if scoring == "mean":
        t = np.zeros((len(people), gallery.shape[1]), dtype=np.float64)
        np.add.at(t, col, gallery)
        t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        return (probes @ t.T.astype(np.float32)).astype(np.float32)
    raise FacekdError(f"unknown scoring {scoring!r}; known: best, mean")


@dataclass(frozen=True)
class IdentTrial:
    """One trial's figures (rates are fractions in 0..1)."""

    seed: int
    gallery_people: int
    gallery_faces: int
    mated: int
    non_mated: int
    rank1: float
    cmc: list[float]  # cmc[r-1]: fraction of mated probes with their person in the top r
    dir_at_fpir: dict[str, float]  # "0.01" -> DIR (TPIR) at that FPIR
    threshold_at_fpir: dict[str, float]
    search_ms_per_probe: float
    short: int


def open_set_rates(mated_scores: np.ndarray, mated_col: np.ndarray, non_mated_top: np.ndarray,
                   fpirs=FPIRS, ranks: int = CMC_RANKS):
    """Rank-1, CMC, and (threshold, DIR) at each FPIR from person scores.

    Args:
        mated_scores: (M, G) scores of the mated probes against the gallery people.
        mated_col: (M,) column of each mated probe's own person.
        non_mated_top: (U,) each non-mated probe's highest score.

    Returns:
        ``(rank1, cmc, {fpir: threshold}, {fpir: dir})``. A mated probe's rank counts
        the people scoring strictly higher than its own person, plus one.
    """
    own = mated_scores[np.arange(len(mated_col)), mated_col]
    rank = (mated_scores > own[:, None]).sum(axis=1) + 1
    cmc = [float(np.mean(rank <= r)) for r in range(1, ranks + 1)]
    thresholds, dirs = {}, {}
    for f in fpirs:
        # The smallest t with FPIR(t) = mean(non_mated_top >= t) <= f: just above the
        # (1 - f) quantile of the non-mated top scores.
        srt = np.sort(non_mated_top)[::-1]
        allowed = int(np.floor(f * len(srt)))  # non-mated probes allowed through
        t = float(np.nextafter(srt[allowed], np.float32(np.inf))) if allowed < len(srt) else float(srt[-1])
        thresholds[f] = t
        dirs[f] = float(np.mean((rank == 1) & (own >= t)))
    return cmc[0], cmc, thresholds, dirs


def run_trial(emb: np.ndarray, labels: np.ndarray, seed: int, enrolled: int = 1, scoring: str = "best",
              fpirs=FPIRS, ranks: int = CMC_RANKS, time_search: bool = True) -> IdentTrial:
    """One seeded trial on L2-normalised embeddings ``emb`` (N, D) with identities ``labels``."""
    sp = split_trial(labels, seed, enrolled)
    g = emb[sp.gallery]
    mated = person_scores(emb[sp.mated], g, sp.gallery_person, sp.people, scoring)
    non_mated = person_scores(emb[sp.non_mated], g, sp.gallery_person, sp.people, scoring).max(axis=1)
    rank1, cmc, thr, dirs = open_set_rates(mated, np.searchsorted(sp.people, sp.mated_person), non_mated, fpirs, ranks)
    ms = float("nan")
    if time_search:
        index = build_index("exact", emb.shape[1], np.arange(len(g)), g)
        probes = np.ascontiguousarray(emb[np.concatenate([sp.mated, sp.non_mated])])
        t0 = time.perf_counter()
        index.search(probes, 10)
        ms = 1000 * (time.perf_counter() - t0) / len(probes)
    return IdentTrial(
        seed=seed, gallery_people=len(sp.people), gallery_faces=len(sp.gallery), mated=len(sp.mated),
        non_mated=len(sp.non_mated), rank1=rank1, cmc=cmc,
        dir_at_fpir={f"{f:g}": d for f, d in dirs.items()}, threshold_at_fpir={f"{f:g}": t for f, t in thr.items()},
        search_ms_per_probe=ms, short=sp.short,
    )


@dataclass(frozen=True)
class IdentResult:
    """All trials of one setting (model, enrolled photos, scoring) and their summary.

    ``*_mean`` / ``*_std`` are in percent over trials (std with ddof=0).
    """

    model: str
    enrolled: int
    scoring: str
    trials: list[IdentTrial]
    rank1_mean: float = 0.0
    rank1_std: float = 0.0
    dir_mean: dict[str, float] = field(default_factory=dict)
    dir_std: dict[str, float] = field(default_factory=dict)
    threshold_median: dict[str, float] = field(default_factory=dict)
    cmc_mean: list[float] = field(default_factory=list)
    search_ms_per_probe: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_identification(emb: np.ndarray, labels: np.ndarray, model: str = "", trials: int = 10,
                            enrolled: int = 1, scoring: str = "best", first_seed: int = 0,
                            fpirs=FPIRS) -> IdentResult:
    """``trials`` seeded trials (seeds ``first_seed``, ``first_seed + 1``, ...) and their summary.

    Args:
        emb: (N, D) embeddings, normalised here.
        labels: (N,) identity of each photo (any sortable labels).
    """
    emb = np.asarray(emb, dtype=np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    _, labels = np.unique(np.asarray(labels), return_inverse=True)
    ts = [run_trial(emb, labels, first_seed + i, enrolled, scoring, fpirs) for i in range(trials)]
    pct = lambda xs: (round(100 * float(np.mean(xs)), 3), round(100 * float(np.std(xs)), 3))  # noqa: E731
    r1 = pct([t.rank1 for t in ts])
    keys = [f"{f:g}" for f in fpirs]
    dirs = {k: pct([t.dir_at_fpir[k] for t in ts]) for k in keys}
    return IdentResult(
        model=model, enrolled=enrolled, scoring=scoring, trials=ts, rank1_mean=r1[0], rank1_std=r1[1],
        dir_mean={k: v[0] for k, v in dirs.items()}, dir_std={k: v[1] for k, v in dirs.items()},
        threshold_median={k: round(float(np.median([t.threshold_at_fpir[k] for t in ts])), 6) for k in keys},
        cmc_mean=[round(100 * float(np.mean([t.cmc[r] for t in ts])), 3) for r in range(len(ts[0].cmc))],
        search_ms_per_probe=round(float(np.median([t.search_ms_per_probe for t in ts])), 5),
    )


def lfw_images(root: Path | str) -> tuple[list[Path], np.ndarray]:
    """Every image of an LFW-layout folder ``root/<identity>/<image>``, sorted, and the
    identity name of each."""
    root = Path(root)
    exts = {".jpg", ".jpeg", ".png"}
    paths = sorted(p for p in root.glob("*/*") if p.suffix.lower() in exts and p.is_file())
    if not paths:
        raise FacekdError(f"{root}: no images in <identity>/<image> folders")
    return paths, np.array([p.parent.name for p in paths])


@dataclass(frozen=True)
class LfwEmbeddings:
    """Plain (no mirror, no mean subtracted) L2-normalised embeddings of every LFW photo."""

    embeddings: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) identity names
    files: list[str]  # paths relative to the aligned folder
    aligned: str  # the aligned folder embedded
    embed_seconds: float
    cached: bool  # read from the cache file instead of computed


def embed_lfw(embedder, data: Path | str, detector: str = "yunet", cache: Path | str | None = None,
              align_progress=None, embed_progress=None) -> LfwEmbeddings:
    """Embeds all LFW photos under ``data`` (aligned crops, or raw photos aligned first
    into facekd's cache with ``detector``, as ``facekd eval lfw`` does).

    Args:
        cache: A ``.npy`` file: read when present (its row count must match), else
            written after embedding.
    """
    data = Path(data)
    paths, labels = lfw_images(data)
    want = get_template(embedder.pre.template)
    root = data
    if template_for_size(*read_rgb(paths[0]).shape[:2]) is None:
        root = aligned_folder_for(data, want.name, detector)
        align_folder(data, root, AlignOptions(template=want.name, detector=detector), progress=align_progress)
        paths, labels = lfw_images(root)
    files = [str(p.relative_to(root)) for p in paths]
    if cache is not None and Path(cache).is_file():
        emb = np.load(cache)
        if emb.shape[0] != len(files):
            raise FacekdError(f"{cache}: {emb.shape[0]} embeddings for {len(files)} photos in {root}; delete it")
        return LfwEmbeddings(emb.astype(np.float32), labels, files, str(root), 0.0, True)

    def read(i: int) -> np.ndarray:
        try:
            return read_rgb(paths[i])
        except UnreadableImage as exc:
            raise FacekdError(f"{paths[i]}: {exc}") from None

    t0 = time.perf_counter()
    raw = embed_images(embedder, crop_loader(want, read, lambda i: str(paths[i])), len(paths), progress=embed_progress)
    seconds = time.perf_counter() - t0
    emb = (raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    if cache is not None:
        with atomic_open(cache) as fh:
            np.save(fh, emb)
    return LfwEmbeddings(emb, labels, files, str(root), seconds, False)
