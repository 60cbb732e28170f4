"""The listening half of the PostgreSQL gallery (:mod:`facekd.identify.postgres`).

A :class:`Listener` holds its own connection, LISTENing on :data:`CHANNEL` from the
moment it is built, and once started a thread applies each notification to a gallery:
an ``add`` reads the named faces' embeddings back from the store and calls
``Gallery.apply_added`` (then drops those already gone again); a ``remove`` calls
``Gallery.apply_removed``. A payload is JSON:
``{"origin": store id, "op": "add"|"remove", "faces": [ids], "people": [ids]}``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from contextlib import suppress

import numpy as np
import psycopg

from facekd.errors import FacekdError

log = logging.getLogger("facekd.identify.postgres")

CHANNEL = "facekd_gallery"
RECONNECT_S = 1.0


class Listener:
    """The LISTEN connection and the thread that applies notifications to a gallery.

    Args:
        store: The :class:`~facekd.identify.postgres.PostgresStore` (its ``url``,
            ``origin``, ``location`` and ``embeddings(face_ids)`` are used).
        connect: Opens an autocommit connection to a URL.
    """

    def __init__(self, store, connect: Callable[[str], psycopg.Connection]) -> None:
        self.store = store
        self._connect = connect
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = self._listen()

    def _listen(self) -> psycopg.Connection:
        conn = self._connect(self.store.url)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def start(self, gallery) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(gallery,), name="facekd-gallery-listen", daemon=True)
            self._thread.start()

    def _run(self, gallery) -> None:
        while not self._stop.is_set():
            try:
                for note in self._conn.notifies(timeout=0.5):
                    self.apply(gallery, json.loads(note.payload))
            except (psycopg.Error, FacekdError) as exc:
                if self._stop.is_set():
                    return
                log.warning("%s: gallery listener lost its connection (%s); reconnecting", self.store.location, exc)
                self._reconnect(gallery)
            except Exception:  # a bad payload must not end the thread: rebuild instead
                log.exception("%s: gallery listener could not apply a change; rebuilding the index", self.store.location)
                with suppress(Exception):
                    gallery.refresh()

    def _reconnect(self, gallery) -> None:
        """Listens again, then rebuilds the index: notifications sent while the
        connection was down are lost."""
        with suppress(Exception):
            self._conn.close()
        while not self._stop.wait(RECONNECT_S):
            try:
                self._conn = self._listen()
                gallery.refresh()
                return
            except Exception as exc:  # anything: a dead thread would leave the index stale, silently
                log.warning("%s: gallery listener: %s; trying again", self.store.location, exc)
                with suppress(Exception):
                    self._conn.close()

    def apply(self, gallery, note: dict) -> None:
        """Applies one notification (other processes' only: this store's own gallery
        applied its changes when it made them)."""
        if note.get("origin") == self.store.origin:
            return
        if note.get("op") == "add":
            ids, pids, emb, names = self.store.embeddings(note["faces"])
            gallery.apply_added(ids, pids, emb, names)
            if len(ids):
                # This process may have removed some of them between the read and the
                # apply (finding nothing to remove, and skipping its own notification):
                # what is gone now is dropped; a removal after this check finds them.
                gallery.apply_removed(np.setdiff1d(ids, self.store.existing(ids)))
        elif note.get("op") == "remove":
            gallery.apply_removed(note["faces"], person_ids=note.get("people", []))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with suppress(Exception):
            self._conn.close()

