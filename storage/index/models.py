"""The index: Patient / Study / Series / SOP Instance, as C-FIND matches and returns them;
DocumentEntry for everything that is not DICOM; API tokens and the audit trail; the
outbox of work for the workers and what they derive (DICOM header JSON, media facts).

Strings are stored as DICOM gives them after decoding (trailing padding stripped);
dates as `YYYYMMDD`, times normalised to `HHMMSS.ffffff` so that range matching is a
plain string comparison. Person names are also kept upper-cased for case-insensitive
PN matching.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from vna.quality import LATE_ARRIVAL
from vna.stats import Dimension


class Base(DeclarativeBase):
    pass


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time, always written and read back as aware UTC.

    SQLite keeps no time zone: it would store the wall time of whatever zone a value had
    and hand back naive values. Converting here, once, is what lets every query, API
    answer and export use the index's times as they come.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[datetime]:
        return datetime

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return _utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return _utc(value)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UID = String(64)


class Patient(Base):
    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id",
                                       name="uq_patient_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # A patient is identified by Patient ID *and* its issuer: a region's hospitals reuse
    # each other's local IDs. An absent issuer is stored as "".
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), server_default="")
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_name_upper: Mapped[str | None] = mapped_column(String(324), index=True)
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    """A study of one patient. A Study Instance UID has one row, except where
    VNA_PATIENT_CONFLICT=accept filed instances of it under other patients: one row each
    (`vna.dicom.identity`)."""

    __tablename__ = "study"
    __table_args__ = (UniqueConstraint("study_instance_uid", "patient_fk",
                                       name="uq_study_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_id: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    referring_physician_name: Mapped[str | None] = mapped_column(String(324))
    referring_physician_name_upper: Mapped[str | None] = mapped_column(String(324))
    institution_name: Mapped[str | None] = mapped_column(String(64))
    patient_age: Mapped[str | None] = mapped_column(String(4))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A series of one study row (so of one patient, like the study)."""

    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("series_instance_uid", "study_fk",
                                       name="uq_series_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    series_number: Mapped[str | None] = mapped_column(String(12))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_date: Mapped[str | None] = mapped_column(String(8))
    series_time: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    station_name: Mapped[str | None] = mapped_column(String(16))
    institutional_department_name: Mapped[str | None] = mapped_column(String(64))
    protocol_name: Mapped[str | None] = mapped_column(String(64))
    performed_procedure_step_start_date: Mapped[str | None] = mapped_column(String(8))
    performed_procedure_step_start_time: Mapped[str | None] = mapped_column(String(16))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[str | None] = mapped_column(String(12))
    content_date: Mapped[str | None] = mapped_column(String(8))
    content_time: Mapped[str | None] = mapped_column(String(16))
    acquisition_date: Mapped[str | None] = mapped_column(String(8))
    acquisition_time: Mapped[str | None] = mapped_column(String(16))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    source_aet: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    dataset_offset: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(256))

    series: Mapped[Series] = relationship(back_populates="instances")


Index("ix_patient_birth_date", Patient.patient_birth_date)


class Document(Base):
    """An XDS DocumentEntry and where its bytes are. Versions are rows: a replacement is a
    new row whose `replaces` names the old one, which becomes Deprecated."""

    __tablename__ = "document"
    __table_args__ = (
        Index("ix_document_patient_status_time", "patient_id", "availability_status",
              "creation_time"),
        Index("ix_document_department_time", "practice_setting_code", "creation_time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unique_id: Mapped[str] = mapped_column(String(64), unique=True)
    entry_uuid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(128))
    class_code: Mapped[str] = mapped_column(String(64), index=True)
    type_code: Mapped[str | None] = mapped_column(String(64))
    practice_setting_code: Mapped[str] = mapped_column(String(64))
    healthcare_facility_type_code: Mapped[str | None] = mapped_column(String(64))
    title: Mapped[str | None] = mapped_column(String(256))
    author: Mapped[str | None] = mapped_column(String(256))
    creation_time: Mapped[datetime] = mapped_column(UTCDateTime)
    service_start_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    service_stop_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confidentiality_code: Mapped[str] = mapped_column(String(64))
    language_code: Mapped[str] = mapped_column(String(32))
    mime_type: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    repository_unique_id: Mapped[str] = mapped_column(String(64))
    availability_status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str | None] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(256))
    submission_time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    submitted_by: Mapped[str] = mapped_column(String(32))  # token id
    version: Mapped[int] = mapped_column(SmallInteger, server_default="1")
    replaces: Mapped[str | None] = mapped_column(String(64))
    replaced_by: Mapped[str | None] = mapped_column(String(64))
    review_decision: Mapped[str | None] = mapped_column(String(16))
    review_reason: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str | None] = mapped_column(String(32))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiToken(Base):
    """A bearer token of the HTTP API. Only its SHA-256 is kept; `id` is what logs and the
    audit trail name."""

    __tablename__ = "api_token"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    departments: Mapped[list[str]] = mapped_column(JSON)
    # Whose documents an uploader stores: `patient` for a patient portal, whose uploads
    # always wait for review, whatever their metadata says.
    source: Mapped[str] = mapped_column(String(16), server_default="department")
    label: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(32))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # None: never
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    replaced_by: Mapped[str | None] = mapped_column(String(32))  # the token it was rotated to


# The audit records not yet sent to the ATNA collector (VNA_AUDIT_SYSLOG) are few: an index
# of their own, as for late arrivals.
AUDIT_UNEXPORTED_SQL = "exported_at IS NULL"


class AuditEvent(Base):
    """One access to patient data, over HTTP or DICOM: who (token and role, or calling AE
    title and TLS identity), what, when, outcome; and whether it went to the ATNA
    collector yet."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_unexported", "id",
                            sqlite_where=text(AUDIT_UNEXPORTED_SQL),
                            postgresql_where=text(AUDIT_UNEXPORTED_SQL)),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    token_id: Mapped[str | None] = mapped_column(String(32), index=True)
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(16))  # HTTP method, or DIMSE / A-ASSOCIATE
    route: Mapped[str] = mapped_column(String(128))
    patient_id: Mapped[str | None] = mapped_column(String(128), index=True)
    resource: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[int] = mapped_column(Integer)  # HTTP status, or DIMSE status
    outcome: Mapped[str] = mapped_column(String(16))
    client: Mapped[str | None] = mapped_column(String(64))
    protocol: Mapped[str] = mapped_column(String(8), server_default="http")  # http | dicom
    calling_aet: Mapped[str | None] = mapped_column(String(16))
    tls_identity: Mapped[str | None] = mapped_column(String(256))  # a client cert's subject
    studies: Mapped[list[str] | None] = mapped_column(JSON)  # Study Instance UIDs touched
    instances: Mapped[int | None] = mapped_column(Integer)  # how many (C-STORE, retrieve)
    exported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # sent to ATNA


class OutboxEvent(Base):
    """Work for the workers, written in the same transaction as what it is about, so that
    nothing acknowledged can miss its follow-up work (broker down, worker down, kill -9).
    Workers mark an event processed in the transaction that writes its results."""

    __tablename__ = "outbox_event"
    __table_args__ = (Index("ix_outbox_event_pending", "processed_at", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))  # instance.stored, document.stored
    subject: Mapped[str] = mapped_column(String(64))  # SOP Instance UID, document uniqueId
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)


class InstanceMetadata(Base):
    """The whole DICOM header of an instance as DICOM JSON (PS3.18 F.2), bulk data named by
    `bulkdata:<path>` placeholders instead of inlined (`vna.dicom.metadata`): what
    DICOMweb's /metadata answers, without reading the object again."""

    __tablename__ = "instance_metadata"

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    header: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DocumentMedia(Base):
    """Facts read from a document's bytes: duration of audio and video, pages of a PDF,
    pixel size of images and video."""

    __tablename__ = "document_media"

    unique_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    pages: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


# The late-arrival rule as SQL, literally: SQLite uses a partial index only for queries that
# repeat its condition with the same constant (a bound parameter would not do).
LATE_ARRIVAL_SQL = f"arrival_seconds > {int(LATE_ARRIVAL.total_seconds())}"


class InstanceFact(Base):
    """What lead times and data-quality rules need of an instance, read from its header by
    the workers: when it was made, the procedure step around it, the patient's name as
    this instance gives it (one ID, several names is a finding)."""

    __tablename__ = "instance_fact"
    __table_args__ = (Index("ix_instance_fact_received", "received_at"),
                      Index("ix_instance_fact_study", "study_instance_uid"),
                      Index("ix_instance_fact_patient", "patient_id"),
                      # late arrivals are few: an index of their own
                      Index("ix_instance_fact_late", "received_at",
                            sqlite_where=text(LATE_ARRIVAL_SQL),
                            postgresql_where=text(LATE_ARRIVAL_SQL)))

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    patient_id: Mapped[str] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pps_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pps_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # received_at - acquired_at, seconds
    arrival_seconds: Mapped[float | None] = mapped_column(Float)


class StudyFact(Base):
    """A study as its instances tell it: the earliest performed procedure step start and the
    latest end, the first and last arrival, the patient's ID and name, and whether its
    instances disagree on that name;
    merged by the workers instance by instance, so that exam durations and name findings
    read one row per study, not one per instance."""

    __tablename__ = "study_fact"

    study_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    pps_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pps_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    patient_id: Mapped[str] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    several_names: Mapped[bool] = mapped_column(Boolean)
    # for the lead-time chain (orders, MPPS, reports): when its last instance arrived, the
    # department its series name, the AE that sent it, its accession number (first seen)
    last_received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    department: Mapped[str | None] = mapped_column(String(64))
    source_aet: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64))


# The rollup's key columns: one for each dimension the stats API breaks volumes down by.
STATS_DIMENSIONS = tuple(d.value for d in Dimension)


class StatsHourly(Base):
    """The statistics rollup: what arrived per UTC hour, by every dimension a controller
    filters on ('' where unknown). Workers add to it as they drain the outbox, in the
    transaction that marks the events processed, so every instance and document is counted
    exactly once."""

    __tablename__ = "stats_hourly"
    __table_args__ = (UniqueConstraint("hour", "kind", *STATS_DIMENSIONS,
                                       name="uq_stats_hourly_key"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # instance | document
    modality: Mapped[str] = mapped_column(String(16))
    department: Mapped[str] = mapped_column(String(64))
    referrer: Mapped[str] = mapped_column(String(324))
    source_ae: Mapped[str] = mapped_column(String(16))
    station: Mapped[str] = mapped_column(String(16))
    body_part: Mapped[str] = mapped_column(String(16))
    document_class: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)


class StatsArrivalHourly(Base):
    """The acquisition-to-archive delays of the instances received per UTC hour, as a
    histogram by modality (`vna.leadtimes` bins), added to exactly like `stats_hourly`."""

    __tablename__ = "stats_arrival_hourly"
    __table_args__ = (UniqueConstraint("hour", "modality", "bin",
                                       name="uq_stats_arrival_hourly_key"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime)
    modality: Mapped[str] = mapped_column(String(16))
    bin: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(BigInteger)


class IngestConflict(Base):
    """An instance whose identity contradicts the archive (`vna.dicom.identity`): refused,
    or, for a patient conflict under VNA_PATIENT_CONFLICT=accept, filed under its own
    patient. What /api/v1/stats/quality counts as `patient_conflict` and `uid_conflict`."""

    __tablename__ = "ingest_conflict"
    __table_args__ = (Index("ix_ingest_conflict_rule_at", "rule", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    rule: Mapped[str] = mapped_column(String(32))  # patient_conflict | uid_conflict
    action: Mapped[str] = mapped_column(String(16))  # rejected | accepted
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sent_patient_id: Mapped[str] = mapped_column(String(64))
    sent_issuer: Mapped[str] = mapped_column(String(64))
    archived_patient_id: Mapped[str | None] = mapped_column(String(64))
    archived_issuer: Mapped[str | None] = mapped_column(String(64))
    source_aet: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)


class FixityCheck(Base):
    """One object re-hashed by a fixity run: what the index says, what was found."""

    __tablename__ = "fixity_check"
    __table_args__ = (Index("ix_fixity_check_ok", "ok", "checked_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16))  # instance | document
    subject: Mapped[str] = mapped_column(String(64))  # SOP Instance UID | uniqueId
    storage_key: Mapped[str] = mapped_column(String(256))
    expected_sha256: Mapped[str] = mapped_column(String(64))
    found_sha256: Mapped[str | None] = mapped_column(String(64))  # None: object missing
    ok: Mapped[bool] = mapped_column(Boolean)


# -- orders and the modality workflow (HL7 v2, Modality Worklist, MPPS, Storage Commitment) --


class PatientAlias(Base):
    """A patient identity that no longer stands alone: merged into (HL7 A40) or renamed to
    (A47) the surviving patient row. Ingest files an instance naming the old identity under
    the survivor; C-FIND for the old identity finds nothing, since no patient row has it."""

    __tablename__ = "patient_alias"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id",
                                       name="uq_patient_alias_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), server_default="")
    survivor_fk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    reason: Mapped[str] = mapped_column(String(16))  # merge | change_id
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    hl7_message_fk: Mapped[int | None] = mapped_column(Integer)


class Hl7Message(Base):
    """One HL7 v2 message as received over MLLP, with the ACK it got: who sent what, when."""

    __tablename__ = "hl7_message"
    __table_args__ = (Index("ix_hl7_message_received", "received_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    peer: Mapped[str | None] = mapped_column(String(64))  # host:port of the sender
    sending_application: Mapped[str | None] = mapped_column(String(64))
    sending_facility: Mapped[str | None] = mapped_column(String(64))
    message_type: Mapped[str | None] = mapped_column(String(16))  # e.g. ADT^A40
    control_id: Mapped[str | None] = mapped_column(String(64))  # MSH-10
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    ack_code: Mapped[str] = mapped_column(String(2))  # AA | AE | AR
    error: Mapped[str | None] = mapped_column(Text)  # what ERR said, for AE/AR
    message: Mapped[str] = mapped_column(Text)  # as received (segments joined by \r)


class ImagingOrder(Base):
    """A requested procedure with its one scheduled procedure step: what the Modality
    Worklist answers, from an HL7 order (ORM^O01/OMI^O23) or `POST /api/v1/worklist`.
    Times a controller's lead times start from are kept: referral and placer order times."""

    __tablename__ = "imaging_order"
    __table_args__ = (
        Index("ix_imaging_order_worklist", "status", "scheduled_date", "scheduled_time"),
        Index("ix_imaging_order_station", "scheduled_station_aet", "scheduled_date"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    placer_order_number: Mapped[str | None] = mapped_column(String(64), index=True)
    filler_order_number: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str] = mapped_column(String(16), unique=True)
    requested_procedure_id: Mapped[str] = mapped_column(String(16))
    requested_procedure_description: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    scheduled_procedure_step_id: Mapped[str] = mapped_column(String(16))
    scheduled_procedure_step_description: Mapped[str | None] = mapped_column(String(64))
    scheduled_station_aet: Mapped[str | None] = mapped_column(String(16))
    scheduled_station_name: Mapped[str | None] = mapped_column(String(16))
    modality: Mapped[str] = mapped_column(String(16), index=True)
    # local date and time of the region (VNA_TIMEZONE), as the worklist matches them
    scheduled_date: Mapped[str] = mapped_column(String(8))
    scheduled_time: Mapped[str] = mapped_column(String(16))
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    scheduled_performing_physician_name: Mapped[str | None] = mapped_column(String(324))
    referring_physician_name: Mapped[str | None] = mapped_column(String(324))
    requesting_physician_name: Mapped[str | None] = mapped_column(String(324))
    department: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # vna.orders.OrderStatus
    referral_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    placed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(8))  # hl7 | api
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PerformedProcedureStep(Base):
    """An MPPS instance (N-CREATE, then N-SETs): when the exam started and ended, on which
    station, the series it made, linked to the order and study it performed."""

    __tablename__ = "performed_procedure_step"
    __table_args__ = (Index("ix_pps_started", "started_at"),)

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    order_fk: Mapped[int | None] = mapped_column(ForeignKey("imaging_order.id"), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    accession_number: Mapped[str | None] = mapped_column(String(16))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), server_default="")
    modality: Mapped[str | None] = mapped_column(String(16))
    station_aet: Mapped[str | None] = mapped_column(String(16))  # who sent the N-CREATE
    status: Mapped[str] = mapped_column(String(16))  # IN PROGRESS | COMPLETED | DISCONTINUED
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    performed_series: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)  # the dataset, DICOM JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StorageCommitment(Base):
    """A Storage Commitment request (N-ACTION): the instances asked about, what the archive
    found, and the N-EVENT-REPORT a worker sends (retried while the requester is away)."""

    __tablename__ = "storage_commitment"
    __table_args__ = (Index("ix_storage_commitment_due", "reported_at", "next_attempt_at"),)

    transaction_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    requester_aet: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    referenced: Mapped[list[dict[str, str]]] = mapped_column(JSON)  # [{sop_class_uid, ...}]
    committed: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    failed: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)


class StudyReport(Base):
    """A final report of an exam (HL7 ORU^R01), by accession number: the report time that
    closes the exam-to-report lead time."""

    __tablename__ = "study_report"

    accession_number: Mapped[str] = mapped_column(String(16), primary_key=True)
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    result_status: Mapped[str] = mapped_column(String(2))  # OBR-25: F, C
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    hl7_message_fk: Mapped[int | None] = mapped_column(Integer)
