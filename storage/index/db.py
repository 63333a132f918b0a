"""The one engine and session factory of the index, for SQLite and PostgreSQL.

SQLite runs in WAL mode so that several processes (SCP workers, API, worker) share one
file; write transactions start with BEGIN IMMEDIATE (no read-to-write upgrade failures)
and queue on a kernel file lock before that (see `_WriterLock`). Writes go through
`Index.begin()`, reads through `Index.read_session()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

from sqlalchemy import Connection, Dialect, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")


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


def dialect_insert(conn: Connection | Dialect) -> Any:
    """The INSERT with ON CONFLICT of this connection's database (both speak it)."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    dialect = conn.dialect if isinstance(conn, Connection) else conn
    return pg_insert if dialect.name == "postgresql" else sqlite_insert


class CompiledStatement:
    """A Core statement compiled once for a dialect, executed on a DBAPI cursor.

    The ingest path runs the same few statements for every SOP Instance; SQLAlchemy's work
    per execution (coercion, cache key, result set-up) cost more CPU than the database's
    own (about 0.5 of 1.3 ms per tiny instance, py-spy). The SQL text and each value's
    conversion (its type's bind processor) are still SQLAlchemy's, worked out once here.
    """

    def __init__(self, stmt: Any, dialect: Dialect, columns: Sequence[str] | None = None) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(columns) if columns else None)
        self.sql: str = compiled.string
        self._order: Sequence[str] | None = compiled.positiontup  # positional paramstyles
        self._processors = {  # the dialect's own conversion, as SQLAlchemy's execution uses
            name: proc for name, bind in compiled.binds.items()
            if (proc := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None}

    def params(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        procs = self._processors
        if procs:
            values = {k: procs[k](v) if k in procs else v for k, v in values.items()}
        return values if self._order is None else [values[k] for k in self._order]

    def execute(self, cursor: Any, values: Mapping[str, Any]) -> Any:
        cursor.execute(self.sql, self.params(values))
        return cursor

    def executemany(self, cursor: Any, rows: Iterable[Mapping[str, Any]]) -> None:
        cursor.executemany(self.sql, [self.params(r) for r in rows])

    def scalar(self, cursor: Any, values: Mapping[str, Any]) -> Any:
        row = self.execute(cursor, values).fetchone()
        return None if row is None else row[0]

    def rows(self, cursor: Any, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return list(self.execute(cursor, values).fetchall())


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
        # connect_timeout: a database host that does not answer fails a request in
        # seconds (one that is down refuses at once), never the OS's minutes.
        options: dict[str, Any] = {"connect_timeout": 5}
        if not fsync:
            options["options"] = "-c synchronous_commit=off"
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
        self._cursor_lock = threading.Lock()
        self._cursor_conn: Any = None  # see run_write
        self._cursor_used = 0.0

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A Core connection in one write transaction: committed on success."""
        with self._writer, self.engine.begin() as conn:
            yield conn

    def run_write(self, work: Callable[[Any], T]) -> T:
        """`work(cursor)` in one write transaction on a DBAPI cursor, for
        `CompiledStatement`s: committed when it returns, rolled back if it raises (the
        DBAPI's own exceptions propagate).

        These transactions run one at a time on one kept connection: the pool's check-out
        and reset cost as much as a small ingest transaction. A connection idle for a
        while is pinged first; after an error other than an integrity error it is
        dropped and the next transaction gets a new one. A kept connection the server
        closed meanwhile (a database restart) fails before anything was done: then the
        work runs once more on a new connection. A failure at COMMIT is never retried (it
        may have committed); `work` must not act outside the transaction.
        """
        for attempt in (1, 2):
            with self._writer, self._cursor_lock:
                conn, reused = self._cursor_connection()
                committing = False
                try:
                    cursor = conn.cursor()
                    if self.dialect == "sqlite":
                        cursor.execute("BEGIN IMMEDIATE")
                    try:
                        result = work(cursor)
                    except BaseException:
                        conn.rollback()
                        raise
                    committing = True
                    conn.commit()
                    return result
                except self.integrity_error:
                    raise
                except BaseException as exc:
                    retry = attempt == 1 and reused and not committing and \
                        self._is_disconnect(exc, conn)
                    self._drop_cursor_connection()
                    if retry:
                        continue
                    raise
                finally:
                    self._cursor_used = time.monotonic()
        raise AssertionError("unreachable")

    def _is_disconnect(self, exc: BaseException, conn: Any) -> bool:
        dialect = self.engine.dialect
        return isinstance(exc, dialect.loaded_dbapi.Error) and bool(
            dialect.is_disconnect(exc, getattr(conn, "dbapi_connection", conn), None))

    CURSOR_PING_AFTER = 10.0  # seconds idle

    def _cursor_connection(self) -> tuple[Any, bool]:
        """The kept connection (and True), or a new one (and False)."""
        conn = self._cursor_conn
        if conn is not None and self.dialect != "sqlite" and \
                time.monotonic() - self._cursor_used > self.CURSOR_PING_AFTER:
            try:
                conn.cursor().execute("SELECT 1")
                conn.rollback()
            except Exception:
                self._drop_cursor_connection()
                conn = None
        if conn is not None:
            return conn, True
        conn = self._cursor_conn = self.engine.raw_connection()
        return conn, False

    def _drop_cursor_connection(self) -> None:
        conn, self._cursor_conn = self._cursor_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()

    @property
    def integrity_error(self) -> type[Exception]:
        """The DBAPI's IntegrityError (what `run_write` raises on a unique key)."""
        return self.engine.dialect.loaded_dbapi.IntegrityError

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for queries: on SQLite it does not take the write lock."""
        with self.read_sessions() as s, s.begin():
            yield s

    def ping(self) -> bool:
        """Whether the database answers a query now (a health check: any failure is no)."""
        try:
            with self.read_session() as s:
                s.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    def dispose(self) -> None:
        with self._cursor_lock:
            if self._cursor_conn is not None:
                self._cursor_conn.close()
                self._cursor_conn = None
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


def batches(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """`items` in lists of at most `n`: what an `IN (...)` or a page takes at once."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch
