"""Where a gallery lives, named by one string: a SQLite file path, or a PostgreSQL URL
(``postgresql://user[:password]@host:port/dbname``) for a gallery shared by several
servers. Every command that takes a gallery goes through :func:`open_gallery_at`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from facekd.errors import FacekdError

if TYPE_CHECKING:  # the opening functions import these when called: they pull in onnx and faiss,
    # and the command line imports this module for location_arg on every start
    from facekd.identify.gallery import Gallery
    from facekd.identify.store import GalleryStore

URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: str | Path) -> bool:
    """Whether a gallery location is a PostgreSQL URL rather than a file path."""
    return str(location).startswith(URL_SCHEMES)


def location_arg(value: str) -> str | Path:
    """For argparse's ``type=``: a PostgreSQL URL kept as given (a Path would fold its
    ``//``), anything else a file path."""
    return value if is_postgres_url(value) else Path(value)


def open_store(location: str | Path) -> GalleryStore:
    """The existing gallery store at ``location`` (no index, no listener): for listing,
    removing and inspecting."""
    if is_postgres_url(location):
        from facekd.identify.postgres import PostgresStore  # the postgres extra (psycopg)

        return PostgresStore.open(str(location))
    from facekd.identify.store import SqliteStore  # heavy: see TYPE_CHECKING above

    return SqliteStore.open(location)


def open_gallery_at(location: str | Path, model_path: Path | str | None = None, index: str = "exact",
                    create: bool = False, **index_options) -> Gallery:
    """The gallery at ``location``; with ``create``, a new one for ``model_path`` where
    there is none. A PostgreSQL gallery also follows other processes' changes
    (LISTEN/NOTIFY) until it is closed.

    Raises:
        FacekdError: No gallery there (and not ``create``), or it cannot be opened.
    """
    if is_postgres_url(location):
        # The postgres extra (psycopg), needed only for a PostgreSQL gallery.
        from facekd.identify.postgres import open_postgres_gallery

        return open_postgres_gallery(str(location), model_path, index=index, create=create, **index_options)
    from facekd.identify.gallery import Gallery  # heavy: see TYPE_CHECKING above

    path = Path(location)
    if path.exists():
        return Gallery.open(path, index=index, model_path=model_path, **index_options)
    if not create:
        raise FacekdError(f"{path}: no such gallery")
    if model_path is None:
        raise FacekdError(f"{path}: no such gallery; give the model (--model) to create one")
    return Gallery.create(path, model_path, index=index, **index_options)
