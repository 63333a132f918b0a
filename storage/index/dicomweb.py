"""What WADO-RS reads from the index: the instances of a study, series or instance with
where their bytes are, and their stored DICOM JSON headers (`instance_metadata`).

Both select through `storage.index.query.build_select` (the one place matching becomes
SQL), so a department-limited token gets exactly the instances QIDO-RS would show it.
A header is selected as text (`CAST(header AS TEXT)`): /metadata splices the stored JSON
into its answer without decoding it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Text, cast
from sqlalchemy.orm import Session

from storage.index.db import Index, dialect_insert
from storage.index.models import Instance, InstanceMetadata, Patient, Series, Study
from storage.index.query import FindQuery, build_select
from vna.dicom.attributes import Level
from vna.dicom.matching import Single


class ArchivedInstance(NamedTuple):
    """An instance as WADO-RS sends it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int
    sha256: str
    dataset_offset: int
    number_of_frames: int | None
    patient_id: str  # for the audit trail


class InstanceHeader(NamedTuple):
    """An instance with its stored header (None: not derived yet) and when that was
    derived."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    storage_key: str
    sha256: str
    header: str | None
    derived_at: datetime | None
    patient_id: str  # for the audit trail


def _query(study: str, series: str | None, instance: str | None,
           departments: frozenset[str]) -> FindQuery:
    matchers: dict[str, Any] = {"StudyInstanceUID": Single(study)}
    if series is not None:
        matchers["SeriesInstanceUID"] = Single(series)
    if instance is not None:
        matchers["SOPInstanceUID"] = Single(instance)
    return FindQuery(Level.IMAGE, matchers, departments=departments)


def archived_instances(session: Session, study: str, series: str | None = None,
                       instance: str | None = None, *,
                       departments: frozenset[str] = frozenset()) -> list[ArchivedInstance]:
    """The instances of a study (of one series of it, or one instance), in the order they
    were archived."""
    stmt = build_select(_query(study, series, instance, departments)).with_only_columns(
        Study.study_instance_uid, Series.series_instance_uid, Instance.sop_instance_uid,
        Instance.sop_class_uid, Instance.transfer_syntax_uid, Instance.storage_key,
        Instance.size, Instance.sha256, Instance.dataset_offset, Instance.number_of_frames,
        Patient.patient_id)
    return [ArchivedInstance._make(row) for row in session.execute(stmt).all()]


def instance_headers(session: Session, study: str, series: str | None = None,
                     instance: str | None = None, *,
                     departments: frozenset[str] = frozenset()) -> list[InstanceHeader]:
    """The instances of a study (series, instance) with their stored headers as JSON
    text, in one query."""
    stmt = build_select(_query(study, series, instance, departments)).outerjoin(
        InstanceMetadata, InstanceMetadata.sop_instance_uid == Instance.sop_instance_uid,
    ).with_only_columns(
        Study.study_instance_uid, Series.series_instance_uid, Instance.sop_instance_uid,
        Instance.storage_key, Instance.sha256, cast(InstanceMetadata.header, Text),
        InstanceMetadata.created_at, Patient.patient_id)
    return [InstanceHeader._make(row) for row in session.execute(stmt).all()]


def keep_headers(index: Index, headers: Iterable[tuple[str, dict[str, Any]]]) -> int:
    """Store headers built on demand (before the worker derived them), in one transaction,
    each unless one is there already: the worker's upsert writes the same header later.
    How many were written."""
    now = datetime.now(UTC)
    rows = [{"sop_instance_uid": sop, "header": header, "created_at": now}
            for sop, header in headers]
    if not rows:
        return 0
    written = 0
    with index.begin() as conn:
        stmt = dialect_insert(conn)(InstanceMetadata).on_conflict_do_nothing(
            index_elements=["sop_instance_uid"])
        for row in rows:
            written += conn.execute(stmt, row).rowcount or 0
    return written
