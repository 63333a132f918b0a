"""The one engine and session factory of the index, for SQLite and PostgreSQL.

SQLite runs in WAL mode so that several processes (SCP workers, API, worker) share one
file; write transactions start with BEGIN IMMEDIATE so two writers queue on the lock
instead of failing on a read-to-write upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, fsync: bool = True, for_writes: bool = True) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            pool_size=8,
            max_overflow=8,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if for_writes else "BEGIN")

        return engine
    if url.startswith("postgresql"):
        # synchronous_commit is on by default in PostgreSQL; with fsync off we relax it.
        options = {} if fsync else {"options": "-c synchronous_commit=off"}
        return create_engine(url, pool_size=8, max_overflow=8, connect_args=options,
                             pool_pre_ping=True)
    return create_engine(url)


class Index:
    """The index database: an engine and its session factory."""

    def __init__(self, url: str, *, fsync: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, fsync=fsync)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        if url.startswith("sqlite"):
            self.read_engine = make_engine(url, fsync=fsync, for_writes=False)
        else:
            self.read_engine = self.engine
        self.read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self.sessions() as s, s.begin():
            yield s

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for queries: on SQLite it does not take the write lock."""
        with self.read_sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
