"""What a failure underneath the archive means to its edges.

The index (SQLite, PostgreSQL) and the object store (files, S3) fail in their own words;
the edges answer in two: the storage is **full** (HTTP 507, C-STORE 0xA700) or
**unavailable** (HTTP 503, C-STORE 0xA700), and either way the client should try again
later. Nothing here retries: a request during an outage is answered at once, and the next
one finds the server back (the engine pings pooled connections before use).
"""

from __future__ import annotations

import errno
import sqlite3
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
