"""Gallery storage: the :class:`GalleryStore` protocol and its SQLite backend.

A store keeps the model a gallery was built with, the people, their faces and one
float32 embedding per face. It does not search: :class:`~facekd.identify.gallery.Gallery`
builds a search index from :meth:`GalleryStore.all_embeddings` when it opens and keeps
it in step with its own enrolments and removals.

Every write is one transaction: a face row and its embedding are one row written
together, and :meth:`GalleryStore.enroll` / :meth:`GalleryStore.add_faces` commit all
their faces or none, so a crash (``kill -9``) at any moment loses nothing that was
committed and leaves no half-written face.

:class:`SqliteStore` is one SQLite file in WAL mode (``synchronous=FULL``: a commit that
returned is on disk), safe to share between threads of one process (one connection
behind a lock) and between processes (SQLite's file locks; writers wait up to
``BUSY_TIMEOUT_S``). This module is the one owner of the gallery file format.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from facekd.errors import FacekdError
from facekd.identify.records import FaceRecord, GalleryModel, ModelMismatch, NotInGallery, Person

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE facekd_gallery (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE model (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    preprocessing TEXT NOT NULL,   -- JSON
    embedding_dim INTEGER NOT NULL CHECK (embedding_dim > 0),
    thresholds TEXT NOT NULL,      -- JSON {"verify": .., "identify.best": .., ...}
    path TEXT
);
CREATE TABLE people (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);
CREATE TABLE faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused, so index ids stay unique
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    detector TEXT NOT NULL,
    crop_sha256 TEXT NOT NULL,
    embedding BLOB NOT NULL,                -- float32, little-endian, embedding_dim values
    created TEXT NOT NULL
);
CREATE INDEX faces_person ON faces(person_id);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _as_matrix(embeddings: np.ndarray, dim: int, n: int, where: str) -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim == 1:
        e = e[None, :]
    if e.ndim != 2 or e.shape[1] != dim:
        raise ModelMismatch(f"{where}: embeddings of shape {tuple(np.shape(embeddings))}; the gallery's model gives {dim}-d")
    if e.shape[0] != n:
        raise FacekdError(f"{where}: {n} faces but {e.shape[0]} embeddings")
    if not np.all(np.isfinite(e)):
        raise FacekdError(f"{where}: embeddings hold NaN or infinity")
    return np.ascontiguousarray(e.astype("<f4"))


@runtime_checkable
class GalleryStore(Protocol):
    """What a gallery backend provides. Ids are integers that are never reused.

    Construction is per backend (``SqliteStore.create(path, model)`` /
    ``SqliteStore.open(path)``; a PostgreSQL store from its connection string). Every
    method raises :class:`~facekd.errors.FacekdError` (or its subclasses
    :class:`~facekd.identify.records.NotInGallery` for an unknown id,
    :class:`~facekd.identify.records.ModelMismatch` for embeddings of the wrong size).
    Methods may be called from several threads.
    """

    location: str  # the file or database, for messages

    def model(self) -> GalleryModel:
        """The model the gallery was built with."""

    def add_person(self, name: str) -> int:
        """Creates a person; their id. A name already enrolled is an error."""

    def person(self, person_id: int) -> Person:
        """One person, with their face count; NotInGallery if unknown."""

    def person_by_name(self, name: str) -> Person | None:
        """The person enrolled as ``name``, or None."""

    def people(self) -> list[Person]:
        """Everyone enrolled, by id, with face counts."""

    def add_faces(self, person_id: int, faces: Sequence[FaceRecord], embeddings: np.ndarray) -> list[int]:
        """Stores faces and their (N, D) embeddings for an existing person in one
        transaction (all or none); the new face ids in order."""

    def enroll(self, name: str, faces: Sequence[FaceRecord], embeddings: np.ndarray) -> tuple[Person, list[int]]:
        """Creates ``name`` if new, then stores the faces, all in one transaction;
        the person (face count after) and the new face ids."""

    def remove_person(self, person_id: int) -> list[int]:
        """Deletes a person and all their faces in one transaction; the face ids removed."""

    def remove_face(self, face_id: int) -> int:
        """Deletes one face; the id of the person it belonged to (who stays, maybe with
        no faces)."""

    def faces(self, person_id: int | None = None) -> list[FaceRecord]:
        """Face records (no embeddings), by id; one person's when ``person_id`` is given."""

    def all_embeddings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(face_ids int64 (N,), person_ids int64 (N,), embeddings float32 (N, D))``
        of every stored face, by face id: what a search index is built from."""

    def close(self) -> None:
        """Releases the connection; the store is unusable afterwards."""


class SqliteStore:
    """A gallery in one SQLite file (WAL mode). See the module docstring.

    Use :meth:`create` for a new gallery and :meth:`open` for an existing one.
    """

    def __init__(self, path: Path | str, conn: sqlite3.Connection) -> None:
        self.path = Path(path)
        self.location = str(path)
        self._conn = conn
        self._lock = threading.RLock()
        self._model: GalleryModel | None = None

    # --- opening ---------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise FacekdError(f"{path}: not a facekd gallery ({exc})") from None
        return conn

    @classmethod
    def create(cls, path: Path | str, model: GalleryModel) -> SqliteStore:
        """Creates a new, empty gallery file for ``model``; an existing file is an error."""
        path = Path(path)
        if path.exists():
            raise FacekdError(f"{path}: already exists; open it, or choose another file for a new gallery")
        if model.embedding_dim <= 0:
            raise FacekdError(f"{path}: embedding_dim must be positive, not {model.embedding_dim}")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Built in a temporary file and linked into place complete: a crash during
        # creation leaves no schema-less file at ``path``, and of two processes creating
        # the same gallery one wins, the other gets FileExistsError.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                cls(tmp, conn)._init_schema(model)
            finally:
                conn.close()
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FacekdError(f"{path}: already exists; open it, or choose another file for a new gallery") from None
        finally:
            tmp.unlink(missing_ok=True)
        return cls.open(path)

    def _init_schema(self, model: GalleryModel) -> SqliteStore:
        with self._write() as c:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute("INSERT INTO facekd_gallery VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            c.execute("INSERT INTO facekd_gallery VALUES ('created', ?)", (_now(),))
            c.execute(
                "INSERT INTO model (id, name, sha256, preprocessing, embedding_dim, thresholds, path) "
                "VALUES (1, ?, ?, ?, ?, ?, ?)",
                (model.name, model.sha256, json.dumps(model.preprocessing, sort_keys=True), int(model.embedding_dim),
                 json.dumps(model.thresholds, sort_keys=True), model.path),
            )
        return self

    @classmethod
    def open(cls, path: Path | str) -> SqliteStore:
        """Opens an existing gallery file."""
        path = Path(path)
        if not path.is_file():
            raise FacekdError(f"{path}: no such gallery (create one with `facekd gallery enroll {path} ... --model M.onnx`)")
        conn = cls._connect(path)
        try:
            row = conn.execute("SELECT value FROM facekd_gallery WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise FacekdError(f"{path}: not a facekd gallery ({exc})") from None
        if row is None or int(row[0]) != SCHEMA_VERSION:
            conn.close()
            raise FacekdError(f"{path}: gallery schema version {row[0] if row else None}; this facekd reads {SCHEMA_VERSION}")
        store = cls(path, conn)
        store.model()
        return store

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE .. COMMIT, ROLLBACK on any error)."""
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # --- model and people ------------------------------------------------------------

    def model(self) -> GalleryModel:
        if self._model is None:
            rows = self._read("SELECT name, sha256, preprocessing, embedding_dim, thresholds, path FROM model WHERE id = 1")
            if not rows:
                raise FacekdError(f"{self.path}: gallery has no model recorded")
            name, sha, pre, dim, thr, path = rows[0]
            self._model = GalleryModel(
                name=name, sha256=sha, preprocessing=json.loads(pre), embedding_dim=int(dim),
                thresholds={k: float(v) for k, v in json.loads(thr).items()}, path=path,
            )
        return self._model

    def _insert_person(self, c: sqlite3.Connection, name: str) -> int:
        name = name.strip()
        if not name:
            raise FacekdError(f"{self.path}: a person needs a non-empty name")
        try:
            return int(c.execute("INSERT INTO people (name, created) VALUES (?, ?)", (name, _now())).lastrowid)
        except sqlite3.IntegrityError:
            raise FacekdError(f"{self.path}: a person named {name!r} is already enrolled") from None

    def add_person(self, name: str) -> int:
        with self._write() as c:
            return self._insert_person(c, name)

    def person(self, person_id: int) -> Person:
        rows = self._read(
            "SELECT p.id, p.name, p.created, (SELECT count(*) FROM faces f WHERE f.person_id = p.id) "
            "FROM people p WHERE p.id = ?", (int(person_id),),
        )
        if not rows:
            raise NotInGallery("person", int(person_id), self.location)
        pid, name, created, n = rows[0]
        return Person(id=pid, name=name, faces=n, created=created)

    def person_by_name(self, name: str) -> Person | None:
        rows = self._read("SELECT id FROM people WHERE name = ?", (name.strip(),))
        return self.person(rows[0][0]) if rows else None

    def people(self) -> list[Person]:
        rows = self._read(
            "SELECT p.id, p.name, p.created, count(f.id) FROM people p LEFT JOIN faces f ON f.person_id = p.id "
            "GROUP BY p.id ORDER BY p.id"
        )
        return [Person(id=i, name=n, faces=k, created=c) for i, n, c, k in rows]

    # --- faces -----------------------------------------------------------------------

    def _insert_faces(self, c: sqlite3.Connection, person_id: int, faces: Sequence[FaceRecord], emb: np.ndarray) -> list[int]:
        now = _now()
        ids = []
        for f, e in zip(faces, emb):
            cur = c.execute(
                "INSERT INTO faces (person_id, source, detector, crop_sha256, embedding, created) VALUES (?, ?, ?, ?, ?, ?)",
                (int(person_id), str(f.source), f.detector or "", f.crop_sha256 or "", e.tobytes(), now),
            )
            ids.append(int(cur.lastrowid))
        return ids

    def add_faces(self, person_id: int, faces: Sequence[FaceRecord], embeddings: np.ndarray) -> list[int]:
        emb = _as_matrix(embeddings, self.model().embedding_dim, len(faces), self.location)
        with self._write() as c:
            if c.execute("SELECT 1 FROM people WHERE id = ?", (int(person_id),)).fetchone() is None:
                raise NotInGallery("person", int(person_id), self.location)
            return self._insert_faces(c, person_id, faces, emb)

    def enroll(self, name: str, faces: Sequence[FaceRecord], embeddings: np.ndarray) -> tuple[Person, list[int]]:
        emb = _as_matrix(embeddings, self.model().embedding_dim, len(faces), self.location)
        with self._write() as c:
            row = c.execute("SELECT id FROM people WHERE name = ?", (name.strip(),)).fetchone()
            pid = int(row[0]) if row else self._insert_person(c, name)
            ids = self._insert_faces(c, pid, faces, emb)
        return self.person(pid), ids

    def remove_person(self, person_id: int) -> list[int]:
        with self._write() as c:
            if c.execute("SELECT 1 FROM people WHERE id = ?", (int(person_id),)).fetchone() is None:
                raise NotInGallery("person", int(person_id), self.location)
            ids = [r[0] for r in c.execute("SELECT id FROM faces WHERE person_id = ? ORDER BY id", (int(person_id),))]
            c.execute("DELETE FROM faces WHERE person_id = ?", (int(person_id),))
            c.execute("DELETE FROM people WHERE id = ?", (int(person_id),))
        return ids

    def remove_face(self, face_id: int) -> int:
        with self._write() as c:
            row = c.execute("SELECT person_id FROM faces WHERE id = ?", (int(face_id),)).fetchone()
            if row is None:
                raise NotInGallery("face", int(face_id), self.location)
            c.execute("DELETE FROM faces WHERE id = ?", (int(face_id),))
        return int(row[0])

    def faces(self, person_id: int | None = None) -> list[FaceRecord]:
        sql = "SELECT id, person_id, source, detector, crop_sha256, created FROM faces"
        rows = (self._read(sql + " WHERE person_id = ? ORDER BY id", (int(person_id),)) if person_id is not None
                else self._read(sql + " ORDER BY id"))
        return [FaceRecord(id=i, person_id=p, source=s, detector=d, crop_sha256=h, created=c) for i, p, s, d, h, c in rows]

    def face_count(self) -> int:
        """How many faces are stored."""
        return int(self._read("SELECT count(*) FROM faces")[0][0])

    def all_embeddings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dim = self.model().embedding_dim
        rows = self._read("SELECT id, person_id, embedding FROM faces ORDER BY id")
        face_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        person_ids = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        blob = b"".join(r[2] for r in rows)
        if len(blob) != 4 * dim * len(rows):
            bad = [r[0] for r in rows if len(r[2]) != 4 * dim]
            raise FacekdError(f"{self.location}: faces {bad[:10]} hold embeddings that are not {dim} float32 values")
        matrix = np.frombuffer(blob, dtype="<f4").reshape(len(rows), dim).astype(np.float32)
        return face_ids, person_ids, matrix

    # --- upkeep ----------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """Problems found: SQLite's ``PRAGMA integrity_check`` and ``foreign_key_check``,
        faces without a valid embedding, faces of no person. Empty when all is well."""
        dim = self.model().embedding_dim
        problems = [r[0] for r in self._read("PRAGMA integrity_check") if r[0] != "ok"]
        problems += [f"foreign key: {r}" for r in self._read("PRAGMA foreign_key_check")]
        bad = self._read("SELECT id FROM faces WHERE embedding IS NULL OR length(embedding) != ?", (4 * dim,))
        problems += [f"face {r[0]}: no {dim}-d embedding" for r in bad]
        orphans = self._read("SELECT id FROM faces WHERE person_id NOT IN (SELECT id FROM people)")
        problems += [f"face {r[0]}: belongs to no person" for r in orphans]
        return problems

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
