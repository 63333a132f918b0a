"""What a failure underneath the archive means to its edges.

The index (SQLite, PostgreSQL) and the object store (files, S3) fail in their own words;
the edges answer in two: the storage is **full** (HTTP 507, C-STORE 0xA700) or
**unavailable** (HTTP 503, C-STORE 0xA700), and either way the client should try again
later. Nothing here retries: a request during an outage is answered at once, and the next
one finds the server back (the engine pings pooled connections before use).
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_PG_DISK_FULL = "53100"  # SQLSTATE disk_full
_S3_FULL_CODES = frozenset({"XMinioStorageFull", "StorageFull", "InsufficientStorage"})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it wraps (SQLAlchemy's `.orig`) and what caused it."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nxt in (getattr(e, "orig", None), e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def is_storage_full(exc: BaseException) -> bool:
    """Whether `exc` says a disk, a database or a bucket has no room left."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if isinstance(e, sqlite3.Error) and \
                getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        if getattr(e, "sqlstate", None) == _PG_DISK_FULL:
            return True
        if type(e).__name__ == "S3Error" and getattr(e, "code", None) in _S3_FULL_CODES:
            return True
    return False


def failure_of(exc: BaseException) -> str | None:
    """What failed, in a few words, when `exc` comes from a server or disk under the
    archive ("the index database is unavailable"); None for anything else, which is a
    bug and deserves its traceback."""
    from sqlalchemy.exc import DBAPIError

    full = is_storage_full(exc)
    for e in _chain(exc):
        if isinstance(e, DBAPIError | sqlite3.Error) or type(e).__module__.startswith(
                "psycopg"):
            return "the index database is " + ("full" if full else "unavailable")
        if type(e).__name__ == "S3Error" or type(e).__module__.startswith("urllib3"):
            return "object storage is " + ("full" if full else "unavailable")
    for e in _chain(exc):
        if isinstance(e, OSError):
            return "the disk is full" if full else f"a disk or network error ({e.strerror})"
    return None


class FailureLog:
    """Failures of what is under the archive, logged as an operator wants to read them
    during an outage: the first at once, then at most one line every `every` seconds per
    failure, saying how many there were in between (not one traceback per request)."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self._log = logger
        self._every = every
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def failed(self, context: str, exc: BaseException) -> None:
        what = failure_of(exc)
        if what is None:
            self._log.error("%s failed", context, exc_info=exc)
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(what, -self._every) < self._every:
                self._since[what] = self._since.get(what, 0) + 1
                return
            self._last[what] = now
            more = self._since.pop(what, 0)
        self._log.error("%s failed: %s (%s)%s", context, what, type(exc).__name__,
                        f"; {more} more failed so since the last report" if more else "")
