"""HL7 v2 messages of the RIS and the HIS, read into the domain of the modality workflow
(`vna.orders`), and the ACKs that answer them. Parsing and building are python-hl7's
(`hl7.parse`, `Message.create_ack`); this module says which field means what.

What a message becomes:

- ADT A01/A04/A08/A28/A31 -> `PatientUpdate` (PID: the patient row is created or updated)
- ADT A40 -> `Merge` (PID is the survivor, MRG-1 the prior patient)
- ADT A47 -> `Merge(change_id=True)` (PID-3 is the new identifier, MRG-1 the old one)
- ORM^O01 / OMI^O23 -> `OrderControl` (ORC-1: NW places a `ScheduledStep`, CA, DC, SC)
- ORU^R01 -> `Report` (OBR-25 F or C: the final report time, OBR-22, by accession number)

Anything else, or a field that is missing or malformed, is an `Hl7Error` naming the field
(`PID-3`), which becomes the ACK's ERR segment. Where HL7 leaves a choice, the choice is
dcm4chee-arc's default (docs/hl7.md lists them).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from zoneinfo import ZoneInfo

import hl7

from vna.dicom.identity import PatientIdentity
from vna.orders import InvalidOrder, OrderStatus, PatientRecord, ScheduledStep


class ErrorCode(StrEnum):
    """HL7 table 0357, Message error condition codes (ERR-3)."""

    SEGMENT_SEQUENCE = "100"
    REQUIRED_FIELD_MISSING = "101"
    DATA_TYPE = "102"
    TABLE_VALUE_NOT_FOUND = "103"
    UNSUPPORTED_MESSAGE_TYPE = "200"
    UNSUPPORTED_EVENT_CODE = "201"
    UNKNOWN_KEY = "204"
    DUPLICATE_KEY = "205"
    INTERNAL = "207"

    @property
    def text(self) -> str:
        return _ERROR_TEXT[self]


_ERROR_TEXT = {
    ErrorCode.SEGMENT_SEQUENCE: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE: "Data type error",
    ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ErrorCode.UNKNOWN_KEY: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY: "Duplicate key identifier",
    ErrorCode.INTERNAL: "Application internal error",
}


class Hl7Error(Exception):
    """A message that cannot be applied: the ACK code (AE: its content; AR: the message
    itself, e.g. an unsupported type), the field (`PID-3`, ERR-2) and the error code."""

    def __init__(self, location: str, code: ErrorCode, reason: str, *,
                 ack_code: str = "AE") -> None:
        super().__init__(f"{location}: {reason}" if location else reason)
        self.location = location
        self.code = code
        self.reason = reason
        self.ack_code = ack_code


def rejected(reason: str) -> Hl7Error:
    """Not an HL7 v2 message at all (AR, nothing to apply)."""
    return Hl7Error("MSH", ErrorCode.SEGMENT_SEQUENCE, reason, ack_code="AR")


# -- reading ---------------------------------------------------------------------------------

SUPPORTED: dict[str, frozenset[str]] = {
    "ADT": frozenset({"A01", "A04", "A08", "A28", "A31", "A40", "A47"}),
    "ORM": frozenset({"O01"}),
    "OMI": frozenset({"O23"}),
    "ORU": frozenset({"R01"}),
}


@dataclass(frozen=True)
class Header:
    """MSH: who sent what."""

    sending_application: str
    sending_facility: str
    code: str  # MSH-9.1, e.g. ADT
    trigger: str  # MSH-9.2, e.g. A40
    control_id: str  # MSH-10
    sent_at: datetime | None  # MSH-7
    charset: str  # MSH-18

    @property
    def message_type(self) -> str:
        return f"{self.code}^{self.trigger}" if self.trigger else self.code


@dataclass(frozen=True)
class PatientUpdate:
    """ADT A01/A04/A08/A28/A31: create the patient, or update its demographics."""

    patient: PatientRecord


@dataclass(frozen=True)
class Merge:
    """ADT A40 (merge `prior` into `survivor`) or A47 (`change_id`: `prior`'s row takes
    the survivor's identity)."""

    survivor: PatientRecord
    prior: PatientIdentity
    change_id: bool = False


class Control(StrEnum):
    """ORC-1, order control codes (HL7 table 0119) that act on the worklist."""

    NEW = "NW"
    CANCEL = "CA"
    DISCONTINUE = "DC"
    STATUS_CHANGED = "SC"


@dataclass(frozen=True)
class OrderControl:
    """ORM^O01 / OMI^O23: place (NW, with `step`) or change an order found by accession
    number or placer order number."""

    control: Control
    patient: PatientRecord
    accession_number: str | None
    placer_order_number: str | None
    step: ScheduledStep | None = None  # NW
    status: OrderStatus | None = None  # CA, DC, SC


@dataclass(frozen=True)
class Report:
    """ORU^R01 with a final (F) or corrected (C) result: the report time of an exam."""

    patient: PatientRecord
    accession_number: str
    result_status: str
    reported_at: datetime


Parsed = PatientUpdate | Merge | OrderControl | Report


def parse(text: str) -> hl7.Message:
    """The message of an MLLP block's text (an `Hl7Error` AR if it is none)."""
    if not text.startswith("MSH"):
        raise rejected("not an HL7 v2 message (it does not begin with MSH)")
    try:
        message = hl7.parse(text.replace("\r\n", "\r").replace("\n", "\r"))
        message.segment("MSH")
    except Exception as exc:  # python-hl7 raises ParseException, KeyError, IndexError
        raise rejected(f"not a readable HL7 v2 message ({type(exc).__name__})") from None
    return message


def _header(message: _Reader, zone: str) -> Header:
    def get(field: int, component: int = 1) -> str:
        return _value(message, "MSH", field, component)

    try:
        sent_at = _time_or_none(message, "MSH", 7, zone)
    except Hl7Error:
        sent_at = None  # only a fallback for OBR-22: not worth refusing a message for
    return Header(sending_application=get(3), sending_facility=get(4), code=get(9, 1),
                  trigger=get(9, 2), control_id=get(10), sent_at=sent_at, charset=get(18))


@dataclass(frozen=True)
class Opened:
    """A message's header and PID-3 (what its log row keeps), its segments found once;
    `read()` gives the rest."""

    header: Header
    patient_id: str | None  # PID-3's first ID, None without one
    reader: _Reader
    zone: str

    def read(self) -> Parsed:
        """The domain object of a supported message; `Hl7Error` for anything else."""
        head, reader = self.header, self.reader
        if head.code not in SUPPORTED:
            raise Hl7Error("MSH-9", ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
                           f"message type {head.code!r} is not supported", ack_code="AR")
        if head.trigger not in SUPPORTED[head.code]:
            raise Hl7Error("MSH-9", ErrorCode.UNSUPPORTED_EVENT_CODE,
                           f"{head.code} event {head.trigger!r} is not supported",
                           ack_code="AR")
        try:
            if head.code == "ADT":
                return _adt(reader, head.trigger)
            if head.code == "ORU":
                return _report(reader, head, self.zone)
            return _order(reader, head.code, self.zone)
        except InvalidOrder as exc:
            raise error_of(exc, head.code) from None


def open_message(message: hl7.Message, zone: str) -> Opened:
    """`message` opened for reading; `zone` is the region's time zone, for HL7 times
    without an offset."""
    reader = _Reader(message)
    pid = _value(reader, "PID", 3)
    return Opened(_header(reader, zone), pid if pid and pid != '""' else None, reader, zone)


def read(message: hl7.Message, zone: str) -> Parsed:
    """The domain object of a supported message (`open_message(...).read()`)."""
    return open_message(message, zone).read()


def error_of(exc: InvalidOrder, code: str, *,
             error: ErrorCode = ErrorCode.DATA_TYPE) -> Hl7Error:
    """The ERR of a domain refusal: the HL7 field that carried the DICOM attribute."""
    fields = _OMI_FIELDS if code == "OMI" else _ORM_FIELDS
    return Hl7Error(fields.get(exc.field, exc.field), error, exc.reason)


# Where each attribute of `vna.orders` comes from, for the ERR of a refusal.
_PATIENT_FIELDS = {"PatientID": "PID-3", "PatientBirthDate": "PID-7", "PatientSex": "PID-8",
                   "PatientName": "PID-5"}
_ORM_FIELDS = {**_PATIENT_FIELDS, "AccessionNumber": "OBR-18", "Modality": "OBR-24",
               "RequestedProcedureID": "OBR-19", "ScheduledProcedureStepID": "OBR-20",
               "RequestedProcedureDescription": "OBR-4",
               "ScheduledProcedureStepDescription": "OBR-4",
               "StudyInstanceUID": "ZDS-1", "ScheduledStationAETitle": "OBR-21",
               "ScheduledProcedureStepStartDateTime": "OBR-27",
               "ReferringPhysicianName": "PV1-8", "RequestingPhysician": "ORC-12",
               "department": "PV1-3", "priority": "OBR-27",
               "PlacerOrderNumber": "ORC-2", "FillerOrderNumber": "ORC-3",
               "order": "ORC-2", "status": "ORC-1"}
_OMI_FIELDS = {**_ORM_FIELDS, "AccessionNumber": "IPC-1", "RequestedProcedureID": "IPC-2",
               "StudyInstanceUID": "IPC-3", "ScheduledProcedureStepID": "IPC-4",
               "Modality": "IPC-5", "ScheduledStationName": "IPC-7",
               "ScheduledStationAETitle": "IPC-9",
               "ScheduledProcedureStepStartDateTime": "TQ1-7", "priority": "TQ1-9"}


class _Reader:
    """A message with its segments found once (python-hl7 looks each up by a scan)."""

    def __init__(self, message: hl7.Message) -> None:
        self.message = message
        self.segments: dict[str, hl7.Segment] = {}
        for segment in message:
            self.segments.setdefault(str(segment[0][0]), segment)


def _has(message: _Reader, segment: str) -> bool:
    return segment in message.segments


def _value(message: _Reader, segment: str, field: int, component: int = 1,
           subcomponent: int = 1, repeat: int = 1) -> str:
    """One value, unescaped; "" if the segment or field is absent. HL7's explicit null
    (`""`) is returned as `""` (two quotes): `_text` makes it a delete."""
    found = message.segments.get(segment)
    if found is None:
        return ""
    try:
        raw = found.extract_field(1, field, repeat, component, subcomponent)
    except (IndexError, KeyError):
        return ""
    value = str(raw or "").strip()
    if "\\" not in value or value == '""':  # nothing escaped
        return value
    return str(message.message.unescape(value))


def _text(message: _Reader, segment: str, field: int, component: int = 1,
          subcomponent: int = 1) -> str | None:
    """None when not sent (keep what is there), "" for HL7's `""` (delete it)."""
    value = _value(message, segment, field, component, subcomponent)
    if value == '""':
        return ""
    return value or None


_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?"
                 r"([+-]\d{4})?$")


def parse_ts(value: str, zone: str) -> datetime:
    """An HL7 TS/DTM (`YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`) as an aware
    datetime; without an offset it is the region's local time."""
    m = _TS.match(value)
    if not m:
        raise ValueError(f"{value!r} is not an HL7 date/time")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    if offset:
        sign = 1 if offset[0] == "+" else -1
        tz: timezone | ZoneInfo = timezone(sign * timedelta(hours=int(offset[1:3]),
                                                            minutes=int(offset[3:5])))
    else:
        tz = ZoneInfo(zone)
    return datetime(int(year), int(month or 1), int(day or 1), int(hour or 0),
                    int(minute or 0), int(second or 0),
                    int((frac or "0").ljust(6, "0")[:6]), tzinfo=tz)


def _time_or_none(message: _Reader, segment: str, field: int, zone: str,
                  component: int = 1) -> datetime | None:
    value = _value(message, segment, field, component)
    if not value or value == '""':
        return None
    try:
        return parse_ts(value, zone)
    except ValueError:
        raise Hl7Error(f"{segment}-{field}", ErrorCode.DATA_TYPE,
                       f"{value!r} is not an HL7 date/time") from None


# -- patients ----------------------------------------------------------------------------------

def _identity(message: _Reader, segment: str, field: int) -> PatientIdentity:
    """A CX (ID^check digit^scheme^assigning authority): the first repetition with an ID,
    its issuer the assigning authority's namespace (else its universal ID), as
    dcm4chee-arc maps PID-3 to PatientID and IssuerOfPatientID."""
    location = f"{segment}-{field}"
    if not _has(message, segment):
        raise Hl7Error(segment, ErrorCode.SEGMENT_SEQUENCE, f"no {segment} segment")
    for repeat in range(1, 11):
        pid = _value(message, segment, field, 1, repeat=repeat)
        if pid and pid != '""':
            issuer = (_value(message, segment, field, 4, 1, repeat=repeat)
                      or _value(message, segment, field, 4, 2, repeat=repeat))
            if issuer == '""':
                issuer = ""
            if len(pid) > 64 or any(c in pid for c in "\\*?"):
                raise Hl7Error(location, ErrorCode.DATA_TYPE, f"{pid!r} is not a Patient ID")
            if len(issuer) > 64:
                raise Hl7Error(f"{location}.4", ErrorCode.DATA_TYPE, "issuer too long")
            return PatientIdentity(pid, issuer)
        if not _value(message, segment, field, 1, repeat=repeat + 1):
            break
    raise Hl7Error(location, ErrorCode.REQUIRED_FIELD_MISSING, "no patient identifier")


def person_name(message: _Reader, segment: str, field: int) -> str | None:
    """An XPN (family^given^middle^suffix^prefix) as a DICOM PN
    (family^given^middle^prefix^suffix), trailing empty components dropped."""
    family = _text(message, segment, field, 1)
    if family == "":
        return ""
    parts = [family or "", *(_value(message, segment, field, c) for c in (2, 3, 5, 4))]
    parts = ["" if p == '""' else p for p in parts]
    name = "^".join(parts).rstrip("^")
    return name or None


_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "U": ""}


def _patient(message: _Reader) -> PatientRecord:
    identity = _identity(message, "PID", 3)
    birth = _text(message, "PID", 7)
    if birth:
        if not re.fullmatch(r"\d{8}.*", birth):
            raise Hl7Error("PID-7", ErrorCode.DATA_TYPE, f"{birth!r} is not a date of birth")
        birth = birth[:8]
    sex = _text(message, "PID", 8)
    if sex:
        if sex.upper() not in _SEX:
            raise Hl7Error("PID-8", ErrorCode.TABLE_VALUE_NOT_FOUND,
                           f"{sex!r} is not in HL7 table 0001")
        sex = _SEX[sex.upper()]
    name = person_name(message, "PID", 5)
    if name and len(name) > 324:
        raise Hl7Error("PID-5", ErrorCode.DATA_TYPE, "longer than 324 characters")
    try:
        return PatientRecord(identity, name=name, birth_date=birth, sex=sex)
    except InvalidOrder as exc:
        raise error_of(exc, "ADT") from None


def _adt(message: _Reader, trigger: str) -> Parsed:
    patient = _patient(message)
    if trigger not in ("A40", "A47"):
        return PatientUpdate(patient)
    prior = _identity(message, "MRG", 1)
    if prior.matches(patient.identity):
        raise Hl7Error("MRG-1", ErrorCode.DATA_TYPE,
                       "the prior patient is the patient itself")
    return Merge(patient, prior, change_id=trigger == "A47")


# -- orders and reports --------------------------------------------------------------------------

_STATUS_OF_CONTROL = {Control.CANCEL: OrderStatus.CANCELLED,
                      Control.DISCONTINUE: OrderStatus.DISCONTINUED}
# ORC-5, order status (HL7 table 0038), for SC
_STATUS_OF_ORC5 = {"SC": OrderStatus.SCHEDULED, "IP": OrderStatus.IN_PROGRESS,
                   "CM": OrderStatus.COMPLETED, "CA": OrderStatus.CANCELLED,
                   "DC": OrderStatus.DISCONTINUED}
# TQ1-9 / ORC-7.6 / OBR-27.6 priority (HL7 table 0485) as DICOM RequestedProcedurePriority
_PRIORITY = {"S": "STAT", "A": "HIGH", "P": "MEDIUM", "C": "MEDIUM", "R": "ROUTINE",
             "T": "MEDIUM"}


def _first(*values: str) -> str | None:
    return next((v for v in values if v and v != '""'), None)


def _accession(message: _Reader, code: str) -> str | None:
    """IPC-1 (OMI), else OBR-18, else the filler order number (ORC-3, OBR-3), as
    dcm4chee-arc's order and report mappings take it."""
    return _first(_value(message, "IPC", 1) if code == "OMI" else "",
                  _value(message, "OBR", 18), _value(message, "ORC", 3),
                  _value(message, "OBR", 3))


def _order(message: _Reader, code: str, zone: str) -> OrderControl:
    control_value = _value(message, "ORC", 1)
    if not control_value:
        raise Hl7Error("ORC-1", ErrorCode.REQUIRED_FIELD_MISSING, "no order control code")
    try:
        control = Control(control_value)
    except ValueError:
        raise Hl7Error("ORC-1", ErrorCode.TABLE_VALUE_NOT_FOUND,
                       f"order control {control_value!r} is not one of NW, CA, DC, SC"
                       ) from None
    patient = _patient(message)
    accession = _accession(message, code)
    placer = _first(_value(message, "ORC", 2), _value(message, "OBR", 2))
    if control is not Control.NEW:
        if control is Control.STATUS_CHANGED:
            orc5 = _value(message, "ORC", 5)
            if orc5 not in _STATUS_OF_ORC5:
                raise Hl7Error("ORC-5", ErrorCode.TABLE_VALUE_NOT_FOUND,
                               f"order status {orc5!r} is not one of "
                               f"{', '.join(_STATUS_OF_ORC5)}")
            status = _STATUS_OF_ORC5[orc5]
        else:
            status = _STATUS_OF_CONTROL[control]
        if not accession and not placer:
            raise Hl7Error("ORC-2", ErrorCode.REQUIRED_FIELD_MISSING,
                           "neither a placer order number nor an accession number")
        return OrderControl(control, patient, accession, placer, status=status)
    fields = _OMI_FIELDS if code == "OMI" else _ORM_FIELDS
    if not accession:
        raise Hl7Error(fields["AccessionNumber"], ErrorCode.REQUIRED_FIELD_MISSING,
                       "no accession number")
    modality = _first(_value(message, "IPC", 5) if code == "OMI" else "",
                      _value(message, "OBR", 24))
    if not modality:
        raise Hl7Error(fields["Modality"], ErrorCode.REQUIRED_FIELD_MISSING, "no modality")
    scheduled_at = (_time_or_none(message, "TQ1", 7, zone)
                    or _time_or_none(message, "OBR", 27, zone, component=4)
                    or _time_or_none(message, "ORC", 7, zone, component=4))
    if scheduled_at is None:
        raise Hl7Error(fields["ScheduledProcedureStepStartDateTime"],
                       ErrorCode.REQUIRED_FIELD_MISSING, "no scheduled start time")
    priority = _first(_value(message, "TQ1", 9), _value(message, "OBR", 27, 6),
                      _value(message, "ORC", 7, 6))
    description = _first(_value(message, "OBR", 4, 2), _value(message, "OBR", 4, 1))
    placed_at = _time_or_none(message, "ORC", 9, zone)
    referral_at = _time_or_none(message, "OBR", 6, zone) or placed_at
    study_uid = _first(_value(message, "IPC", 3) if code == "OMI" else "",
                       _value(message, "ZDS", 1))
    step_id = _first(_value(message, "IPC", 4) if code == "OMI" else "",
                     _value(message, "OBR", 20))
    procedure_id = _first(_value(message, "IPC", 2) if code == "OMI" else "",
                          _value(message, "OBR", 19))
    extra: dict[str, str] = {}
    if study_uid:
        extra["study_instance_uid"] = study_uid
    step = ScheduledStep(
        patient=patient, accession_number=accession, modality=modality,
        scheduled_at=scheduled_at,
        requested_procedure_id=procedure_id or "",
        requested_procedure_description=description,
        scheduled_procedure_step_id=step_id or "",
        scheduled_procedure_step_description=description,
        scheduled_station_aet=_value(message, "IPC", 9) or None,
        scheduled_station_name=_value(message, "IPC", 7) or None,
        referring_physician_name=_xcn(message, "PV1", 8),
        requesting_physician_name=_xcn(message, "ORC", 12) or _xcn(message, "OBR", 16),
        department=_value(message, "PV1", 3) or None,
        priority=_PRIORITY.get(priority or "", priority),
        placer_order_number=placer,
        filler_order_number=_first(_value(message, "ORC", 3), _value(message, "OBR", 3)),
        referral_at=referral_at, placed_at=placed_at, **extra)
    return OrderControl(control, patient, accession, placer, step=step)


def _xcn(message: _Reader, segment: str, field: int) -> str | None:
    """An XCN (ID^family^given^middle^suffix^prefix) as a DICOM PN."""
    parts = [_value(message, segment, field, c) for c in (2, 3, 4, 6, 5)]
    name = "^".join("" if p == '""' else p for p in parts).rstrip("^")
    return name or None


def _report(message: _Reader, head: Header, zone: str) -> Report:
    patient = _patient(message)
    status = _value(message, "OBR", 25)
    if not status:
        raise Hl7Error("OBR-25", ErrorCode.REQUIRED_FIELD_MISSING, "no result status")
    accession = _accession(message, "ORU")
    if not accession:
        raise Hl7Error("OBR-18", ErrorCode.REQUIRED_FIELD_MISSING, "no accession number")
    if len(accession) > 16:
        raise Hl7Error("OBR-18", ErrorCode.DATA_TYPE, "longer than 16 characters")
    reported_at = _time_or_none(message, "OBR", 22, zone) or head.sent_at
    if reported_at is None:
        raise Hl7Error("OBR-22", ErrorCode.REQUIRED_FIELD_MISSING, "no report time")
    return Report(patient, accession, status.upper()[:2], reported_at)


# -- answering ---------------------------------------------------------------------------------

_FALLBACK_MSH = "MSH|^~\\&|||||||ACK^ACK||P|2.5"


def ack(message: hl7.Message | None, ack_code: str, error: Hl7Error | None = None,
        *, application: str = "VNA", facility: str = "") -> hl7.Message:
    """The original-mode ACK of `message` (python-hl7's `create_ack`: its MSH mirrors the
    sender's), with MSA-3 and an ERR segment (ERR-2 location, ERR-3 code, ERR-4
    severity, ERR-8 the reason) when `error` is given. A block that was no HL7 message
    gets an ACK with an empty MSH."""
    source = message if message is not None else hl7.parse(_FALLBACK_MSH)
    try:
        answer = source.create_ack(ack_code, application=application, facility=facility)
    except Exception:  # an MSH python-hl7 cannot mirror (e.g. MSH-9 without components)
        answer = hl7.parse(_FALLBACK_MSH).create_ack(ack_code, application=application,
                                                     facility=facility)
        with contextlib.suppress(Exception):  # MSA-2: the sender's control ID if readable
            answer.segment("MSA").assign_field(str(source.segment("MSH")(10)), 2)
    if error is None:
        return answer
    msa = answer.segment("MSA")
    msa.assign_field(_escape(answer, error.reason)[:80], 3)
    err = answer.create_segment([answer.create_field(["ERR"])])
    segment, _, rest = error.location.partition("-")
    field, _, component = rest.partition(".")
    if segment:
        err.assign_field(segment, 2, 1, 1)
        err.assign_field("1", 2, 1, 2)
    if field:
        err.assign_field(field, 2, 1, 3)
        err.assign_field("1", 2, 1, 4)
    if component:
        err.assign_field(component, 2, 1, 5)
    err.assign_field(error.code.value, 3, 1, 1)
    err.assign_field(error.code.text, 3, 1, 2)
    err.assign_field("HL70357", 3, 1, 3)
    err.assign_field("E", 4)
    err.assign_field(_escape(answer, error.reason), 8)
    answer.append(err)
    return answer


def _escape(message: hl7.Message, text: str) -> str:
    return str(message.escape(text.replace("\r", " ").replace("\n", " ")))
