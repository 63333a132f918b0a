"""The one engine and session factory of the index, for SQLite and PostgreSQL.

SQLite runs in WAL mode so that several processes (SCP workers, API, worker) share one
file; write transactions start with BEGIN IMMEDIATE (no read-to-write upgrade failures)
and queue on a kernel file lock before that (see `_WriterLock`). Writes go through
`Index.begin()`, reads through `Index.read_session()`.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


class _WriterLock:
    """One SQLite writer at a time across threads and processes, queued in the kernel.

    SQLite's own busy handler polls with sleeps of 1 to 100 ms; several SCP processes
    writing at once would spend most of their time there. An flock on a file next to the
    database wakes the next writer as soon as the lock is free.
    """

    def __init__(self, url: str) -> None:
        path = url.split("///", 1)[-1]
        self.path = (path + ".writer-lock") if path and path != ":memory:" else None
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self.path is None:
            return
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


def dialect_insert(conn: Connection) -> Any:
    """The INSERT with ON CONFLICT of this connection's database (both speak it)."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


def make_engine(url: str, *, fsync: bool = True, for_writes: bool = True) -> Engine:
    """An engine whose errors never show bound values: those are patient IDs and names."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            pool_size=8,
            max_overflow=8,
            hide_parameters=True,
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
                             pool_pre_ping=True, hide_parameters=True)
    return create_engine(url, hide_parameters=True)


class Index:
    """The index database: an engine and its session factory."""

    def __init__(self, url: str, *, fsync: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, fsync=fsync)
        if url.startswith("sqlite"):
            self.read_engine = make_engine(url, fsync=fsync, for_writes=False)
        else:
            self.read_engine = self.engine
        self.read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        self._writer: AbstractContextManager[None] = (
            _WriterLock(url) if url.startswith("sqlite") else nullcontext())

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A Core connection in one write transaction: committed on success."""
        with self._writer, self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for queries: on SQLite it does not take the write lock."""
        with self.read_sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
