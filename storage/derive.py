"""What the workers derive from stored objects, event by event from the outbox.

`instance.stored` -> the instance's DICOM JSON header (`instance_metadata`) and the facts
lead times and quality rules need (`instance_fact`);
`document.stored` -> media facts (`document_media`); both -> the statistics rollup
(`stats_hourly`). Each result is written together with its event's `processed_at`: results
keyed by their subject are upserts, and rollup counts are added only for the events this
transaction itself marked, so an event done twice (two workers, a redelivery, a crash
between work and commit) leaves one result and is counted once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from storage.index.db import Index
from storage.index.models import (
    Document,
    DocumentMedia,
    Instance,
    InstanceFact,
    InstanceMetadata,
)
from storage.index.stats import (
    RollupKey,
    add_to_rollup,
    document_dimensions,
    instance_dimensions,
)
from storage.objectstore import ObjectStore
from storage.outbox import (
    DOCUMENT_STORED,
    INSTANCE_STORED,
    Event,
    mark_failed,
    mark_processed,
    pending,
)
from vna.dicom.metadata import header_json
from vna.documents.media import read_facts
from vna.quality import acquired_at, patient_name, procedure_step

log = logging.getLogger("vna.worker")


def _upsert(conn: Connection, model: Any, key: str, values: dict[str, Any]) -> None:
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(model).values(**values)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[key], set_={k: stmt.excluded[k] for k in values if k != key}))


class Deriver:
    def __init__(self, index: Index, store: ObjectStore, tz: ZoneInfo | None = None) -> None:
        self.index = index
        self.store = store
        self.tz = tz or ZoneInfo("UTC")  # the region's: where modality times are local

    def drain(self, *, batch: int = 200, max_events: int = 10_000) -> int:
        """Process pending events until none are left (or `max_events`); how many."""
        done = 0
        while done < max_events:
            events = pending(self.index, batch)
            if not events:
                break
            done += self.process(events)
            if len(events) < batch:
                break
        return done

    def process(self, events: list[Event]) -> int:
        results: list[tuple[Event, list[tuple[Any, str, dict[str, Any]]]]] = []
        for event in events:
            try:
                results.append(self._derive(event))
            except Exception as exc:
                log.warning("outbox event %d (%s %s) failed: %s", event.id, event.kind,
                            event.subject, type(exc).__name__)
                mark_failed(self.index, event, f"{type(exc).__name__}: {exc}")
        counts = self._rollup_keys([r[0] for r in results])
        with self.index.begin() as conn:
            for _event, rows in results:
                for model, key, values in rows:
                    _upsert(conn, model, key, values)
            marked = mark_processed(conn, (r[0].id for r in results))
            add_to_rollup(conn, [counts[i] for i in marked if i in counts])
        return len(results)

    def _rollup_keys(self, events: list[Event]) -> dict[int, RollupKey]:
        """Each event's hour and dimensions, read from the index rows it is about."""
        by_subject = {e.subject: e.id for e in events if e.kind == INSTANCE_STORED}
        docs = {e.subject: e.id for e in events if e.kind == DOCUMENT_STORED}
        out: dict[int, RollupKey] = {}
        with self.index.read_session() as s:
            if by_subject:
                for row in s.execute(instance_dimensions(list(by_subject))):
                    out[by_subject[row.sop_instance_uid]] = RollupKey.of_instance(row)
            if docs:
                for row in s.execute(document_dimensions(list(docs))):
                    out[docs[row.unique_id]] = RollupKey.of_document(row)
        return out

    def _derive(self, event: Event) -> tuple[Event, list[tuple[Any, str, dict[str, Any]]]]:
        now = datetime.now(UTC)
        if event.kind == INSTANCE_STORED:
            with self.index.read_session() as s:
                row = s.execute(select(Instance.storage_key, Instance.received_at).where(
                    Instance.sop_instance_uid == event.subject)).first()
            if row is None:  # deleted since (retention): nothing to derive
                return event, []
            with self.store.local_copy(row.storage_key) as path:
                header = header_json(path)
            return event, [
                (InstanceMetadata, "sop_instance_uid",
                 {"sop_instance_uid": event.subject, "header": header, "created_at": now}),
                (InstanceFact, "sop_instance_uid",
                 instance_fact(event.subject, header, row.received_at, self.tz)),
            ]
        if event.kind == DOCUMENT_STORED:
            with self.index.read_session() as s:
                doc = s.execute(select(Document.storage_key, Document.mime_type).where(
                    Document.unique_id == event.subject)).first()
            if doc is None:
                return event, []
            with self.store.local_copy(doc.storage_key) as path, open(path, "rb") as f:
                facts = read_facts(f, doc.mime_type)
            return event, [(DocumentMedia, "unique_id", {
                "unique_id": event.subject, "duration_seconds": facts.duration_seconds,
                "pages": facts.pages, "width": facts.width, "height": facts.height,
                "created_at": now})]
        raise ValueError(f"unknown outbox event kind {event.kind!r}")


def instance_fact(sop_instance_uid: str, header: dict[str, Any], received_at: datetime,
                  tz: ZoneInfo) -> dict[str, Any]:
    """The `instance_fact` row of an instance, from its DICOM JSON header."""
    def value(tag: str) -> str | None:
        v = (header.get(tag) or {}).get("Value") or [None]
        return str(v[0]) if v[0] is not None else None

    def utc(t: datetime | None) -> datetime | None:
        # The index keeps UTC (SQLite would keep only the wall time of another zone).
        if t is None:
            return None
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)

    start, end = procedure_step(header, tz)
    return {"sop_instance_uid": sop_instance_uid,
            "study_instance_uid": value("0020000D") or "",
            "modality": value("00080060"), "patient_id": value("00100020") or "",
            "patient_name": patient_name(header), "received_at": utc(received_at),
            "acquired_at": utc(acquired_at(header, tz)), "pps_start": utc(start),
            "pps_end": utc(end)}
