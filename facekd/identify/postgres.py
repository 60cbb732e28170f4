"""A gallery in PostgreSQL, shared by several ``facekd serve`` processes.

Each process holds the search index in memory (:class:`~facekd.identify.gallery.Gallery`)
and PostgreSQL only stores: people, faces and one embedding per face as a ``real[]``
array (its length checked by the table). Processes stay in step through LISTEN/NOTIFY,
the CompreFace design: every enrolment or removal sends, in its own transaction, a
notification on :data:`CHANNEL` naming the face (and person) ids it changed, delivered to
the listeners when it commits; each process's listener thread reads the added faces'
embeddings back and applies the change to its index (:meth:`PostgresStore.follow`).

The listener starts before the gallery reads its snapshot, and applying a change is
idempotent (an id already in the index is skipped, an absent one is not removed), so a
change committed while a process opens is neither lost nor applied twice. When the
listening connection drops, the listener reconnects and rebuilds the index from the
database (``Gallery.refresh``), since notifications sent meanwhile are lost.

A gallery is one database (its tables in the connection's schema), named by a
``postgresql://user@host:port/dbname`` URL wherever a gallery file is otherwise given.
This module is the one owner of that schema.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psycopg

from facekd.errors import FacekdError
from facekd.identify.gallery import Gallery, model_from_onnx
from facekd.identify.pg_listen import CHANNEL, Listener
from facekd.identify.records import FaceRecord, GalleryModel, NotInGallery, Person
from facekd.identify.store import SCHEMA_VERSION, _as_matrix

NOTIFY_IDS = 500  # face ids per notification: keeps a payload far below PostgreSQL's 8000 bytes

_SCHEMA = """
CREATE TABLE facekd_gallery (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE model (
    id integer PRIMARY KEY CHECK (id = 1),
    name text NOT NULL,
    sha256 text NOT NULL,
    preprocessing text NOT NULL,
    embedding_dim integer NOT NULL CHECK (embedding_dim > 0),
    thresholds text NOT NULL,
    path text
);
CREATE TABLE people (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE faces (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    person_id bigint NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    source text NOT NULL,
    detector text NOT NULL,
    crop_sha256 text NOT NULL,
    embedding real[] NOT NULL CHECK (cardinality(embedding) = {dim} AND array_ndims(embedding) = 1),
    created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX faces_person ON faces(person_id)
"""


def _iso(ts) -> str:
    return ts.isoformat(timespec="seconds") if ts is not None else ""


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, _, rest = url.partition("://")
    cred, at, host = rest.rpartition("@")
    return f"{scheme}://{cred.split(':')[0]}@{host}" if at else url


class PostgresStore:
    """A :class:`~facekd.identify.store.GalleryStore` in a PostgreSQL database.

    One connection behind a lock serves the calls (every write one transaction); a
    second one, opened by :meth:`follow`, listens. Use :meth:`create` or :meth:`open`.
    """

    def __init__(self, url: str, conn: psycopg.Connection) -> None:
        self.url = url
        self.location = _redact(url)
        self._conn = conn
        self._lock = threading.RLock()
        self._model: GalleryModel | None = None
        self.origin = uuid.uuid4().hex  # this store's notifications, which its own gallery has applied
        self._listener: Listener | None = None

    @staticmethod
    def _connect(url: str, autocommit: bool = True) -> psycopg.Connection:
        try:
            return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
        except psycopg.Error as exc:
            raise FacekdError(f"{_redact(url)}: cannot connect to PostgreSQL ({str(exc).strip()})") from None

    @classmethod
    def create(cls, url: str, model: GalleryModel) -> PostgresStore:
        """Creates the gallery's tables for ``model`` in an empty database."""
        store = cls(url, cls._connect(url))
        try:
            with store._write() as cur:
                cur.execute("SELECT to_regclass('facekd_gallery')")
                if cur.fetchone()[0] is not None:
                    raise FacekdError(f"{store.location}: already holds a facekd gallery; open it instead")
                for stmt in _SCHEMA.format(dim=int(model.embedding_dim)).split(";"):
                    cur.execute(stmt)
                cur.execute("INSERT INTO facekd_gallery VALUES ('schema_version', %s), ('created', now()::text)",
                            (str(SCHEMA_VERSION),))
                cur.execute(
                    "INSERT INTO model VALUES (1, %s, %s, %s, %s, %s, %s)",
                    (model.name, model.sha256, json.dumps(model.preprocessing, sort_keys=True),
                     int(model.embedding_dim), json.dumps(model.thresholds, sort_keys=True), model.path),
                )
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, url: str) -> PostgresStore:
        """Opens the gallery in an existing database."""
        store = cls(url, cls._connect(url))
        try:
            row = store._read("SELECT to_regclass('facekd_gallery')")[0]
            if row[0] is None:
                raise FacekdError(f"{store.location}: no facekd gallery in this database")
            version = store._read("SELECT value FROM facekd_gallery WHERE key = 'schema_version'")
            if not version or int(version[0][0]) != SCHEMA_VERSION:
                raise FacekdError(f"{store.location}: gallery schema version {version[0][0] if version else None}; "
                                  f"this facekd reads {SCHEMA_VERSION}")
            store.model()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def exists(cls, url: str) -> bool:
        """Whether the database already holds a facekd gallery."""
        with cls._connect(url) as conn:
            return conn.execute("SELECT to_regclass('facekd_gallery')").fetchone()[0] is not None

    # --- transactions ----------------------------------------------------------------

    def _live(self) -> psycopg.Connection:
        """The connection, opened again if the server closed it (a restart)."""
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect(self.url)
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[psycopg.Cursor]:
        with self._lock:
            self._live()
            try:
                with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
            except psycopg.Error as exc:
                raise FacekdError(f"{self.location}: {str(exc).strip()}") from None

    def _read(self, sql: str, params: Sequence = (), binary: bool = False) -> list[tuple]:
        """A query's rows. A read on a connection the server dropped (a restart) is
        tried once more on a new one; a write is not (its outcome would be unknown)."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    with self._live().cursor(binary=binary) as cur:
                        return cur.execute(sql, params).fetchall()
                except psycopg.OperationalError as exc:
                    if attempt == 2 or not self._conn.broken:
                        raise FacekdError(f"{self.location}: {str(exc).strip()}") from None
                except psycopg.Error as exc:
                    raise FacekdError(f"{self.location}: {str(exc).strip()}") from None
        raise AssertionError("unreachable")

    def _notify(self, cur: psycopg.Cursor, op: str, face_ids: Sequence[int], person_ids: Sequence[int] = ()) -> None:
        """Queues notifications (sent at commit) naming the changed ids, in chunks."""
        ids = [int(i) for i in face_ids]
        chunks = [ids[i : i + NOTIFY_IDS] for i in range(0, len(ids), NOTIFY_IDS)] or [[]]
        for n, chunk in enumerate(chunks):
            payload = {"origin": self.origin, "op": op, "faces": chunk,
                       "people": [int(p) for p in person_ids] if n == 0 else []}
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(payload, separators=(",", ":"))))

    # --- model and people ------------------------------------------------------------

    def model(self) -> GalleryModel:
        if self._model is None:
            rows = self._read("SELECT name, sha256, preprocessing, embedding_dim, thresholds, path FROM model WHERE id = 1")
            if not rows:
                raise FacekdError(f"{self.location}: gallery has no model recorded")
            name, sha, pre, dim, thr, path = rows[0]
            self._model = GalleryModel(name=name, sha256=sha, preprocessing=json.loads(pre), embedding_dim=int(dim),
                                       thresholds={k: float(v) for k, v in json.loads(thr).items()}, path=path)
        return self._model

    def _insert_person(self, cur: psycopg.Cursor, name: str) -> int:
        name = name.strip()
        if not name:
            raise FacekdError(f"{self.location}: a person needs a non-empty name")
        cur.execute("INSERT INTO people (name) VALUES (%s) ON CONFLICT (name) DO NOTHING RETURNING id", (name,))
        row = cur.fetchone()
        if row is None:
            raise FacekdError(f"{self.location}: a person named {name!r} is already enrolled")
        return int(row[0])

    def add_person(self, name: str) -> int:
        with self._write() as cur:
            return self._insert_person(cur, name)

    def person(self, person_id: int) -> Person:
        rows = self._read("SELECT p.id, p.name, p.created, (SELECT count(*) FROM faces f WHERE f.person_id = p.id) "
                          "FROM people p WHERE p.id = %s", (int(person_id),))
        if not rows:
            raise NotInGallery("person", int(person_id), self.location)
        pid, name, created, n = rows[0]
        return Person(id=int(pid), name=name, faces=int(n), created=_iso(created))

    def person_by_name(self, name: str) -> Person | None:
        rows = self._read("SELECT id FROM people WHERE name = %s", (name.strip(),))
        return self.person(rows[0][0]) if rows else None

    def people(self) -> list[Person]:
        rows = self._read("SELECT p.id, p.name, p.created, count(f.id) FROM people p "
                          "LEFT JOIN faces f ON f.person_id = p.id GROUP BY p.id ORDER BY p.id")
        return [Person(id=int(i), name=n, faces=int(k), created=_iso(c)) for i, n, c, k in rows]

    # --- faces -----------------------------------------------------------------------

    def _insert_faces(self, cur: psycopg.Cursor, person_id: int, faces: Sequence[FaceRecord], emb: np.ndarray) -> list[int]:
        rows = [(int(person_id), str(f.source), f.detector or "", f.crop_sha256 or "", e.tolist())
                for f, e in zip(faces, emb)]
        ids: list[int] = []
        if rows:  # one round trip for all the faces (pipelined), each row's id returned
            cur.executemany("INSERT INTO faces (person_id, source, detector, crop_sha256, embedding) "
                            "VALUES (%s, %s, %s, %s, %s::real[]) RETURNING id", rows, returning=True)
            while True:
                ids.append(int(cur.fetchone()[0]))
                if not cur.nextset():
                    break
        self._notify(cur, "add", ids)
        return ids

    def add_faces(self, person_id: int, faces: Sequence[FaceRecord], embeddings: np.ndarray) -> list[int]:
        emb = _as_matrix(embeddings, self.model().embedding_dim, len(faces), self.location)
        with self._write() as cur:
            cur.execute("SELECT 1 FROM people WHERE id = %s FOR SHARE", (int(person_id),))
            if cur.fetchone() is None:
                raise NotInGallery("person", int(person_id), self.location)
            return self._insert_faces(cur, person_id, faces, emb)

    def enroll(self, name: str, faces: Sequence[FaceRecord], embeddings: np.ndarray) -> tuple[Person, list[int]]:
        emb = _as_matrix(embeddings, self.model().embedding_dim, len(faces), self.location)
        if not name.strip():
            raise FacekdError(f"{self.location}: a person needs a non-empty name")
        with self._write() as cur:
            # Insert-or-find in one statement, so two processes enrolling one new name
            # at once end with one person.
            cur.execute("INSERT INTO people (name) VALUES (%s) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name "
                        "RETURNING id", (name.strip(),))
            pid = int(cur.fetchone()[0])
            ids = self._insert_faces(cur, pid, faces, emb)
        return self.person(pid), ids

    def remove_person(self, person_id: int) -> list[int]:
        with self._write() as cur:
            cur.execute("SELECT 1 FROM people WHERE id = %s FOR UPDATE", (int(person_id),))
            if cur.fetchone() is None:
                raise NotInGallery("person", int(person_id), self.location)
            cur.execute("DELETE FROM faces WHERE person_id = %s RETURNING id", (int(person_id),))
            ids = sorted(int(r[0]) for r in cur.fetchall())
            cur.execute("DELETE FROM people WHERE id = %s", (int(person_id),))
            self._notify(cur, "remove", ids, [int(person_id)])
        return ids

    def remove_face(self, face_id: int) -> int:
        with self._write() as cur:
            cur.execute("DELETE FROM faces WHERE id = %s RETURNING person_id", (int(face_id),))
            row = cur.fetchone()
            if row is None:
                raise NotInGallery("face", int(face_id), self.location)
            self._notify(cur, "remove", [int(face_id)])
        return int(row[0])

    def faces(self, person_id: int | None = None) -> list[FaceRecord]:
        sql = "SELECT id, person_id, source, detector, crop_sha256, created FROM faces"
        rows = (self._read(sql + " WHERE person_id = %s ORDER BY id", (int(person_id),)) if person_id is not None
                else self._read(sql + " ORDER BY id"))
        return [FaceRecord(id=int(i), person_id=int(p), source=s, detector=d, crop_sha256=h, created=_iso(c))
                for i, p, s, d, h, c in rows]

    def face_count(self) -> int:
        """How many faces are stored."""
        return int(self._read("SELECT count(*) FROM faces")[0][0])

    def embeddings(self, face_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
        """``(face_ids, person_ids, embeddings (N, D), {person_id: name})`` of the given
        faces that still exist (all faces when None), by face id."""
        sql = "SELECT f.id, f.person_id, f.embedding, p.name FROM faces f JOIN people p ON p.id = f.person_id"
        if face_ids is None:
            rows = self._read(sql + " ORDER BY f.id", binary=True)
        else:
            rows = self._read(sql + " WHERE f.id = ANY(%s) ORDER BY f.id", ([int(i) for i in face_ids],), binary=True)
        dim = self.model().embedding_dim
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        pids = np.array([r[1] for r in rows], dtype=np.int64)
        emb = np.array([r[2] for r in rows], dtype=np.float32).reshape(len(rows), dim)
        return ids, pids, emb, {int(r[1]): r[3] for r in rows}

    def existing(self, face_ids: Sequence[int]) -> np.ndarray:
        """Those of ``face_ids`` still stored."""
        rows = self._read("SELECT id FROM faces WHERE id = ANY(%s)", ([int(i) for i in face_ids],))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def all_embeddings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, pids, emb, _ = self.embeddings()
        return ids, pids, emb

    # --- following other processes ---------------------------------------------------

    def listen(self) -> None:
        """Starts listening for other processes' changes (held until :meth:`follow`).
        Called before a gallery reads its snapshot, nothing committed in between is missed."""
        if self._listener is None:
            self._listener = Listener(self, self._connect)

    def follow(self, gallery: Gallery) -> None:
        """Applies other processes' enrolments and removals to ``gallery``'s index from
        now on, in a listener thread; :meth:`close` stops it. Without an earlier
        :meth:`listen`, the gallery is rebuilt once after listening starts, to catch up."""
        if self._listener is None:
            self.listen()
            gallery.refresh()
        self._listener.start(gallery)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def open_postgres_gallery(url: str, model_path: Path | str | None = None, index: str = "exact",
                          create: bool = True, **index_options) -> Gallery:
    """The gallery in the PostgreSQL database at ``url``, following other processes.

    Args:
        url: ``postgresql://user[:password]@host:port/dbname``.
        model_path: The ONNX model; with ``create``, a database holding no gallery gets
            one for this model.
        index: Search index kind (``exact``, ``hnsw``).
        create: Create the gallery when the database has none.
    """
    if create and not PostgresStore.exists(url):
        if model_path is None:
            raise FacekdError(f"{_redact(url)}: no facekd gallery here; give the model to create one")
        try:
            store = PostgresStore.create(url, model_from_onnx(model_path))
        except FacekdError:
            if not PostgresStore.exists(url):
                raise
            store = PostgresStore.open(url)  # another server created it first
    else:
        store = PostgresStore.open(url)
    try:
        store.listen()
        gallery = Gallery(store, index=index, model_path=model_path, **index_options)
        store.follow(gallery)
    except BaseException:
        store.close()
        raise
    return gallery
