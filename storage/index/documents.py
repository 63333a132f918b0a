"""DocumentEntry rows: store, find (FindDocuments), review, replace, and the patient timeline.

The one place document queries are built. Status changes are conditional updates (`WHERE
availability_status = ...`), so two reviewers or two replacements racing each other get
exactly one winner and the loser a `Conflict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, insert, select, update
from sqlalchemy.engine import Connection

from storage.index.db import Index
from storage.index.models import Document
from storage.index.query import FindQuery, find
from storage.outbox import DOCUMENT_STORED, add_events
from vna.dicom.attributes import Level
from vna.dicom.matching import Single
from vna.documents.entry import AvailabilityStatus, DocumentMetadata, Source


class Conflict(Exception):
    """The entry is not in a state that allows this (HTTP 409)."""


@dataclass
class StoredObject:
    """What the object store holds for a new document: written and durable."""

    storage_key: str
    sha256: str
    size: int
    mime_type: str
    filename: str | None


@dataclass(frozen=True)
class TimelineStudy:
    """A DICOM study on a patient's timeline, as C-FIND finds it."""

    study_instance_uid: str
    time: datetime | None  # StudyDate and StudyTime, when the study says
    study_date: str | None
    study_description: str | None
    accession_number: str | None
    referring_physician_name: str | None
    modalities: list[str]
    number_of_series: int | None
    number_of_instances: int | None

    @classmethod
    def of(cls, st: dict[str, Any]) -> TimelineStudy:
        return cls(st["StudyInstanceUID"], _study_time(st.get("StudyDate"), st.get("StudyTime")),
                   st.get("StudyDate"), st.get("StudyDescription"), st.get("AccessionNumber"),
                   st.get("ReferringPhysicianName"), st.get("ModalitiesInStudy") or [],
                   st.get("NumberOfStudyRelatedSeries"),
                   st.get("NumberOfStudyRelatedInstances"))


@dataclass
class FindDocumentsQuery:
    """FindDocuments parameters, plus the caller's department limit."""

    patient_id: str | None = None
    class_codes: list[str] = field(default_factory=list)
    type_codes: list[str] = field(default_factory=list)
    practice_setting_codes: list[str] = field(default_factory=list)
    creation_from: datetime | None = None
    creation_to: datetime | None = None
    statuses: list[AvailabilityStatus] = field(
        default_factory=lambda: [AvailabilityStatus.APPROVED])
    departments: frozenset[str] = frozenset()  # empty: all
    limit: int = 100
    offset: int = 0


def metadata_of(row: Document) -> DocumentMetadata:
    """The uploader-supplied attributes of a stored entry (the base of a replacement)."""
    return DocumentMetadata(
        patientId=row.patient_id, classCode=row.class_code,
        practiceSettingCode=row.practice_setting_code, typeCode=row.type_code,
        healthcareFacilityTypeCode=row.healthcare_facility_type_code, title=row.title,
        author=row.author, creationTime=row.creation_time,
        serviceStartTime=row.service_start_time,
        serviceStopTime=row.service_stop_time,
        confidentialityCode=row.confidentiality_code, languageCode=row.language_code,
        mimeType=row.mime_type, source=Source(row.source))


class Documents:
    """Document entries in the index."""

    def __init__(self, index: Index) -> None:
        self.index = index

    # -- writes -------------------------------------------------------------------------

    def add(self, meta: DocumentMetadata, obj: StoredObject, *, unique_id: str,
            entry_uuid: str, repository_unique_id: str, submitted_by: str,
            replaces: Document | None = None) -> Document:
        """Insert a new entry for an object already durable in the store.

        `source=patient` uploads wait for review (Submitted). A replacement that is
        Approved at once deprecates the old version in the same transaction; if the old
        one is no longer Approved (replaced or deprecated meanwhile), `Conflict`.
        """
        now = datetime.now(UTC)
        status = (AvailabilityStatus.SUBMITTED if meta.source is Source.PATIENT
                  else AvailabilityStatus.APPROVED)
        values: dict[str, Any] = dict(
            unique_id=unique_id, entry_uuid=entry_uuid, patient_id=meta.patientId,
            class_code=meta.classCode, type_code=meta.typeCode,
            practice_setting_code=meta.practiceSettingCode,
            healthcare_facility_type_code=meta.healthcareFacilityTypeCode,
            title=meta.title, author=meta.author,
            creation_time=meta.creationTime or now,
            service_start_time=meta.serviceStartTime, service_stop_time=meta.serviceStopTime,
            confidentiality_code=meta.confidentialityCode, language_code=meta.languageCode,
            mime_type=obj.mime_type, sha256=obj.sha256, size=obj.size,
            repository_unique_id=repository_unique_id, availability_status=status.value,
            source=meta.source.value, filename=obj.filename, storage_key=obj.storage_key,
            submission_time=now, submitted_by=submitted_by,
            version=(replaces.version + 1) if replaces else 1,
            replaces=replaces.unique_id if replaces else None)
        with self.index.begin() as conn:
            if replaces is not None and status is AvailabilityStatus.APPROVED:
                self._deprecate(conn, replaces.unique_id, unique_id)
            elif replaces is not None:
                self._require_status(conn, replaces.unique_id, AvailabilityStatus.APPROVED)
            conn.execute(insert(Document).values(**values))
            add_events(conn, DOCUMENT_STORED, [unique_id], now)
        # Built from what was written, not read back: once committed, nothing after this
        # line may fail and make the caller think the entry does not exist.
        return Document(**values)

    def exists(self, unique_id: str) -> bool:
        with self.index.read_session() as s:
            return s.scalar(select(Document.id).where(Document.unique_id == unique_id)) \
                is not None

    def review(self, unique_id: str, *, approve: bool, reason: str | None,
               reviewer: str) -> Document:
        """Approve or reject a Submitted entry; approving a replacement deprecates the old."""
        decision = AvailabilityStatus.APPROVED if approve else AvailabilityStatus.REJECTED
        with self.index.begin() as conn:
            # The status condition is in the UPDATE itself: of two reviewers deciding at
            # once, exactly one changes the row (PostgreSQL re-checks it after the lock).
            done = conn.execute(update(Document).where(
                Document.unique_id == unique_id,
                Document.availability_status == AvailabilityStatus.SUBMITTED.value,
            ).values(
                availability_status=decision.value,
                review_decision="approve" if approve else "reject", review_reason=reason,
                reviewed_by=reviewer, reviewed_at=datetime.now(UTC)))
            if done.rowcount != 1:
                raise Conflict("only a Submitted entry can be reviewed; it was reviewed "
                               "already")
            replaces = conn.execute(select(Document.replaces).where(
                Document.unique_id == unique_id)).scalar()
            if approve and replaces:
                self._deprecate(conn, replaces, unique_id)
        return self.get(unique_id)  # type: ignore[return-value]

    @staticmethod
    def _deprecate(conn: Connection, old_unique_id: str, new_unique_id: str) -> None:
        done = conn.execute(update(Document).where(
            Document.unique_id == old_unique_id,
            Document.availability_status == AvailabilityStatus.APPROVED.value,
        ).values(availability_status=AvailabilityStatus.DEPRECATED.value,
                 replaced_by=new_unique_id))
        if done.rowcount != 1:
            raise Conflict(f"{old_unique_id} is no longer Approved: it was replaced or "
                           f"deprecated already")

    @staticmethod
    def _require_status(conn: Connection, unique_id: str, status: AvailabilityStatus) -> None:
        if conn.execute(select(Document.id).where(
                Document.unique_id == unique_id,
                Document.availability_status == status.value)).first() is None:
            raise Conflict(f"{unique_id} is not {status.value}")

    # -- reads --------------------------------------------------------------------------

    def get(self, unique_id: str) -> Document | None:
        with self.index.read_session() as s:
            return s.scalars(select(Document).where(Document.unique_id == unique_id)).first()

    def find(self, q: FindDocumentsQuery) -> tuple[list[Document], int]:
        """Matching entries, newest first, one page of them, and how many match in all."""
        stmt = _find_select(q)
        with self.index.read_session() as s:
            total = s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
            rows = s.scalars(stmt.order_by(Document.creation_time.desc(), Document.id.desc())
                             .limit(q.limit).offset(q.offset)).all()
        return list(rows), total

    def timeline(self, patient_id: str, *, departments: frozenset[str],
                 limit: int) -> list[Document | TimelineStudy]:
        """The patient's Approved documents and DICOM studies together, newest first."""
        docs, _ = self.find(FindDocumentsQuery(patient_id=patient_id, departments=departments,
                                               limit=limit))
        items: list[Document | TimelineStudy] = [*docs, *self._studies(patient_id, departments)]
        items.sort(key=_time_of, reverse=True)
        return items[:limit]

    def _studies(self, patient_id: str, departments: frozenset[str]) -> list[TimelineStudy]:
        dicom_id, issuer = split_cx(patient_id)
        q = FindQuery(Level.STUDY, matchers={"PatientID": Single(dicom_id)}, return_keys=[
            "IssuerOfPatientID", "StudyInstanceUID", "StudyDate", "StudyTime",
            "StudyDescription", "AccessionNumber", "ReferringPhysicianName",
            "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances"],
            departments=departments)  # a limited token: the studies its departments took
        with self.index.read_session() as s:
            studies = [st for st in find(s, q)
                       if issuer is None or st["IssuerOfPatientID"] in (None, "", issuer)]
        return [TimelineStudy.of(st) for st in studies]


def _time_of(item: Document | TimelineStudy) -> datetime:
    t = item.time if isinstance(item, TimelineStudy) else item.creation_time
    return t or datetime.min.replace(tzinfo=UTC)


def _find_select(q: FindDocumentsQuery) -> Select[Any]:
    stmt = select(Document)
    if q.patient_id is not None:
        stmt = stmt.where(Document.patient_id == q.patient_id)
    if q.class_codes:
        stmt = stmt.where(Document.class_code.in_(q.class_codes))
    if q.type_codes:
        stmt = stmt.where(Document.type_code.in_(q.type_codes))
    if q.practice_setting_codes:
        stmt = stmt.where(Document.practice_setting_code.in_(q.practice_setting_codes))
    if q.departments:
        stmt = stmt.where(Document.practice_setting_code.in_(sorted(q.departments)))
    if q.creation_from is not None:
        stmt = stmt.where(Document.creation_time >= q.creation_from)
    if q.creation_to is not None:
        stmt = stmt.where(Document.creation_time <= q.creation_to)
    return stmt.where(Document.availability_status.in_([s.value for s in q.statuses]))


def split_cx(patient_id: str) -> tuple[str, str | None]:
    """`ID^^^&1.2.3&ISO` -> ("ID", "1.2.3"); a bare ID -> (ID, None).

    DICOM keeps the assigning authority in IssuerOfPatientID; studies with no issuer
    recorded match any authority.
    """
    ident, _, rest = patient_id.partition("^")
    authority = rest.split("^")[2] if rest.count("^") >= 2 else ""
    universal = authority.split("&")[1] if authority.count("&") >= 1 else authority
    return ident, (universal or None)


def _study_time(date: str | None, time: str | None) -> datetime | None:
    if not date:
        return None
    digits = "".join(c for c in (time or "") if c.isdigit())[:6].ljust(6, "0")
    try:
        return datetime.strptime(date + digits, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
