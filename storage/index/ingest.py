"""The index rows of archived SOP Instances: the ingest path's statements, compiled once.

Every C-STORE and every imported file runs the same statements: find (or insert) its
patient, study and series, insert the instance, and record its outbox event. They are
built here with SQLAlchemy Core, compiled once per dialect and run on the DBAPI cursor
of one write transaction (`Index.run_write`): see `CompiledStatement` for why.

Each instance goes under the study row of the patient its own header names
(`vna.dicom.identity`); what contradicts the archive is found here, inside the transaction
that would write it, so that no race between associations or nodes can slip past it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Dialect, Table, bindparam, func, insert, select

from storage.index.db import CompiledStatement, dialect_insert
from storage.index.models import (
    IngestConflict,
    Instance,
    OutboxEvent,
    Patient,
    PatientAlias,
    Series,
    Study,
)
from vna.dicom.attributes import InstanceHeader, Level, columns_of
from vna.dicom.identity import ConflictPolicy, IdentityConflict, PatientIdentity, first_match

_P, _ST, _SE, _I, _OUTBOX, _CONFLICT, _ALIAS = (cast(Table, m.__table__) for m in (
    Patient, Study, Series, Instance, OutboxEvent, IngestConflict, PatientAlias))

# What the archive adds to the header's own columns, per table.
_STUDY_EXTRA = ("patient_fk", "created_at")
_SERIES_EXTRA = ("study_fk",)
_INSTANCE_EXTRA = ("series_fk", "transfer_syntax_uid", "source_aet", "received_at", "size",
                   "sha256", "dataset_offset", "storage_key")
_CONFLICT_COLUMNS = tuple(c.name for c in _CONFLICT.c if c.name != "id")


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


@dataclass
class Written:
    """What `IndexWriter.write` did: the parents it created (for `committed`) and the
    conflicts it found, by position in the rows; the rows in `rejected` were not written."""

    created: dict[tuple[Any, ...], int] = field(default_factory=dict)
    conflicts: dict[int, IdentityConflict] = field(default_factory=dict)
    rejected: set[int] = field(default_factory=set)


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


def _lock_key(kind: str, uid: str) -> int:
    """A 64-bit advisory lock key for a UID: the same in every process and node."""
    return int.from_bytes(hashlib.sha256(f"{kind}:{uid}".encode()).digest()[:8], "big",
                          signed=True)


class IndexWriter:
    """Writes instances' index rows and outbox events in the caller's transaction.

    A study archived for another patient is a conflict: refused, or under
    `ConflictPolicy.ACCEPT` given a study row of the patient the instance names. A series
    archived in another study is a conflict the same way. New study and series rows are
    made under a lock on their UID (PostgreSQL: an advisory lock held to the commit;
    SQLite has one writer at a time anyway): two nodes receiving one new study for two
    patients at the same moment cannot both create it.

    It remembers the ids of the patients, studies and series committed before (most
    instances belong to a known series), keyed by the patient they belong to; `forget`
    drops them, e.g. when a parent may have been deleted meanwhile (the caller sees an
    integrity error and retries).
    """

    CACHE_LIMIT = 50_000

    def __init__(self, dialect: Dialect, outbox_kind: str,
                 policy: ConflictPolicy = ConflictPolicy.REJECT) -> None:
        self.policy = policy
        insert_new = dialect_insert(dialect)
        patient = columns_of(Level.PATIENT)
        study = (*columns_of(Level.STUDY), *_STUDY_EXTRA)
        series = (*columns_of(Level.SERIES), *_SERIES_EXTRA)
        instance = (*columns_of(Level.IMAGE), *_INSTANCE_EXTRA)
        identity = ("patient_id", "issuer_of_patient_id")
        self._fit_patient = _Fit(_P, patient)
        self._find_patient = CompiledStatement(
            select(_P.c.id).where(*(_P.c[c] == bindparam(c) for c in identity)), dialect)
        self._insert_patient = CompiledStatement(
            insert_new(_P).on_conflict_do_nothing(index_elements=list(identity)),
            dialect, patient)
        self._aliases = CompiledStatement(  # an identity merged (A40) or changed (A47)
            select(_ALIAS.c.issuer_of_patient_id, _P.c.id, _P.c.patient_id,
                   _P.c.issuer_of_patient_id)
            .join(_P, _P.c.id == _ALIAS.c.survivor_fk)
            .where(_ALIAS.c.patient_id == bindparam("patient_id")), dialect)
        self._fit_study = _Fit(_ST, study)
        self._studies = CompiledStatement(
            select(_ST.c.id, _P.c.patient_id, _P.c.issuer_of_patient_id)
            .join(_P, _P.c.id == _ST.c.patient_fk)
            .where(_ST.c.study_instance_uid == bindparam("study_instance_uid"))
            .order_by(_ST.c.id), dialect)
        self._insert_study = CompiledStatement(insert_new(_ST).on_conflict_do_nothing(
            index_elements=["study_instance_uid", "patient_fk"]), dialect, study)
        self._fit_series = _Fit(_SE, series)
        self._series = CompiledStatement(
            select(_SE.c.id, _SE.c.study_fk, _ST.c.study_instance_uid)
            .join(_ST, _ST.c.id == _SE.c.study_fk)
            .where(_SE.c.series_instance_uid == bindparam("series_instance_uid"))
            .order_by(_SE.c.id), dialect)
        self._insert_series = CompiledStatement(insert_new(_SE).on_conflict_do_nothing(
            index_elements=["series_instance_uid", "study_fk"]), dialect, series)
        self._lock = CompiledStatement(select(func.pg_advisory_xact_lock(
            bindparam("key", type_=BigInteger))), dialect) \
            if dialect.name == "postgresql" else None
        self._fit_instance = _Fit(_I, instance)
        self._insert_instance = CompiledStatement(insert(_I), dialect, instance)
        self._insert_event = CompiledStatement(insert(_OUTBOX), dialect,
                                               ("created_at", "kind", "subject"))
        self._fit_conflict = _Fit(_CONFLICT, _CONFLICT_COLUMNS)
        self._insert_conflict = CompiledStatement(insert(_CONFLICT), dialect,
                                                  _CONFLICT_COLUMNS)
        self._kind = outbox_kind
        self._parents: dict[tuple[Any, ...], int] = {}

    # -- the transaction's work ---------------------------------------------------------------

    def write(self, cursor: Any, rows: Sequence[InstanceRow], received_at: datetime) -> Written:
        """Insert the rows (and their new parents) and their outbox events, and record the
        conflicts found; the rows of refused conflicts are left out."""
        done = Written()
        events = []
        for i, row in enumerate(rows):
            series_fk = self._series_id(cursor, i, row.header, received_at, done)
            if series_fk is None:
                continue
            h = row.header
            self._insert_instance.execute(cursor, self._fit_instance({
                **h.instance, "series_fk": series_fk,
                "transfer_syntax_uid": row.transfer_syntax_uid, "source_aet": row.source_aet,
                "received_at": received_at, "size": row.size, "sha256": row.sha256,
                "dataset_offset": row.dataset_offset, "storage_key": row.storage_key}))
            events.append({"created_at": received_at, "kind": self._kind,
                           "subject": h.sop_instance_uid})
        if len(events) == 1:
            self._insert_event.execute(cursor, events[0])
        elif events:
            self._insert_event.executemany(cursor, events)
        for i, conflict in done.conflicts.items():
            self.record_conflict(cursor, conflict, rejected=i in done.rejected,
                                 source_aet=rows[i].source_aet, at=received_at)
        return done

    def record_conflict(self, cursor: Any, conflict: IdentityConflict, *, rejected: bool,
                        source_aet: str | None, at: datetime) -> None:
        """Keep a conflict for the data-quality statistics, in the caller's transaction."""
        archived = conflict.archived
        self._insert_conflict.execute(cursor, self._fit_conflict({
            "at": at, "rule": conflict.rule, "action": "rejected" if rejected else "accepted",
            "sop_instance_uid": conflict.sop_instance_uid,
            "study_instance_uid": conflict.study_instance_uid,
            "series_instance_uid": conflict.series_instance_uid,
            "sent_patient_id": conflict.sent.patient_id, "sent_issuer": conflict.sent.issuer,
            "archived_patient_id": archived.patient_id if archived else None,
            "archived_issuer": archived.issuer if archived else None,
            "source_aet": source_aet, "reason": conflict.reason}))

    # -- where an instance goes -----------------------------------------------------------------

    def _series_id(self, cursor: Any, i: int, h: InstanceHeader, received_at: datetime,
                   done: Written) -> int | None:
        """The series row instance `i` goes under; None if a conflict keeps it out. Both
        conflicts are decided before anything is written for the instance."""
        sent = PatientIdentity(h.patient["patient_id"], h.patient["issuer_of_patient_id"])
        study_uid, series_uid = h.study_instance_uid, h.series_instance_uid
        key = ("series", series_uid, study_uid, sent.patient_id, sent.issuer)
        found = self._parents.get(key) or done.created.get(key)
        if found is not None:  # the common case: a series seen before, nothing to look up
            return found
        params = {"series_instance_uid": series_uid}
        candidates = self._series.rows(cursor, params)
        if not any(r[2] == study_uid for r in candidates):  # new here: decide under the lock
            self._lock_uid(cursor, "series", series_uid)
            candidates = self._series.rows(cursor, params)
            if candidates and not any(r[2] == study_uid for r in candidates):
                done.conflicts[i] = IdentityConflict.series_of_another_study(
                    h.sop_instance_uid, study_uid, series_uid, sent, candidates[0][2])
                if self.policy == ConflictPolicy.REJECT:
                    done.rejected.add(i)
                    return None
        study_fk = self._study_id(cursor, i, h, sent, received_at, done)
        if study_fk is None:
            return None
        series_fk = next((r[0] for r in candidates if r[1] == study_fk), None)
        if series_fk is None:
            self._lock_uid(cursor, "series", series_uid)
            self._insert_series.execute(cursor, self._fit_series(
                {**h.series, "study_fk": study_fk}))
            series_fk = next(r[0] for r in self._series.rows(cursor, params)
                             if r[1] == study_fk)
        done.created[key] = int(series_fk)
        return int(series_fk)

    def _study_id(self, cursor: Any, i: int, h: InstanceHeader, sent: PatientIdentity,
                  received_at: datetime, done: Written) -> int | None:
        """The study row of the patient sent; None if the study is another patient's and
        conflicts are refused."""
        study_uid = h.study_instance_uid
        key = ("study", study_uid, sent.patient_id, sent.issuer)
        found = self._parents.get(key) or done.created.get(key)
        if found is not None:
            return found
        params = {"study_instance_uid": study_uid}
        candidates = self._study_candidates(cursor, params)
        study_fk = first_match(candidates, sent)
        if study_fk is None:  # a new study, or another patient's: decide under the lock
            self._lock_uid(cursor, "study", study_uid)
            candidates = self._study_candidates(cursor, params)
            study_fk = first_match(candidates, sent)
        survivor = None
        if study_fk is None:  # the patient sent may live on under another identity
            survivor = self._survivor(cursor, sent)
            if survivor is not None:
                study_fk = first_match(candidates, survivor[1])
        if study_fk is None:
            if candidates:
                done.conflicts[i] = IdentityConflict.study_of_another_patient(
                    h.sop_instance_uid, study_uid, h.series_instance_uid, sent,
                    candidates[0][1])
                if self.policy == ConflictPolicy.REJECT:
                    done.rejected.add(i)
                    return None
            patient_fk = survivor[0] if survivor else self._patient_id(cursor, h, done)
            self._insert_study.execute(cursor, self._fit_study(
                {**h.study, "patient_fk": patient_fk, "created_at": received_at}))
            study_fk = first_match(self._study_candidates(cursor, params),
                                   survivor[1] if survivor else sent)
            assert study_fk is not None
        done.created[key] = study_fk
        return study_fk

    def _study_candidates(self, cursor: Any, params: dict[str, Any],
                          ) -> list[tuple[int, PatientIdentity]]:
        return [(int(r[0]), PatientIdentity(r[1], r[2] or ""))
                for r in self._studies.rows(cursor, params)]

    def _survivor(self, cursor: Any, sent: PatientIdentity,
                  ) -> tuple[int, PatientIdentity] | None:
        """The patient row (and its identity) an identity was merged into or renamed to
        (HL7 A40/A47, `patient_alias`): an instance naming the old identity is filed
        there. Asked once per study new under the identity sent, never per instance."""
        for alias_issuer, row_id, pid, issuer in self._aliases.rows(
                cursor, {"patient_id": sent.patient_id}):
            if sent.matches(PatientIdentity(sent.patient_id, alias_issuer or "")):
                return int(row_id), PatientIdentity(pid, issuer or "")
        return None

    def _patient_id(self, cursor: Any, h: InstanceHeader, done: Written) -> int:
        values = self._fit_patient(dict(h.patient))
        where = {"patient_id": values["patient_id"],
                 "issuer_of_patient_id": values["issuer_of_patient_id"]}
        key = ("patient", *where.values())
        found = self._parents.get(key) or done.created.get(key)
        if found is not None:
            return found
        row_id = self._find_patient.scalar(cursor, where)
        if row_id is None:
            self._insert_patient.execute(cursor, values)
            row_id = self._find_patient.scalar(cursor, where)
        done.created[key] = int(row_id)
        return int(row_id)

    def _lock_uid(self, cursor: Any, kind: str, uid: str) -> None:
        if self._lock is not None:
            self._lock.execute(cursor, {"key": _lock_key(kind, uid)}).fetchall()

    # -- the cache of committed parents ---------------------------------------------------------

    def committed(self, written: Written) -> None:
        if len(self._parents) > self.CACHE_LIMIT:
            self._parents.clear()
        self._parents.update(written.created)

    def forget(self) -> None:
        self._parents.clear()
