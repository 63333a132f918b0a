"""Group commit: what concurrent threads want committed goes into one transaction.

Each C-STORE is acknowledged only after its index transaction is committed (fsynced),
and one SQLite or PostgreSQL commit costs about as much as everything else done for a
small instance. When several associations of one SCP process store at the same time,
the first thread to arrive commits for everyone waiting; those that arrive meanwhile
are committed together by the next one. One thread alone commits at once, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Waiting(Generic[T, R]):
    __slots__ = ("item", "result", "error", "done")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit(Generic[T, R]):
    """Runs `commit(items) -> results` (one result per item, in order) for batches of the
    items submitted by concurrent threads; `submit` returns its item's result or raises
    the batch's error."""

    def __init__(self, commit: Callable[[list[T]], Sequence[R]]) -> None:
        self._commit = commit
        self._cond = threading.Condition()
        self._queue: list[_Waiting[T, R]] = []
        self._committing = False

    def submit(self, item: T) -> R:
        me: _Waiting[T, R] = _Waiting(item)
        with self._cond:
            self._queue.append(me)
            while self._committing and not me.done:
                self._cond.wait()
            leader = not me.done  # nobody is committing: commit the queue, this item included
            if leader:
                batch, self._queue = self._queue, []
                self._committing = True
        if leader:
            self._run(batch)
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    def _run(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            results = self._commit([w.item for w in batch])
            for w, r in zip(batch, results, strict=True):
                w.result = r
        except BaseException as exc:  # every item of the batch fails with it
            for w in batch:
                w.error = exc
        with self._cond:
            for w in batch:
                w.done = True
            self._committing = False
            self._cond.notify_all()
