"""What the workers derive from stored objects, event by event from the outbox.

`instance.stored` -> the instance's DICOM JSON header (`instance_metadata`) and the facts
lead times and quality rules need (`instance_fact`);
`document.stored` -> media facts (`document_media`); both -> the statistics rollups
(`stats_hourly`; for instances also `stats_arrival_hourly` and the study's exam in
`study_fact`). Each result is written together with its event's `processed_at`: results
keyed by their subject are upserts, a study's exam is a min/max merge, and rollup counts are
added only for the events this transaction itself marked, so an event done twice (two
workers, a redelivery, a crash between work and commit) leaves one result and is counted
once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Connection

from storage.index.db import Index, dialect_insert
from storage.index.models import (
    DocumentMedia,
    InstanceFact,
    InstanceMetadata,
)
from storage.index.stats import (
    RollupKey,
    add_arrivals_to_rollup,
    add_to_rollup,
    document_dimensions,
    instance_dimensions,
    merge_study_facts,
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
from vna.quality import acquired_at, json_value, patient_name, procedure_step

log = logging.getLogger("vna.worker")


def _upsert(conn: Connection, model: Any, key: str, values: dict[str, Any]) -> None:
    stmt = dialect_insert(conn)(model).values(**values)
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
        rows = self._index_rows(events)
        results: list[tuple[Event, list[tuple[Any, str, dict[str, Any]]]]] = []
        for event in events:
            try:
                results.append((event, self._derive(event, rows.get(event.id))))
            except Exception as exc:
                log.warning("outbox event %d (%s %s) failed: %s", event.id, event.kind,
                            event.subject, type(exc).__name__)
                mark_failed(self.index, event, f"{type(exc).__name__}: {exc}")
        with self.index.begin() as conn:
            for _event, derived in results:
                for model, key, values in derived:
                    _upsert(conn, model, key, values)
            facts = {event.id: values for event, derived in results
                     for model, _key, values in derived if model is InstanceFact}
            merge_study_facts(conn, [(values, rows[i][0]) for i, values in facts.items()])
            marked = mark_processed(conn, (event.id for event, _ in results))
            add_to_rollup(conn, [rows[i][1] for i in marked if i in rows])
            add_arrivals_to_rollup(conn, [facts[i] for i in marked if i in facts])
        return len(results)

    def _index_rows(self, events: list[Event]) -> dict[int, tuple[Any, RollupKey]]:
        """The index row each event is about (none: deleted since, e.g. by retention) and
        its rollup key, in one query per kind for the whole batch."""
        instances = {e.subject: e.id for e in events if e.kind == INSTANCE_STORED}
        documents = {e.subject: e.id for e in events if e.kind == DOCUMENT_STORED}
        out: dict[int, tuple[Any, RollupKey]] = {}
        with self.index.read_session() as s:
            if instances:
                for row in s.execute(instance_dimensions(list(instances))):
                    out[instances[row.sop_instance_uid]] = (row, RollupKey.of_instance(row))
            if documents:
                for row in s.execute(document_dimensions(list(documents))):
                    out[documents[row.unique_id]] = (row, RollupKey.of_document(row))
        return out

    def _derive(self, event: Event, found: tuple[Any, RollupKey] | None,
                ) -> list[tuple[Any, str, dict[str, Any]]]:
        if event.kind not in (INSTANCE_STORED, DOCUMENT_STORED):
            raise ValueError(f"unknown outbox event kind {event.kind!r}")
        if found is None:  # deleted since (retention): nothing to derive
            return []
        row, now = found[0], datetime.now(UTC)
        if event.kind == INSTANCE_STORED:
            with self.store.local_copy(row.storage_key) as path:
                header = header_json(path)
            return [
                (InstanceMetadata, "sop_instance_uid",
                 {"sop_instance_uid": event.subject, "header": header, "created_at": now}),
                (InstanceFact, "sop_instance_uid",
                 instance_fact(event.subject, header, row.received_at, self.tz)),
            ]
        with self.store.local_copy(row.storage_key) as path, open(path, "rb") as f:
            facts = read_facts(f, row.mime_type)
        return [(DocumentMedia, "unique_id", {
            "unique_id": event.subject, "duration_seconds": facts.duration_seconds,
            "pages": facts.pages, "width": facts.width, "height": facts.height,
            "created_at": now})]


def instance_fact(sop_instance_uid: str, header: dict[str, Any], received_at: datetime,
                  tz: ZoneInfo) -> dict[str, Any]:
    """The `instance_fact` row of an instance, from its DICOM JSON header."""
    start, end = procedure_step(header, tz)
    acquired = acquired_at(header, tz)
    return {"sop_instance_uid": sop_instance_uid,
            "study_instance_uid": json_value(header, "0020000D") or "",
            "modality": json_value(header, "00080060"),
            "patient_id": json_value(header, "00100020") or "",
            "patient_name": patient_name(header), "received_at": received_at,
            "acquired_at": acquired, "pps_start": start, "pps_end": end,
            "arrival_seconds": (None if acquired is None
                                else (received_at - acquired).total_seconds())}
