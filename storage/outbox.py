"""The transactional outbox: follow-up work recorded with what it is about.

Ingest (C-STORE, `vna import`, document uploads) adds an event in the transaction that
writes the index entry; workers take pending events, do the work, and write its results
and the event's `processed_at` in one transaction. The broker only says "look now": a
broker or worker outage delays the work but loses none, and results are keyed by their
subject, so doing an event twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from storage.index.db import Index
from storage.index.models import OutboxEvent

INSTANCE_STORED = "instance.stored"
DOCUMENT_STORED = "document.stored"
MAX_ATTEMPTS = 5  # then the event stays for an operator to look at (last_error)

@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    subject: str
    attempts: int


def add_events(conn: Connection, kind: str, subjects: Iterable[str],
               now: datetime | None = None) -> None:
    """Record work in the caller's transaction."""
    at = now or datetime.now(UTC)
    rows = [{"created_at": at, "kind": kind, "subject": s} for s in subjects]
    if rows:
        conn.execute(insert(OutboxEvent), rows)


def pending(index: Index, limit: int = 200) -> list[Event]:
    with index.read_session() as s:
        rows = s.execute(select(OutboxEvent.id, OutboxEvent.kind, OutboxEvent.subject,
                                OutboxEvent.attempts)
                         .where(OutboxEvent.processed_at.is_(None),
                                OutboxEvent.attempts < MAX_ATTEMPTS)
                         .order_by(OutboxEvent.id).limit(limit)).all()
    return [Event(*r) for r in rows]


def mark_processed(conn: Connection, ids: Iterable[int]) -> set[int]:
    """Mark events processed; the ids this transaction marked (not another worker before
    it): only their effects may be counted."""
    ids = list(ids)
    if not ids:
        return set()
    rows = conn.execute(update(OutboxEvent).where(OutboxEvent.id.in_(ids),
                                                  OutboxEvent.processed_at.is_(None))
                        .values(processed_at=datetime.now(UTC)).returning(OutboxEvent.id))
    return {int(r[0]) for r in rows}


def mark_failed(index: Index, event: Event, error: str) -> None:
    with index.begin() as conn:
        conn.execute(update(OutboxEvent).where(OutboxEvent.id == event.id).values(
            attempts=OutboxEvent.attempts + 1, last_error=error[:2000]))


def lag(index: Index) -> tuple[int, float]:
    """(pending events, age in seconds of the oldest one): the workers' backlog."""
    with index.read_session() as s:
        count, oldest = s.execute(select(func.count(), func.min(OutboxEvent.created_at))
                                  .where(OutboxEvent.processed_at.is_(None))).one()
    if not oldest:
        return 0, 0.0
    return int(count), max(0.0, (datetime.now(UTC) - oldest).total_seconds())


def given_up(index: Index) -> int:
    """Events no worker will take again (MAX_ATTEMPTS failed): an operator must look."""
    with index.read_session() as s:
        return int(s.scalar(select(func.count()).where(
            OutboxEvent.processed_at.is_(None), OutboxEvent.attempts >= MAX_ATTEMPTS)) or 0)
