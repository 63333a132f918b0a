"""Modality Performed Procedure Step (PS3.4 F.7): what a modality reports about an exam,
free of DIMSE and of the database.

A step is created IN PROGRESS (N-CREATE) and changed by N-SETs until one makes it
COMPLETED or DISCONTINUED; after that it cannot change. The rules here decide, from the
datasets alone, what is kept (`PerformedStep`) or which status refuses the request
(`MppsRefused`), so that the DICOM edge only maps them and the index only writes them.

Times: PerformedProcedureStepStart/EndDate and Time are local times. They are read in
the dataset's TimezoneOffsetFromUTC when it has one, else in the region's VNA_TIMEZONE,
and kept as UTC.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from pydicom.dataset import Dataset

from vna.dicom.attributes import is_valid_uid, normalize_date, normalize_time
from vna.dicom.dimse import (
    STATUS_DUPLICATE_SOP_INSTANCE,
    STATUS_INVALID_ATTRIBUTE_VALUE,
    STATUS_MAY_NO_LONGER_BE_UPDATED,
    STATUS_MISSING_ATTRIBUTE,
    STATUS_NO_SUCH_OBJECT_INSTANCE,
)


class PpsStatus(StrEnum):
    """PerformedProcedureStepStatus (0040,0252)."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"

    @property
    def is_final(self) -> bool:
        return self is not PpsStatus.IN_PROGRESS


class MppsRefused(Exception):
    """An N-CREATE or N-SET that changes nothing: the DIMSE status, why, and the Error ID
    the standard gives some of them (PS3.4 F.7.2.2.4: 0xA710 for a final step)."""

    def __init__(self, status: int, comment: str, error_id: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.error_id = error_id


def duplicate(uid: str) -> MppsRefused:
    return MppsRefused(STATUS_DUPLICATE_SOP_INSTANCE,
                       f"Performed Procedure Step {uid} exists already")


def unknown(uid: str) -> MppsRefused:
    return MppsRefused(STATUS_NO_SUCH_OBJECT_INSTANCE,
                       f"no Performed Procedure Step {uid}")


def no_longer_updatable(uid: str, status: str) -> MppsRefused:
    # the comment and Error ID dcm4che answers, after PS3.4 F.7.2.2.4
    return MppsRefused(STATUS_MAY_NO_LONGER_BE_UPDATED,
                       f"Performed Procedure Step Object may no longer be updated ({uid} "
                       f"is {status})", error_id=0xA710)


# What an N-SET may not change (PS3.4 F.7.2.2, Table F.7.2-1: not in its N-SET column):
# who the patient is and what was scheduled. Like dcm4chee-arc, a modality that sends them
# again is not refused; its values are ignored and the N-CREATE's stay.
FIXED_AT_CREATE = frozenset({
    "SOPClassUID", "SOPInstanceUID", "PatientName", "PatientID", "IssuerOfPatientID",
    "PatientBirthDate", "PatientSex", "ScheduledStepAttributesSequence",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID", "PerformedStationAETitle", "Modality", "StudyID",
})


@dataclass(frozen=True)
class ScheduledReference:
    """The worklist item a step performs (ScheduledStepAttributesSequence, first item)."""

    accession_number: str | None
    study_instance_uid: str | None
    requested_procedure_id: str | None
    scheduled_procedure_step_id: str | None


@dataclass(frozen=True)
class PerformedStep:
    """An MPPS as the index keeps it."""

    sop_instance_uid: str
    status: PpsStatus
    patient_id: str | None
    issuer_of_patient_id: str
    modality: str | None
    scheduled: ScheduledReference
    started_at: datetime | None
    ended_at: datetime | None
    performed_series: list[dict[str, Any]]
    dataset: Dataset  # the whole step as it stands (N-CREATE with the N-SETs applied)

    @property
    def attributes(self) -> dict[str, Any]:
        """The dataset as DICOM JSON (PS3.18 F.2)."""
        return self.dataset.to_json_dict()


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _status(ds: Dataset) -> PpsStatus | None:
    raw = _text(ds, "PerformedProcedureStepStatus")
    if raw is None:
        return None
    try:
        return PpsStatus(raw.upper())
    except ValueError:
        raise MppsRefused(STATUS_INVALID_ATTRIBUTE_VALUE,
                          f"PerformedProcedureStepStatus {raw!r} is not IN PROGRESS, "
                          "COMPLETED or DISCONTINUED") from None


def _zone(ds: Dataset, zone: str) -> timezone | ZoneInfo:
    """TimezoneOffsetFromUTC (0008,0201, `+hhmm`) when given, else the region's zone."""
    offset = _text(ds, "TimezoneOffsetFromUTC")
    if offset and len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        return timezone(timedelta(minutes=-minutes if offset[0] == "-" else minutes))
    return ZoneInfo(zone)


def local_time(ds: Dataset, date_keyword: str, time_keyword: str,
               zone: str) -> datetime | None:
    """A DA and TM pair of `ds` as an aware UTC time; None when both are absent."""
    raw_date, raw_time = _text(ds, date_keyword), _text(ds, time_keyword)
    if raw_date is None and raw_time is None:
        return None
    date = normalize_date(raw_date or "")
    time = normalize_time(raw_time or "")
    if date is None or time is None:
        bad = date_keyword if date is None else time_keyword
        raise MppsRefused(STATUS_INVALID_ATTRIBUTE_VALUE,
                          f"{bad} {(raw_date if date is None else raw_time)!r} is not a "
                          "DICOM date or time")
    try:
        naive = datetime.strptime(date + time, "%Y%m%d%H%M%S.%f")
    except ValueError:
        raise MppsRefused(STATUS_INVALID_ATTRIBUTE_VALUE,
                          f"{date_keyword}/{time_keyword} {date} {time} is not a time") from None
    return naive.replace(tzinfo=_zone(ds, zone)).astimezone(UTC)


def _scheduled(ds: Dataset) -> ScheduledReference:
    seq = ds.get("ScheduledStepAttributesSequence") or []
    item = seq[0] if len(seq) else Dataset()
    study = _text(item, "StudyInstanceUID")
    if study is not None and not is_valid_uid(study):
        raise MppsRefused(STATUS_INVALID_ATTRIBUTE_VALUE,
                          f"StudyInstanceUID {study!r} is not a UID")
    return ScheduledReference(_text(item, "AccessionNumber"), study,
                              _text(item, "RequestedProcedureID"),
                              _text(item, "ScheduledProcedureStepID"))


def performed_series(ds: Dataset) -> list[dict[str, Any]]:
    """PerformedSeriesSequence: each series with the images and other instances it made."""
    out = []
    for item in ds.get("PerformedSeriesSequence") or []:
        instances = []
        for seq in ("ReferencedImageSequence",
                    "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in item.get(seq) or []:
                instances.append({"sop_class_uid": _text(ref, "ReferencedSOPClassUID"),
                                  "sop_instance_uid": _text(ref, "ReferencedSOPInstanceUID")})
        out.append({"series_instance_uid": _text(item, "SeriesInstanceUID"),
                    "series_description": _text(item, "SeriesDescription"),
                    "retrieve_ae_title": _text(item, "RetrieveAETitle"),
                    "instances": instances})
    return out


def _step(uid: str, ds: Dataset, status: PpsStatus, zone: str) -> PerformedStep:
    started = local_time(ds, "PerformedProcedureStepStartDate",
                         "PerformedProcedureStepStartTime", zone)
    ended = local_time(ds, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
                       zone)
    if status.is_final and ended is None:
        # final state requirements (PS3.4 F.7.2.2.2): the step says when it ended
        raise MppsRefused(STATUS_MISSING_ATTRIBUTE,
                          f"PerformedProcedureStepEndDate and EndTime are required to make "
                          f"the step {status.value}")
    if started is not None and ended is not None and ended < started:
        raise MppsRefused(STATUS_INVALID_ATTRIBUTE_VALUE,
                          "PerformedProcedureStepEndDate/Time is before its start")
    return PerformedStep(
        sop_instance_uid=uid, status=status,
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID") or "",
        modality=_text(ds, "Modality"), scheduled=_scheduled(ds),
        started_at=started, ended_at=ended if status.is_final else None,
        performed_series=performed_series(ds), dataset=ds)


def created(uid: str, attributes: Dataset, zone: str) -> PerformedStep:
    """The step an N-CREATE makes (PS3.4 F.7.2.1): IN PROGRESS, with its start."""
    if not is_valid_uid(uid):
        raise MppsRefused(STATUS_INVALID_ATTRIBUTE_VALUE, f"{uid!r} is not a UID")
    status = _status(attributes)
    if status is None:
        raise MppsRefused(STATUS_MISSING_ATTRIBUTE, "PerformedProcedureStepStatus is missing")
    if status is not PpsStatus.IN_PROGRESS:
        raise MppsRefused(STATUS_INVALID_ATTRIBUTE_VALUE,
                          f"an N-CREATE makes a step IN PROGRESS, not {status.value}")
    for keyword in ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"):
        if _text(attributes, keyword) is None:
            raise MppsRefused(STATUS_MISSING_ATTRIBUTE, f"{keyword} is missing")
    ds = copy.deepcopy(attributes)
    ds.SOPInstanceUID = uid
    return _step(uid, ds, status, zone)


def updated(uid: str, current: Dataset, modification: Dataset, zone: str) -> PerformedStep:
    """The step after an N-SET (PS3.4 F.7.2.2) on a step that stands as `current`."""
    status_now = _status(current) or PpsStatus.IN_PROGRESS
    if status_now.is_final:
        raise no_longer_updatable(uid, status_now.value)
    status = _status(modification) or status_now
    ds = copy.deepcopy(current)
    for elem in modification:
        if elem.keyword in FIXED_AT_CREATE or elem.tag.group in (0x0000, 0x0002):
            continue
        ds[elem.tag] = elem
    ds.PerformedProcedureStepStatus = status.value
    return _step(uid, ds, status, zone)


def from_json(attributes: dict[str, Any]) -> Dataset:
    """A step's dataset from the DICOM JSON the index keeps."""
    return Dataset.from_json(attributes)
