"""A gallery of known people: a store, a search index built from it, and the model check.

    from facekd.identify.gallery import Gallery

    g = Gallery.create("people.db", "weights/student5_mobilefacenet_casia.onnx")
    g.enroll("Ada", ["ada1.jpg", "ada2.jpg"])          # detect, align, embed, store
    result = g.identify_photo("who.jpg", top_k=5)       # Identification
    print(result.name or "unknown", result.score)

The model is fixed when the gallery is created: its sha256, preprocessing, embedding size
and thresholds are stored in the gallery, every probe and enrolment must come from the
same ONNX file (:class:`~facekd.identify.records.ModelMismatch` otherwise), and
embeddings are L2-normalised before they are stored or searched (cosine = dot product).

The index (``exact`` by default, ``hnsw`` for large galleries; :mod:`facekd.identify.index`)
is built from the store when the gallery opens and updated in place by this object's
enrolments and removals. Changes made by another process reach it through
:meth:`Gallery.refresh` (rebuild) or :meth:`Gallery.apply_added` /
:meth:`Gallery.apply_removed` (incremental, e.g. driven by PostgreSQL NOTIFY).
All public methods are thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from facekd.deploy.photos import DetectorChain, PhotoError, align_photo, embed_faces
from facekd.errors import FacekdError
from facekd.evaluation.embed import OnnxEmbedder
from facekd.identify.index import SearchIndex, build_index
from facekd.identify.model import crop_sha256, file_sha256, l2_normalize, model_from_onnx
from facekd.identify.ranking import mean_templates, rank_best, rank_mean
from facekd.identify.records import (
    SCORINGS,
    VERIFY,
    Enrolment,
    FaceRecord,
    GalleryModel,
    Identification,
    Match,
    ModelMismatch,
    NotInGallery,
    Person,
)
from facekd.identify.store import GalleryStore, SqliteStore

Progress = Callable[[int, int], None]
DEFAULT_DETECTORS = "yunet,mtcnn"


class Gallery:
    """A store plus an in-memory search index plus the model check.

    Args:
        store: Any :class:`~facekd.identify.store.GalleryStore` (SQLite, PostgreSQL).
        index: Registered index kind: ``"exact"`` (default) or ``"hnsw"``.
        model_path: The ONNX model for photo enrolment and photo probes (default: the
            path recorded at creation); its sha256 must match the gallery's.
        index_options: Passed to the index factory (e.g. ``ef_search=`` for hnsw).
    """

    def __init__(self, store: GalleryStore, index: str = "exact", model_path: Path | str | None = None,
                 **index_options) -> None:
        self.store = store
        self.index_kind = index
        self._index_options = index_options
        self._model_path = Path(model_path) if model_path else None
        self._embedder = None
        self._chains: dict = {}
        self._lock = threading.RLock()
        self.refresh()

    # --- opening ---------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path | str, model_path: Path | str, index: str = "exact", **index_options) -> Gallery:
        """A new SQLite gallery at ``path`` for the ONNX model at ``model_path``."""
        store = SqliteStore.create(path, model_from_onnx(model_path))
        return cls(store, index=index, model_path=model_path, **index_options)

    @classmethod
    def open(cls, path: Path | str, index: str = "exact", model_path: Path | str | None = None,
             **index_options) -> Gallery:
        """An existing SQLite gallery."""
        return cls(SqliteStore.open(path), index=index, model_path=model_path, **index_options)

    @property
    def model(self) -> GalleryModel:
        return self.store.model()

    @property
    def location(self) -> str:
        return self.store.location

    def refresh(self) -> None:
        """Rebuilds the index (and the id maps) from the store: picks up changes made by
        other processes. Held under the lock from the read on: an enrolment or removal
        made meanwhile (it holds the lock from its commit to its index update) would be
        lost or undone by swapping in an older snapshot."""
        with self._lock:
            face_ids, person_ids, emb = self.store.all_embeddings()
            names = {p.id: p.name for p in self.store.people()}
            index = build_index(self.index_kind, self.model.embedding_dim, **self._index_options)
            if len(face_ids):
                index.add(face_ids, l2_normalize(emb))
            self._index: SearchIndex = index
            self._face_ids = face_ids.astype(np.int64)  # sorted
            self._face_person = person_ids.astype(np.int64)
            self._vectors: dict[int, np.ndarray] | None = None  # for mean templates, built on demand
            self._names = names
            self._templates = None

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the model check -------------------------------------------------------------

    def check_model(self, model: GalleryModel | str | None) -> None:
        """Refuses an embedding from another model: ``model`` is a GalleryModel or a
        sha256 (hex) of the ONNX file that embedded it; None skips the check.

        Raises:
            ModelMismatch: The model differs from the gallery's.
        """
        if model is None:
            return
        mine = self.model
        sha = model.sha256 if isinstance(model, GalleryModel) else str(model)
        name = model.name if isinstance(model, GalleryModel) else sha[:12]
        if sha != mine.sha256:
            raise ModelMismatch(
                f"{self.location}: embeddings from model {name} (sha256 {sha[:12]}) cannot be searched in a gallery "
                f"built with {mine.name} (sha256 {mine.sha256[:12]})"
            )

    def embedder(self):
        """The gallery's ONNX embedder, loaded once (its file's sha256 checked)."""
        with self._lock:
            if self._embedder is None:
                path = self._model_path or (Path(self.model.path) if self.model.path else None)
                if path is None or not path.is_file():
                    raise FacekdError(
                        f"{self.location}: the gallery's model {self.model.name} is not at {path}; pass its path (--model)"
                    )
                sha = file_sha256(path)
                if sha != self.model.sha256:
                    raise ModelMismatch(
                        f"{path}: sha256 {sha[:12]} is not the model this gallery was built with "
                        f"({self.model.name}, sha256 {self.model.sha256[:12]})"
                    )
                self._embedder = OnnxEmbedder(path)
            return self._embedder

    # --- photos ----------------------------------------------------------------------

    def _chain(self, detectors: str):
        """The detector chain for ``detectors`` ("yunet,mtcnn"), built once per gallery."""
        with self._lock:
            if detectors not in self._chains:
                self._chains[detectors] = DetectorChain.parse(detectors)
            return self._chains[detectors]

    def embed_photos(self, photos: Sequence[Path | str], detectors: str = DEFAULT_DETECTORS,
                     progress: Progress | None = None, batch: int = 16):
        """Detects, aligns and embeds photos with the gallery's model.

        Returns:
            ``(faces, embeddings, errors)``: the usable photos' :class:`FaceRecord`\\ s
            (source, detector, crop hash), their (N, D) L2-normalised embeddings, and
            ``(photo, reason)`` for each photo that could not be used.
        """
        embedder = self.embedder()
        chain = self._chain(detectors)
        records: list[FaceRecord] = []
        chunks: list[np.ndarray] = []
        errors: list[tuple[str, str]] = []
        pending = []
        total = len(photos)
        for done, photo in enumerate(photos, 1):
            try:
                pending.append(align_photo(photo, chain, embedder.pre.template))
            except PhotoError as exc:
                errors.append((exc.photo, exc.reason))
            if len(pending) >= batch or (done == total and pending):
                chunks.append(embed_faces(embedder, pending))
                records += [FaceRecord(source=f.photo, detector=f.detector, crop_sha256=crop_sha256(f.crop)) for f in pending]
                pending = []
            if progress:
                progress(done, total)
        emb = np.concatenate(chunks) if chunks else np.zeros((0, self.model.embedding_dim), dtype=np.float32)
        return records, emb, errors

    def enroll(self, name: str, photos: Sequence[Path | str], detectors: str = DEFAULT_DETECTORS,
               progress: Progress | None = None) -> Enrolment:
        """Enrols the faces in ``photos`` as ``name`` (created if new) in one transaction.

        Unusable photos (unreadable, no face) are reported in ``Enrolment.errors`` and
        skipped; when none is usable, nothing is stored and a FacekdError names them.
        """
        records, emb, errors = self.embed_photos(photos, detectors, progress)
        if not records:
            why = "; ".join(f"{p}: {r}" for p, r in errors) or "no photos given"
            raise FacekdError(f"{name}: no usable face to enrol ({why})")
        result = self.enroll_embeddings(name, emb, records)
        return Enrolment(person=result.person, face_ids=result.face_ids, faces=result.faces, errors=errors)

    def enroll_embeddings(self, name: str, embeddings: np.ndarray, faces: Sequence[FaceRecord] | None = None,
                          model: GalleryModel | str | None = None) -> Enrolment:
        """Enrols precomputed (N, D) embeddings as ``name`` (created if new), in one
        transaction, and adds them to the index.

        Args:
            name: The person's name.
            embeddings: From the gallery's model; L2-normalised here.
            faces: One record per embedding (default: sources ``"embedding:<i>"``).
            model: The model that embedded them (GalleryModel or sha256), checked when given.
        """
        self.check_model(model)
        emb = np.asarray(embeddings, dtype=np.float32)
        emb = emb[None, :] if emb.ndim == 1 else emb
        if emb.ndim != 2 or emb.shape[1] != self.model.embedding_dim:
            raise ModelMismatch(f"{self.location}: embeddings of shape {emb.shape}; the gallery's model gives "
                                f"{self.model.embedding_dim}-d")
        emb = l2_normalize(emb)
        faces = list(faces) if faces is not None else [FaceRecord(source=f"embedding:{i}") for i in range(len(emb))]
        with self._lock:
            person, ids = self.store.enroll(name, faces, emb)
            self.apply_added(ids, [person.id] * len(ids), emb, {person.id: person.name})
        stored = [FaceRecord(source=f.source, detector=f.detector, crop_sha256=f.crop_sha256, id=i, person_id=person.id)
                  for f, i in zip(faces, ids)]
        return Enrolment(person=person, face_ids=ids, faces=stored)

    # --- removal and listing ---------------------------------------------------------

    def remove_person(self, person_id: int) -> list[int]:
        """Deletes a person and their faces; the face ids removed. NotInGallery if unknown."""
        with self._lock:
            ids = self.store.remove_person(person_id)
            self.apply_removed(ids, person_ids=[person_id])
        return ids

    def remove_face(self, face_id: int) -> int:
        """Deletes one face; the person it belonged to. NotInGallery if unknown."""
        with self._lock:
            pid = self.store.remove_face(face_id)
            self.apply_removed([face_id])
        return pid

    def person(self, person_id: int) -> Person:
        return self.store.person(person_id)

    def person_by_name(self, name: str) -> Person | None:
        return self.store.person_by_name(name)

    def people(self) -> list[Person]:
        return self.store.people()

    def faces(self, person_id: int | None = None) -> list[FaceRecord]:
        return self.store.faces(person_id)

    def __len__(self) -> int:
        """Faces in the index."""
        return len(self._face_ids)

    # --- keeping the index in step -------------------------------------------------------

    def apply_added(self, face_ids: Sequence[int], person_ids: Sequence[int], embeddings: np.ndarray,
                    names: dict[int, str] | None = None) -> None:
        """Adds faces already committed to the store (by this or another process) to
        the index. ``names`` maps new person ids to names (looked up when missing)."""
        ids = np.asarray(face_ids, dtype=np.int64)
        if not len(ids):
            return
        with self._lock:
            fresh = ~np.isin(ids, self._face_ids)
            ids, pids, emb = ids[fresh], np.asarray(person_ids, dtype=np.int64)[fresh], l2_normalize(embeddings)[fresh]
            if not len(ids):
                return
            self._index.add(ids, emb)
            all_ids = np.concatenate([self._face_ids, ids])
            all_p = np.concatenate([self._face_person, pids])
            order = np.argsort(all_ids, kind="stable")
            self._face_ids, self._face_person = all_ids[order], all_p[order]
            for p in set(pids.tolist()):
                if p not in self._names:
                    self._names[p] = (names or {}).get(p) or self.store.person(p).name
            if self._vectors is not None:
                self._vectors.update(zip(ids.tolist(), emb))
            self._templates = None

    def apply_removed(self, face_ids: Sequence[int], person_ids: Sequence[int] = ()) -> None:
        """Drops faces (and, with ``person_ids``, people) removed from the store."""
        ids = np.asarray(face_ids, dtype=np.int64)
        with self._lock:
            if len(ids):
                self._index.remove(ids)
                keep = ~np.isin(self._face_ids, ids)
                self._face_ids, self._face_person = self._face_ids[keep], self._face_person[keep]
                if self._vectors is not None:
                    for i in ids.tolist():
                        self._vectors.pop(i, None)
            for p in person_ids:
                self._names.pop(int(p), None)
            self._templates = None

    def _mean_templates(self) -> tuple[np.ndarray, np.ndarray]:
        """(person ids, their L2-normalised mean embeddings), cached until a change."""
        if self._templates is None:
            if self._vectors is None:
                face_ids, _, emb = self.store.all_embeddings()
                self._vectors = dict(zip(face_ids.tolist(), l2_normalize(emb) if len(emb) else emb))
            self._templates = mean_templates(self._face_ids, self._face_person, self._vectors, self.model.embedding_dim)
        return self._templates

    # --- search ----------------------------------------------------------------------

    def threshold(self, scoring: str = "best") -> float | None:
        """The cosine below which a probe is unknown: the open-set threshold stored for
        ``scoring``, else the model's verify threshold (a looser cut, but never "the
        nearest stranger"), else None (the top match is then the identity)."""
        t = self.model.ident_threshold(scoring)
        return t if t is not None else self.model.thresholds.get(VERIFY)

    def identify(self, probe: np.ndarray, top_k: int = 5, scoring: str = "best", threshold: float | None = None,
                 model: GalleryModel | str | None = None) -> Identification:
        """Who is this? One probe embedding against the gallery.

        Args:
            probe: (D,) embedding from the gallery's model (normalised here).
            top_k: People to return, best first.
            scoring: ``"best"`` scores a person by their best-matching face,
                ``"mean"`` by their L2-normalised mean template.
            threshold: Cosine cut for "unknown" (default: :meth:`threshold`).
            model: The model that embedded the probe (GalleryModel or sha256); a
                different one is refused with ModelMismatch.
        """
        return self.identify_many(np.asarray(probe)[None, :] if np.ndim(probe) == 1 else probe, top_k, scoring,
                                  threshold, model)[0]

    def identify_many(self, probes: np.ndarray, top_k: int = 5, scoring: str = "best",
                      threshold: float | None = None, model: GalleryModel | str | None = None) -> list[Identification]:
        """:meth:`identify` for (Q, D) probes, searched as one batch."""
        if scoring not in SCORINGS:
            raise FacekdError(f"unknown scoring {scoring!r}; known: {', '.join(SCORINGS)}")
        if top_k < 1:
            raise FacekdError(f"top_k must be at least 1, not {top_k}")
        self.check_model(model)
        q = np.asarray(probes, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.model.embedding_dim:
            raise ModelMismatch(f"{self.location}: probe of shape {q.shape}; the gallery's model "
                                f"{self.model.name} gives {self.model.embedding_dim}-d embeddings")
        q = l2_normalize(q)
        thr = threshold if threshold is not None else self.threshold(scoring)
        with self._lock:
            if scoring == "best":
                ranked = rank_best(self._index, self._face_ids, self._face_person, q, top_k)
            else:
                ranked = rank_mean(*self._mean_templates(), q, top_k)
            names = dict(self._names)
        out = []
        for matches in ranked:
            ms = [Match(person_id=p, name=names.get(p, str(p)), score=s, face_id=f) for p, s, f in matches]
            top = ms[0] if ms else None
            score = top.score if top else -1.0
            ident = top if top is not None and (thr is None or score >= thr) else None
            out.append(Identification(identity=ident, score=score, threshold=thr, scoring=scoring, matches=ms))
        return out

    def identify_photo(self, photo: Path | str, top_k: int = 5, scoring: str = "best",
                       threshold: float | None = None, detectors: str = DEFAULT_DETECTORS) -> Identification:
        """Detects, aligns and embeds ``photo`` with the gallery's model, then identifies it.

        Raises:
            PhotoError: Unreadable, or no face found.
        """
        embedder = self.embedder()
        face = align_photo(photo, self._chain(detectors), embedder.pre.template)
        return self.identify(embed_faces(embedder, [face])[0], top_k, scoring, threshold)


__all__ = ["Gallery", "model_from_onnx", "file_sha256", "crop_sha256", "l2_normalize", "NotInGallery"]
