"""The server's view of a gallery: the model check, the HTTP errors, and one lock that
serialises writes against searches.

:class:`~facekd.identify.gallery.Gallery` is thread-safe call by call; the server also
needs a few things to hold across calls: "create this person unless the name is taken"
is one step, and the number of faces an identification reports is the number it searched.
A readers-writer lock gives that: searches share it, enrolments and removals take it
alone, so every identification sees the gallery exactly as some sequence of whole
enrolments left it (what eval/serve_load.py's serial replay checks).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from facekd.deploy.photos import PhotoFace
from facekd.identify.gallery import Gallery, crop_sha256
from facekd.identify.location import open_gallery_at
from facekd.identify.records import Enrolment, FaceRecord, Identification, ModelMismatch, NotInGallery, Person
from facekd.serve.engine import Engine
from facekd.serve.errors import ApiError


class ReadWriteLock:
    """Many readers or one writer; a waiting writer keeps new readers out (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class GalleryService:
    """A :class:`Gallery` served with the model ``engine`` embeds with.

    Args:
        gallery: The gallery (SQLite, or any other store the Gallery was built on).
        engine: The server's model; the gallery must have been built with the same file.
    """

    def __init__(self, gallery: Gallery, engine: Engine) -> None:
        self.gallery = gallery
        self.model_name = engine.model_name
        self.model_sha256 = engine.model_sha256
        self._lock = ReadWriteLock()
        g = gallery.model
        self.mismatch = (
            None if g.sha256 == engine.model_sha256 else
            f"this gallery was built with {g.name} (sha256 {g.sha256[:12]}); this server embeds with "
            f"{engine.model_name} (sha256 {engine.model_sha256[:12]}): a probe or enrolment from it cannot be "
            "compared with the gallery's faces"
        )
        # "Unknown" below the gallery's open-set threshold; a gallery without one falls
        # back to the model's verify threshold rather than naming the nearest stranger.
        self.threshold = gallery.threshold("best")
        if self.threshold is None:
            self.threshold = gallery.model.thresholds.get("verify", engine.threshold)

    def check_model(self) -> None:
        """Raises: ApiError 409 ``model_mismatch`` when the gallery is another model's."""
        if self.mismatch:
            raise ApiError(409, "model_mismatch", self.mismatch)

    @staticmethod
    def _not_found(exc: NotInGallery) -> ApiError:
        return ApiError(404, f"{exc.kind}_not_found", f"no {exc.kind} with id {exc.key} in the gallery")

    def identify(self, probe: np.ndarray, top_k: int) -> tuple[Identification, int]:
        """The identification and the number of faces searched."""
        with self._lock.read():
            try:
                result = self.gallery.identify(probe, top_k=top_k, threshold=self.threshold, model=self.model_sha256)
            except ModelMismatch:
                raise ApiError(409, "model_mismatch", self.mismatch or "probe from another model") from None
            return result, len(self.gallery)

    @staticmethod
    def _records(faces: list[PhotoFace]) -> list[FaceRecord]:
        return [FaceRecord(source=f.photo, detector=f.detector, crop_sha256=crop_sha256(f.crop)) for f in faces]

    def enroll_new(self, name: str, faces: list[PhotoFace], embeddings: np.ndarray) -> Enrolment:
        """A new person with these faces, in one transaction.

        Raises:
            ApiError: 409 ``person_exists`` when the name is taken.
        """
        with self._lock.write():
            existing = self.gallery.person_by_name(name)
            if existing is not None:
                raise ApiError(409, "person_exists", f"a person named {name!r} is already enrolled (id {existing.id}); "
                               f"add faces with POST /v1/people/{existing.id}/faces")
            return self.gallery.enroll_embeddings(name, embeddings, self._records(faces), model=self.model_sha256)

    def add_faces(self, person_id: int, faces: list[PhotoFace], embeddings: np.ndarray) -> Enrolment:
        """More faces for an enrolled person, in one transaction."""
        with self._lock.write():
            person = self.person(person_id)
            return self.gallery.enroll_embeddings(person.name, embeddings, self._records(faces),
                                                  model=self.model_sha256)

    def remove_person(self, person_id: int) -> int:
        """Removes a person and their faces; the number of faces removed."""
        with self._lock.write():
            try:
                return len(self.gallery.remove_person(person_id))
            except NotInGallery as exc:
                raise self._not_found(exc) from None

    def person(self, person_id: int) -> Person:
        try:
            return self.gallery.person(person_id)
        except NotInGallery as exc:
            raise self._not_found(exc) from None

    def person_faces(self, person_id: int) -> tuple[Person, list[FaceRecord]]:
        with self._lock.read():
            return self.person(person_id), self.gallery.faces(person_id)

    def people(self) -> list[Person]:
        return self.gallery.people()

    def close(self) -> None:
        self.gallery.close()


def open_gallery(path: str | Path, engine: Engine) -> GalleryService:
    """The gallery at ``path`` (a SQLite file, or a ``postgresql://`` URL), created for the
    engine's model when missing."""
    return GalleryService(open_gallery_at(path, engine.model_path, create=True), engine)
