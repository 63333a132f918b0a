"""The index rows of archived SOP Instances: the ingest path's statements, compiled once.

Every C-STORE and every imported file runs the same statements: find (or insert) its
patient, study and series, insert the instance, and record its outbox event. They are
built here with SQLAlchemy Core, compiled once per dialect and run on the DBAPI cursor
of one write transaction (`Index.begin_cursor`): see `CompiledStatement` for why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Dialect, Table, bindparam, insert, select

from storage.index.db import CompiledStatement, dialect_insert
from storage.index.models import Instance, OutboxEvent, Patient, Series, Study
from vna.dicom.attributes import InstanceHeader, Level, columns_of

_P, _ST, _SE, _I, _OUTBOX = (cast(Table, m.__table__) for m in (
    Patient, Study, Series, Instance, OutboxEvent))

# What the archive adds to the header's own columns, per table.
_STUDY_EXTRA = ("patient_fk", "created_at")
_SERIES_EXTRA = ("study_fk",)
_INSTANCE_EXTRA = ("series_fk", "transfer_syntax_uid", "source_aet", "received_at", "size",
                   "sha256", "dataset_offset", "storage_key")


@dataclass(frozen=True)
class InstanceRow:
    """One SOP Instance as the index records it: its header and where its object is."""

    header: InstanceHeader
    transfer_syntax_uid: str
    size: int
    sha256: str
    dataset_offset: int
    storage_key: str
    source_aet: str | None


class _Fit:
    """Cuts strings to their column's length: a non-conformant long value must not fail
    an ingest (the object keeps it whole)."""

    def __init__(self, table: Table, columns: Iterable[str]) -> None:
        self.limits = {c: n for c in columns
                       if (n := getattr(table.c[c].type, "length", None))}

    def __call__(self, values: dict[str, Any]) -> dict[str, Any]:
        for c, n in self.limits.items():
            v = values.get(c)
            if isinstance(v, str) and len(v) > n:
                values[c] = v[:n]
        return values


class _Parent:
    """Find-or-insert of the patient, study or series row an instance belongs to."""

    def __init__(self, table: Table, unique: Sequence[str], columns: Sequence[str],
                 dialect: Dialect) -> None:
        self.table = table
        self.unique = tuple(unique)
        self.columns = tuple(columns)
        self.fit = _Fit(table, columns)
        self.find = CompiledStatement(
            select(table.c.id).where(*(table.c[c] == bindparam(c) for c in unique)), dialect)
        self.insert = CompiledStatement(
            dialect_insert(dialect)(table).on_conflict_do_nothing(index_elements=list(unique)),
            dialect, columns)

    def id(self, cursor: Any, values: dict[str, Any], cache: Mapping[tuple[Any, ...], int],
           created: dict[tuple[Any, ...], int]) -> int:
        values = self.fit(values)
        key = (self.table.name, *(values[c] for c in self.unique))
        found = cache.get(key) or created.get(key)
        if found is not None:
            return found
        where = {c: values[c] for c in self.unique}
        row_id = self.find.scalar(cursor, where)
        if row_id is None:
            self.insert.execute(cursor, values)
            row_id = self.find.scalar(cursor, where)
        created[key] = int(row_id)
        return int(row_id)


class IndexWriter:
    """Writes instances' index rows and outbox events in the caller's transaction.

    It remembers the ids of the patients, studies and series committed before (most
    instances belong to a known series); `forget` drops them, e.g. when a parent may
    have been deleted meanwhile (the caller sees an integrity error and retries).
    """

    CACHE_LIMIT = 50_000

    def __init__(self, dialect: Dialect, outbox_kind: str) -> None:
        patient = columns_of(Level.PATIENT)
        study = (*columns_of(Level.STUDY), *_STUDY_EXTRA)
        series = (*columns_of(Level.SERIES), *_SERIES_EXTRA)
        instance = (*columns_of(Level.IMAGE), *_INSTANCE_EXTRA)
        self._patient = _Parent(_P, ("patient_id", "issuer_of_patient_id"), patient, dialect)
        self._study = _Parent(_ST, ("study_instance_uid",), study, dialect)
        self._series = _Parent(_SE, ("series_instance_uid",), series, dialect)
        self._fit_instance = _Fit(_I, instance)
        self._insert_instance = CompiledStatement(insert(_I), dialect, instance)
        self._insert_event = CompiledStatement(insert(_OUTBOX), dialect,
                                               ("created_at", "kind", "subject"))
        self._kind = outbox_kind
        self._parents: dict[tuple[Any, ...], int] = {}

    def write(self, cursor: Any, rows: Sequence[InstanceRow],
              received_at: datetime) -> dict[tuple[Any, ...], int]:
        """Insert the rows (and their new parents) and their outbox events; returns the
        parents this transaction created, for `committed` once it is."""
        created: dict[tuple[Any, ...], int] = {}
        for row in rows:
            h = row.header
            patient_fk = self._patient.id(cursor, dict(h.patient), self._parents, created)
            study_fk = self._study.id(cursor, {**h.study, "patient_fk": patient_fk,
                                               "created_at": received_at},
                                      self._parents, created)
            series_fk = self._series.id(cursor, {**h.series, "study_fk": study_fk},
                                        self._parents, created)
            self._insert_instance.execute(cursor, self._fit_instance({
                **h.instance, "series_fk": series_fk,
                "transfer_syntax_uid": row.transfer_syntax_uid, "source_aet": row.source_aet,
                "received_at": received_at, "size": row.size, "sha256": row.sha256,
                "dataset_offset": row.dataset_offset, "storage_key": row.storage_key}))
        events = [{"created_at": received_at, "kind": self._kind,
                   "subject": row.header.sop_instance_uid} for row in rows]
        if len(events) == 1:
            self._insert_event.execute(cursor, events[0])
        else:
            self._insert_event.executemany(cursor, events)
        return created

    def committed(self, created: dict[tuple[Any, ...], int]) -> None:
        if len(self._parents) > self.CACHE_LIMIT:
            self._parents.clear()
        self._parents.update(created)

    def forget(self) -> None:
        self._parents.clear()
