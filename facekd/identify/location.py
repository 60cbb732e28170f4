"""Where a gallery lives, named by one string: a SQLite file path, or a PostgreSQL URL
(``postgresql://user[:password]@host:port/dbname``) for a gallery shared by several
servers. Every command that takes a gallery goes through :func:`open_gallery_at`."""

from __future__ import annotations

from pathlib import Path

from facekd.errors import FacekdError
from facekd.identify.gallery import Gallery

URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: str | Path) -> bool:
    """Whether a gallery location is a PostgreSQL URL rather than a file path."""
    return str(location).startswith(URL_SCHEMES)


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
    path = Path(location)
    if path.exists():
        return Gallery.open(path, index=index, model_path=model_path, **index_options)
    if not create:
        raise FacekdError(f"{path}: no such gallery")
    if model_path is None:
        raise FacekdError(f"{path}: no such gallery; give the model (--model) to create one")
    return Gallery.create(path, model_path, index=index, **index_options)
