"""The index: Patient / Study / Series / SOP Instance, as C-FIND matches and returns them.

Strings are stored as DICOM gives them after decoding (trailing padding stripped);
dates as `YYYYMMDD`, times normalised to `HHMMSS.ffffff` so that range matching is a
plain string comparison. Person names are also kept upper-cased for case-insensitive
PN matching.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


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
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_id: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    referring_physician_name: Mapped[str | None] = mapped_column(String(324))
    referring_physician_name_upper: Mapped[str | None] = mapped_column(String(324))
    institution_name: Mapped[str | None] = mapped_column(String(64))
    patient_age: Mapped[str | None] = mapped_column(String(4))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
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
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    dataset_offset: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(256))

    series: Mapped[Series] = relationship(back_populates="instances")


Index("ix_patient_birth_date", Patient.patient_birth_date)
