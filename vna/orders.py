"""Orders and patients as the RIS and the HIS send them: the domain of the modality
workflow, free of HL7 and of the database.

An order is one requested procedure with one scheduled procedure step (what a modality
picks from the Modality Worklist). It comes from an HL7 v2 order (ORM^O01 / OMI^O23) or
from `POST /api/v1/worklist`; both build a `ScheduledStep` here, so that both are checked
by the same rules before anything is written. Patients are PatientID plus issuer
(`vna.dicom.identity.PatientIdentity`) throughout.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from vna.dicom.attributes import is_valid_uid, normalize_time
from vna.dicom.identity import PatientIdentity


class OrderStatus(StrEnum):
    """Where an order is in its life; only SCHEDULED ones are on the worklist."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"  # an MPPS was created for it
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"  # stopped part-way: HL7 DC, or MPPS DISCONTINUED
    CANCELLED = "CANCELLED"  # HL7 CA, or DELETE /api/v1/worklist/{id}

    @property
    def is_final(self) -> bool:
        return self in (OrderStatus.COMPLETED, OrderStatus.DISCONTINUED,
                        OrderStatus.CANCELLED)


class InvalidOrder(ValueError):
    """An order that cannot be placed: the field and why (HL7 ERR, HTTP 422)."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class PatientRecord:
    """A patient as the HIS describes one (HL7 PID): identity and demographics. `None`
    means not sent (left as it is); names are DICOM PN (`Family^Given`)."""

    identity: PatientIdentity
    name: str | None = None
    birth_date: str | None = None  # YYYYMMDD
    sex: str | None = None  # M, F, O

    def __post_init__(self) -> None:
        pid = self.identity.patient_id
        if not pid or len(pid) > 64 or any(c in pid for c in "\\*?"):
            raise InvalidOrder("PatientID", f"{pid!r} is not a Patient ID")
        if self.birth_date and not (len(self.birth_date) == 8 and self.birth_date.isdigit()):
            raise InvalidOrder("PatientBirthDate", f"{self.birth_date!r} is not YYYYMMDD")
        if self.sex and self.sex not in ("M", "F", "O"):
            raise InvalidOrder("PatientSex", f"{self.sex!r} is not M, F or O")


def new_uid() -> str:
    """A UID of the 2.25 root (ISO/IEC 9834-8, a UUID as a decimal)."""
    return f"2.25.{uuid.uuid4().int}"


def _short(name: str, value: str | None, limit: int, *, required: bool = False) -> None:
    if required and not value:
        raise InvalidOrder(name, "is required")
    if value is not None and len(value) > limit:
        raise InvalidOrder(name, f"longer than {limit} characters")
    if value and any(c in value for c in "\\\r\n\0"):
        raise InvalidOrder(name, "contains a control character or backslash")


@dataclass(frozen=True)
class ScheduledStep:
    """A requested procedure and its scheduled procedure step, as the worklist gives it."""

    patient: PatientRecord
    accession_number: str
    modality: str
    scheduled_at: datetime  # aware
    requested_procedure_id: str = ""  # default: the accession number
    requested_procedure_description: str | None = None
    scheduled_procedure_step_id: str = ""  # default: the accession number
    scheduled_procedure_step_description: str | None = None
    scheduled_station_aet: str | None = None
    scheduled_station_name: str | None = None
    scheduled_performing_physician_name: str | None = None
    referring_physician_name: str | None = None
    requesting_physician_name: str | None = None
    department: str | None = None
    priority: str | None = None
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    study_instance_uid: str = field(default_factory=new_uid)
    referral_at: datetime | None = None  # when the referral arrived (HL7 ORC-9 / OBR-6)
    placed_at: datetime | None = None  # when the placer ordered it (ORC-9)

    def __post_init__(self) -> None:
        _short("AccessionNumber", self.accession_number, 16, required=True)
        _short("Modality", self.modality, 16, required=True)
        if self.modality and not self.modality.replace("_", "").isalnum():
            raise InvalidOrder("Modality", f"{self.modality!r} is not a modality code")
        if self.scheduled_at.tzinfo is None:
            raise InvalidOrder("ScheduledProcedureStepStartDateTime", "has no time zone")
        for name, value, limit in (
                ("RequestedProcedureID", self.requested_procedure_id, 16),
                ("RequestedProcedureDescription", self.requested_procedure_description, 64),
                ("ScheduledProcedureStepID", self.scheduled_procedure_step_id, 16),
                ("ScheduledProcedureStepDescription",
                 self.scheduled_procedure_step_description, 64),
                ("ScheduledStationAETitle", self.scheduled_station_aet, 16),
                ("ScheduledStationName", self.scheduled_station_name, 16),
                ("ScheduledPerformingPhysicianName",
                 self.scheduled_performing_physician_name, 324),
                ("ReferringPhysicianName", self.referring_physician_name, 324),
                ("RequestingPhysician", self.requesting_physician_name, 324),
                ("department", self.department, 64),
                ("priority", self.priority, 16),
                ("PlacerOrderNumber", self.placer_order_number, 64),
                ("FillerOrderNumber", self.filler_order_number, 64)):
            _short(name, value, limit)
        if not is_valid_uid(self.study_instance_uid):
            raise InvalidOrder("StudyInstanceUID", f"{self.study_instance_uid!r} is not a UID")
        # the defaults a RIS that sends no IDs of its own gets (dcm4chee-arc does the same)
        if not self.requested_procedure_id:
            object.__setattr__(self, "requested_procedure_id", self.accession_number)
        if not self.scheduled_procedure_step_id:
            object.__setattr__(self, "scheduled_procedure_step_id", self.accession_number)

    def local_date_time(self, zone: str) -> tuple[str, str]:
        """ScheduledProcedureStepStartDate and Time in the region's zone, as DICOM gives
        them, the time normalised as the index keeps times (`vna.dicom.attributes`), so
        that the worklist matches ranges as plain string comparisons."""
        local = self.scheduled_at.astimezone(ZoneInfo(zone))
        return local.strftime("%Y%m%d"), normalize_time(local.strftime("%H%M%S")) or ""


def utc_now() -> datetime:
    return datetime.now(UTC)
