"""Retention runs: find what the rules let go, and delete it with an audit record.

Order of a deletion, so that a crash never leaves an index entry without its bytes: the
index rows go first, together with the audit record, in one transaction; then the object.
A crash between the two leaves an orphan object (harmless, invisible) rather than a
dangling entry. Patients, studies and series left without instances go with the last one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, insert, select
from sqlalchemy.engine import Connection

from storage.index.db import Index
from storage.index.models import (
    AuditEvent,
    Document,
    DocumentMedia,
    Instance,
    InstanceFact,
    InstanceMetadata,
    Patient,
    Series,
    Study,
    StudyFact,
)
from storage.objectstore import ObjectStore
from vna.retention import RetentionRule

log = logging.getLogger("vna.retention")


@dataclass(frozen=True)
class Candidate:
    rule: str
    target: str  # documents | instances
    subject: str  # uniqueId | SOP Instance UID
    storage_key: str
    patient_id: str
    when: datetime


def plan(index: Index, rules: list[RetentionRule], now: datetime | None = None,
         ) -> list[Candidate]:
    """What the rules select today, each subject once (the first rule that selects it)."""
    now = now or datetime.now(UTC)
    seen: set[tuple[str, str]] = set()
    out: list[Candidate] = []
    with index.read_session() as s:
        for rule in rules:
            cutoff = now - timedelta(days=rule.keep_days)
            if rule.target == "documents":
                stmt = select(Document.unique_id, Document.storage_key, Document.patient_id,
                              Document.creation_time).where(Document.creation_time < cutoff)
                if rule.class_codes:
                    stmt = stmt.where(Document.class_code.in_(rule.class_codes))
                if rule.departments:
                    stmt = stmt.where(Document.practice_setting_code.in_(rule.departments))
            else:
                stmt = (select(Instance.sop_instance_uid, Instance.storage_key,
                               Patient.patient_id, Instance.received_at)
                        .join(Series, Instance.series_fk == Series.id)
                        .join(Study, Series.study_fk == Study.id)
                        .join(Patient, Study.patient_fk == Patient.id)
                        .where(Instance.received_at < cutoff))
                if rule.modalities:
                    stmt = stmt.where(Series.modality.in_(rule.modalities))
                if rule.dicom_departments:
                    stmt = stmt.where(
                        Series.institutional_department_name.in_(rule.dicom_departments))
            for subject, key, patient, when in s.execute(stmt):
                if (rule.target, subject) in seen:
                    continue
                seen.add((rule.target, subject))
                out.append(Candidate(rule.name, rule.target, subject, key, patient, when))
    return out


def apply(index: Index, store: ObjectStore, candidates: list[Candidate]) -> int:
    """Delete the candidates (index rows and audit record first, then the object)."""
    done = 0
    for c in candidates:
        with index.begin() as conn:
            if c.target == "documents":
                gone = conn.execute(delete(Document).where(Document.unique_id == c.subject))
                conn.execute(delete(DocumentMedia).where(DocumentMedia.unique_id == c.subject))
            else:
                series_fk = conn.execute(select(Instance.series_fk).where(
                    Instance.sop_instance_uid == c.subject)).scalar()
                gone = conn.execute(delete(Instance).where(
                    Instance.sop_instance_uid == c.subject))
                for model in (InstanceMetadata, InstanceFact):
                    conn.execute(delete(model).where(model.sop_instance_uid == c.subject))
                if series_fk is not None:
                    _drop_empty_parents(conn, series_fk)
            if gone.rowcount != 1:
                continue  # deleted meanwhile
            conn.execute(insert(AuditEvent).values(
                at=datetime.now(UTC), token_id="retention", role="system",
                action="retention.delete", method="-", route=f"rule: {c.rule}"[:128],
                patient_id=c.patient_id[:128], resource=c.subject, status=200,
                outcome="success", client=None))
        store.delete(c.storage_key)
        done += 1
        log.info("retention: deleted %s %s (rule %s)", c.target, c.subject, c.rule)
    return done


def _drop_empty_parents(conn: Connection, series_fk: int) -> None:
    study_fk = conn.execute(select(Series.study_fk).where(Series.id == series_fk)).scalar()
    if not conn.execute(select(exists().where(Instance.series_fk == series_fk))).scalar():
        conn.execute(delete(Series).where(Series.id == series_fk))
    if study_fk is None or conn.execute(select(exists().where(
            Series.study_fk == study_fk))).scalar():
        return
    patient_fk, study_uid = conn.execute(select(Study.patient_fk, Study.study_instance_uid)
                                         .where(Study.id == study_fk)).one()
    conn.execute(delete(Study).where(Study.id == study_fk))
    conn.execute(delete(StudyFact).where(StudyFact.study_instance_uid == study_uid))
    if patient_fk is not None and not conn.execute(select(exists().where(
            Study.patient_fk == patient_fk))).scalar():
        conn.execute(delete(Patient).where(Patient.id == patient_fk))
