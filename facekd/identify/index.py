"""Search indexes over L2-normalised embeddings: cosine = inner product.

Registered in ``INDEXES``; every index answers the same :class:`SearchIndex` calls and
keys vectors by the store's face ids, so enrolment and removal update it in place:

- ``exact``: brute-force inner product, FAISS ``IndexIDMap(IndexFlatIP)`` when
  ``faiss`` (the ``faiss-cpu`` package) imports, else the ``numpy`` index below. Exact.
- ``numpy``: the same in plain numpy (one matrix product per search).
- ``hnsw``: FAISS ``IndexHNSWFlat`` (inner product, M=32, efSearch 128 by default),
  approximate. HNSW graphs cannot delete, so removal is by **tombstone**: a removed id
  is masked out of results (each search asks for ``k`` plus the tombstones so that
  ``k`` live ones remain), and the graph is rebuilt from the live vectors once
  tombstones pass a quarter of it.

A gallery builds its index from the store at open (:func:`build_index`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from facekd.errors import FacekdError
from facekd.registry import Registry

try:  # optional: the numpy index serves where faiss-cpu is not installed
    import faiss
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None


class SearchIndex(Protocol):
    """A mutable nearest-neighbour index by inner product, keyed by int64 ids."""

    name: str
    dim: int

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Adds (N, D) float32 vectors under the int64 ``ids`` (new ids only)."""

    def remove(self, ids: np.ndarray) -> None:
        """Removes the given ids (unknown ids are ignored)."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (Q, k) float32, ids (Q, k) int64)``, best first; where fewer than
        ``k`` vectors are stored, the rest is padded with score -inf and id -1."""

    def __len__(self) -> int:
        """Vectors stored (and not removed)."""


INDEXES: Registry[SearchIndex] = Registry("search index")


def _f32(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise FacekdError(f"vectors of shape {x.shape} for a {dim}-d index")
    return x


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    q, have = ids.shape
    if have >= k:
        return scores[:, :k].astype(np.float32), ids[:, :k].astype(np.int64)
    s = np.full((q, k), -np.inf, dtype=np.float32)
    i = np.full((q, k), -1, dtype=np.int64)
    s[:, :have], i[:, :have] = scores, ids
    return s, i


class NumpyIndex:
    """Exact inner-product search in numpy; ids kept in a parallel array."""

    name = "numpy"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._ids = np.zeros(0, dtype=np.int64)
        self._x = np.zeros((0, dim), dtype=np.float32)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        v = _f32(vectors, self.dim)
        self._ids = np.concatenate([self._ids, np.asarray(ids, dtype=np.int64)])
        self._x = np.concatenate([self._x, v]) if len(self._x) else v.copy()

    def remove(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self._ids, np.asarray(ids, dtype=np.int64))
        self._ids, self._x = self._ids[keep], self._x[keep]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _f32(queries, self.dim)
        n = len(self._ids)
        if n == 0:
            return _pad(np.zeros((len(q), 0)), np.zeros((len(q), 0), dtype=np.int64), k)
        scores = q @ self._x.T
        kk = min(k, n)
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (len(q), 1))
        top = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
        return _pad(np.take_along_axis(scores, idx, axis=1), self._ids[idx], k)

    def __len__(self) -> int:
        return len(self._ids)


class FaissFlatIndex:
    """Exact inner-product search: FAISS ``IndexIDMap(IndexFlatIP)``."""

    name = "faiss-flat"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(_f32(vectors, self.dim), np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _f32(queries, self.dim)
        if self._index.ntotal == 0:
            return _pad(np.zeros((len(q), 0)), np.zeros((len(q), 0), dtype=np.int64), k)
        s, i = self._index.search(q, min(k, self._index.ntotal))
        s = np.where(i < 0, -np.inf, s)
        return _pad(s, i, k)

    def __len__(self) -> int:
        return int(self._index.ntotal)


class HnswIndex:
    """Approximate search: FAISS ``IndexHNSWFlat`` (inner product) with tombstones.

    Args:
        dim: Embedding size.
        m: HNSW graph degree.
        ef_construction: Candidate list size while building.
        ef_search: Candidate list size while searching (recall against speed).
        rebuild_fraction: Rebuild the graph from live vectors when removed ones exceed
            this fraction of it.
    """

    name = "hnsw"

    def __init__(self, dim: int, m: int = 32, ef_construction: int = 80, ef_search: int = 128,
                 rebuild_fraction: float = 0.25) -> None:
        if faiss is None:
            raise FacekdError("the hnsw index needs FAISS: pip install faiss-cpu")
        self.dim, self.m, self.ef_construction, self._ef_search = dim, m, ef_construction, ef_search
        self.rebuild_fraction = rebuild_fraction
        self._new()
        self._x = np.zeros((0, dim), dtype=np.float32)  # kept for rebuilds
        self._ids = np.zeros(0, dtype=np.int64)  # row -> id
        self._dead = np.zeros(0, dtype=bool)  # row -> removed
        self._row: dict[int, int] = {}

    def _new(self) -> None:
        self._index = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = self.ef_construction
        self._index.hnsw.efSearch = self._ef_search

    @property
    def ef_search(self) -> int:
        """Candidate list size while searching; settable (recall against speed)."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = int(value)
        self._index.hnsw.efSearch = self._ef_search

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        v = _f32(vectors, self.dim)
        ids = np.asarray(ids, dtype=np.int64)
        start = len(self._ids)
        self._index.add(v)
        self._x = np.concatenate([self._x, v]) if len(self._x) else v.copy()
        self._ids = np.concatenate([self._ids, ids])
        self._dead = np.concatenate([self._dead, np.zeros(len(ids), dtype=bool)])
        self._row.update((int(i), start + r) for r, i in enumerate(ids))

    def remove(self, ids: np.ndarray) -> None:
        for i in np.asarray(ids, dtype=np.int64).ravel():
            r = self._row.pop(int(i), None)
            if r is not None:
                self._dead[r] = True
        if self._dead.sum() > self.rebuild_fraction * max(len(self._dead), 1):
            self.rebuild()

    def rebuild(self) -> None:
        """Builds the graph again from the live vectors only (drops the tombstones)."""
        live = ~self._dead
        x, ids = self._x[live], self._ids[live]
        self._new()
        self._x = np.zeros((0, self.dim), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._dead = np.zeros(0, dtype=bool)
        self._row = {}
        if len(ids):
            self.add(ids, x)

    @property
    def tombstones(self) -> int:
        return int(self._dead.sum())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _f32(queries, self.dim)
        total = self._index.ntotal
        if len(self) == 0:
            return _pad(np.zeros((len(q), 0)), np.zeros((len(q), 0), dtype=np.int64), k)
        kk = min(k + self.tombstones, total)
        if kk > self._index.hnsw.efSearch:
            params = faiss.SearchParametersHNSW(efSearch=kk)
            s, rows = self._index.search(q, kk, params=params)
        else:
            s, rows = self._index.search(q, kk)
        ok = rows >= 0
        ok[ok] &= ~self._dead[rows[ok]]
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(q), k), -1, dtype=np.int64)
        for j in range(len(q)):
            keep = ok[j]
            ss, rr = s[j][keep][:k], rows[j][keep][:k]
            out_s[j, : len(ss)] = ss
            out_i[j, : len(rr)] = self._ids[rr]
        return out_s, out_i

    def __len__(self) -> int:
        return len(self._row)


@INDEXES.register("exact")
def exact_index(dim: int) -> SearchIndex:
    """Exact search: FAISS flat inner product when faiss-cpu is installed, else numpy."""
    return FaissFlatIndex(dim) if faiss is not None else NumpyIndex(dim)


@INDEXES.register("numpy")
def numpy_index(dim: int) -> SearchIndex:
    """Exact search in plain numpy."""
    return NumpyIndex(dim)


@INDEXES.register("hnsw")
def hnsw_index(dim: int, m: int = 32, ef_construction: int = 80, ef_search: int = 128) -> SearchIndex:
    """Approximate search: FAISS HNSW (default M=32, efConstruction 80, efSearch 128),
    removal by tombstone."""
    return HnswIndex(dim, m=m, ef_construction=ef_construction, ef_search=ef_search)


def build_index(kind: str, dim: int, ids: np.ndarray | None = None, vectors: np.ndarray | None = None,
                **options) -> SearchIndex:
    """A registered index of ``kind`` holding ``vectors`` under ``ids`` (may be empty)."""
    index = INDEXES.build(kind, dim=dim, **options)
    if ids is not None and len(ids):
        index.add(ids, vectors)
    return index
