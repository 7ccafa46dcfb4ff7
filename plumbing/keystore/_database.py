"""Which database holds the keys and the ledger, and how to connect to it.

SQLite in `data_dir` by default (WAL, synchronous=FULL) or PostgreSQL when
`LLM_MESH_DATABASE_URL` is a `postgresql://` DSN (driver psycopg 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plumbing.settings import MeshSettings

__all__ = ["connect", "database_url"]

_SQLITE_FILE: Final = "llm-mesh.sqlite3"


def database_url(settings: MeshSettings) -> str:
    """The SQLAlchemy URL of the keys and usage database.

    Empty `database_url` = SQLite file in `data_dir`; `postgresql://` / `postgres://` DSNs get
    the psycopg 3 driver; any other SQLAlchemy URL is taken as it is.
    """
    url = settings.database_url.strip()
    if not url:
        return f"sqlite:///{Path(settings.data_dir) / _SQLITE_FILE}"
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def connect(url: str) -> Engine:
    """An engine for the SQLAlchemy `url`; a SQLite file's folder is created if missing."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
