"""From face scores to ranked people: a person's best face, or their mean template."""

from __future__ import annotations

import numpy as np

from facekd.identify.index import SearchIndex

Ranked = list[list[tuple[int, float, int | None]]]  # per probe: (person id, score, face id or None), best first


def person_of(face_ids: np.ndarray, face_person: np.ndarray, found: np.ndarray) -> np.ndarray:
    """The person of each face id in ``found`` (``face_ids`` sorted, ``face_person`` parallel)."""
    pos = np.clip(np.searchsorted(face_ids, found), 0, max(len(face_ids) - 1, 0))
    return face_person[pos]


def rank_best(index: SearchIndex, face_ids: np.ndarray, face_person: np.ndarray, q: np.ndarray, top_k: int) -> Ranked:
    """The top-k people per probe, each scored by their best face.

    Searches the faces' index for a few times ``top_k`` faces and keeps each person's
    first (best) face; where that gives fewer than ``top_k`` people, searches again
    for four times as many faces, up to all of them, so the answer equals a full scan's.
    """
    n = len(face_ids)
    if n == 0:
        return [[] for _ in q]
    k = min(n, max(4 * top_k, 16))
    while True:
        scores, ids = index.search(q, k)
        results, short = [], False
        for s_row, i_row in zip(scores, ids):
            ok = i_row >= 0
            people = person_of(face_ids, face_person, i_row[ok])
            seen: dict[int, tuple[int, float, int]] = {}
            for p, s, f in zip(people.tolist(), s_row[ok].tolist(), i_row[ok].tolist()):
                if p not in seen:
                    seen[p] = (p, float(s), int(f))
                    if len(seen) == top_k:
                        break
            results.append(list(seen.values()))
            short |= len(seen) < top_k
        if not short or k >= n:
            return results
        k = min(n, 4 * k)


def mean_templates(face_ids: np.ndarray, face_person: np.ndarray, vectors: dict[int, np.ndarray],
                   dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(person ids, their L2-normalised mean embeddings) from each face's vector."""
    people = np.unique(face_person)
    sums = np.zeros((len(people), dim), dtype=np.float64)
    if len(face_ids):
        np.add.at(sums, np.searchsorted(people, face_person), np.stack([vectors[i] for i in face_ids.tolist()]))
    t = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return people, t.astype(np.float32)


def rank_mean(people: np.ndarray, templates: np.ndarray, q: np.ndarray, top_k: int) -> Ranked:
    """The top-k people per probe by cosine to their mean template (an exact scan)."""
    if len(people) == 0:
        return [[] for _ in q]
    scores = q @ templates.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(top_k, len(people))]
    return [[(int(people[j]), float(scores[r, j]), None) for j in row] for r, row in enumerate(order)]
