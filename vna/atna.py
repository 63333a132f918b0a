"""Audit messages for an IHE ATNA audit record repository (DICOM PS3.15 A.5), and the
RFC 5424 syslog frames that carry them (RFC 5425 over TLS, RFC 5426 over UDP).

One `audit_event` row becomes one message: what happened (EventIdentification, its
EventID from the DICOM "DCM" code set), who took part (the requestor: token or calling AE
title and network address; the archive itself), the archive as the audit source, and the
patient and studies touched as participant objects. Only identifiers go out, never names:
the audit repository is a second copy of who accessed whom, not of patient data.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from xml.etree import ElementTree as ET


class DicomAction(StrEnum):
    """The audit trail's names for DICOM accesses (`audit_event.action`, protocol dicom)."""

    ASSOCIATION = "dicom.association"  # accepted (at its end) or rejected
    STORE = "dicom.store"  # one record per association and study
    FIND = "dicom.find"  # Query/Retrieve C-FIND
    GET = "dicom.get"
    MOVE = "dicom.move"
    WORKLIST = "dicom.worklist"  # Modality Worklist C-FIND
    MPPS = "dicom.mpps"  # N-CREATE / N-SET
    COMMITMENT = "dicom.commitment"  # Storage Commitment N-ACTION


@dataclass(frozen=True)
class Code:
    """A coded value as the schema writes it (csd-code, codeSystemName, originalText)."""

    code: str
    system: str
    meaning: str

    def element(self, parent: ET.Element, tag: str) -> ET.Element:
        return ET.SubElement(parent, tag, {"csd-code": self.code,
                                           "codeSystemName": self.system,
                                           "originalText": self.meaning})


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


# EventID (PS3.16 CID 400)
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
INSTANCES_ACCESSED = _dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
EXPORT = _dcm("110106", "Export")
IMPORT = _dcm("110107", "Import")
ORDER_RECORD = _dcm("110109", "Order Record")
PATIENT_RECORD = _dcm("110110", "Patient Record")
PROCEDURE_RECORD = _dcm("110111", "Procedure Record")
QUERY = _dcm("110112", "Query")
USER_AUTHENTICATION = _dcm("110114", "User Authentication")
SECURITY_ALERT = _dcm("110113", "Security Alert")
# EventTypeCode
LOGIN = _dcm("110122", "Login")
LOGOUT = _dcm("110123", "Logout")
USER_SECURITY_ATTRIBUTES_CHANGED = _dcm("110137", "User security Attributes Changed")
# RoleIDCode (CID 402)
SOURCE = _dcm("110153", "Source Role ID")
DESTINATION = _dcm("110152", "Destination Role ID")
APPLICATION = _dcm("110150", "Application")
# ParticipantObjectIDTypeCode
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID = _dcm("110181", "SOP Class UID")
APPLICATION_SERVER = Code("4", "DCM", "Application Server")  # AuditSourceTypeCode

EVENT_IDS = frozenset(c.code for c in (
    APPLICATION_ACTIVITY, AUDIT_LOG_USED, INSTANCES_ACCESSED, INSTANCES_TRANSFERRED, EXPORT,
    IMPORT, ORDER_RECORD, PATIENT_RECORD, PROCEDURE_RECORD, QUERY, USER_AUTHENTICATION,
    SECURITY_ALERT))

OUTCOMES = {"success": 0, "partial": 4, "refused": 4, "denied": 4, "aborted": 4,
            "error": 8}


@dataclass(frozen=True)
class Event:
    """What an action is in ATNA terms: its EventID, EventActionCode (C R U D E), an
    EventTypeCode when the EventID needs one, and whether the requestor sent data to
    the archive (Source role) or received it (Destination)."""

    event_id: Code
    action_code: str
    type_code: Code | None = None
    requestor_sends: bool = False


_EVENTS: dict[str, Event] = {
    DicomAction.ASSOCIATION: Event(USER_AUTHENTICATION, "E", LOGIN),
    DicomAction.STORE: Event(INSTANCES_TRANSFERRED, "C", requestor_sends=True),
    DicomAction.FIND: Event(QUERY, "E"),
    DicomAction.GET: Event(INSTANCES_TRANSFERRED, "R"),
    DicomAction.MOVE: Event(INSTANCES_TRANSFERRED, "R"),
    DicomAction.WORKLIST: Event(QUERY, "E"),
    DicomAction.MPPS: Event(PROCEDURE_RECORD, "U", requestor_sends=True),
    DicomAction.COMMITMENT: Event(INSTANCES_ACCESSED, "R"),
    "session.create": Event(USER_AUTHENTICATION, "E", LOGIN),
    "session.end": Event(USER_AUTHENTICATION, "E", LOGOUT),
    "dicomweb.query": Event(QUERY, "E"),
    "document.find": Event(QUERY, "E"),
    "dicomweb.retrieve": Event(INSTANCES_TRANSFERRED, "R"),
    "dicomweb.store": Event(INSTANCES_TRANSFERRED, "C", requestor_sends=True),
    "document.create": Event(IMPORT, "C", requestor_sends=True),
    "document.replace": Event(IMPORT, "U", requestor_sends=True),
    "document.review": Event(PATIENT_RECORD, "U"),
    "document.read": Event(PATIENT_RECORD, "R"),
    "document.content": Event(EXPORT, "R"),
    "timeline.read": Event(PATIENT_RECORD, "R"),
    "worklist.read": Event(ORDER_RECORD, "R"),
    "worklist.write": Event(ORDER_RECORD, "U", requestor_sends=True),
    "hl7.list": Event(PATIENT_RECORD, "R"),
    "token.create": Event(USER_AUTHENTICATION, "C", USER_SECURITY_ATTRIBUTES_CHANGED),
    "token.revoke": Event(USER_AUTHENTICATION, "D", USER_SECURITY_ATTRIBUTES_CHANGED),
    "token.rotate": Event(USER_AUTHENTICATION, "U", USER_SECURITY_ATTRIBUTES_CHANGED),
    "audit.list": Event(AUDIT_LOG_USED, "R"),
}
_OTHER = Event(APPLICATION_ACTIVITY, "E")


def event_for(action: str, method: str = "") -> Event:
    """The ATNA event of an audit trail action (an unknown one is Application Activity)."""
    event = _EVENTS.get(action, _OTHER)
    if action == DicomAction.MPPS and method == "N-CREATE":
        return Event(PROCEDURE_RECORD, "C", requestor_sends=True)
    return event


@dataclass(frozen=True)
class AuditEntry:
    """An audit trail record, as the message needs it (a plain copy of `audit_event`)."""

    at: datetime
    action: str
    method: str
    outcome: str
    protocol: str = "http"
    token_id: str | None = None
    role: str | None = None
    calling_aet: str | None = None
    client: str | None = None
    tls_identity: str | None = None
    patient_id: str | None = None
    studies: Sequence[str] = field(default_factory=tuple)
    instances: int | None = None
    resource: str | None = None
    route: str = ""


@dataclass(frozen=True)
class AuditSource:
    """The archive as the audit source and as a participant."""

    source_id: str  # AuditSourceID: the DICOM AE title
    host: str  # NetworkAccessPointID
    site: str | None = None  # AuditEnterpriseSiteID


def message(entry: AuditEntry, source: AuditSource) -> bytes:
    """The DICOM Audit Message (PS3.15 A.5.1) of one audit trail record, UTF-8 XML."""
    event = event_for(entry.action, entry.method)
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": event.action_code,
        "EventDateTime": _datetime(entry.at),
        "EventOutcomeIndicator": str(OUTCOMES.get(entry.outcome, 8)),
    })
    event.event_id.element(ident, "EventID")
    if event.type_code is not None:
        event.type_code.element(ident, "EventTypeCode")
    if entry.outcome != "success":
        ET.SubElement(ident, "EventOutcomeDescription").text = entry.outcome
    _requestor(root, entry, event)
    _archive(root, source, event)
    src = ET.SubElement(root, "AuditSourceIdentification",
                        {"AuditSourceID": source.source_id}
                        | ({"AuditEnterpriseSiteID": source.site} if source.site else {}))
    APPLICATION_SERVER.element(src, "AuditSourceTypeCode")
    if entry.patient_id:
        patient = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": entry.patient_id,
            "ParticipantObjectTypeCode": "1",  # person
            "ParticipantObjectTypeCodeRole": "1",  # patient
        })
        PATIENT_NUMBER.element(patient, "ParticipantObjectIDTypeCode")
    for uid in entry.studies or ():
        study = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": uid,
            "ParticipantObjectTypeCode": "2",  # system object
            "ParticipantObjectTypeCodeRole": "3",  # report
        })
        STUDY_INSTANCE_UID.element(study, "ParticipantObjectIDTypeCode")
        if entry.instances is not None and len(entry.studies) == 1:
            ET.SubElement(study, "ParticipantObjectDetail",
                          {"type": "NumberOfInstances",
                           "value": _b64(str(entry.instances))})
    if event.event_id == QUERY:
        query = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": entry.route or entry.action,
            "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3",
        })
        SOP_CLASS_UID.element(query, "ParticipantObjectIDTypeCode")
        # the keys queried, never their values (those may be names)
        ET.SubElement(query, "ParticipantObjectQuery").text = _b64(entry.resource or "")
    return b'<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="utf-8",
                                                                   xml_declaration=False)


def _requestor(root: ET.Element, entry: AuditEntry, event: Event) -> None:
    user = entry.calling_aet or entry.token_id or "anonymous"
    attrs = {"UserID": user, "UserIsRequestor": "true"}
    if entry.tls_identity:
        attrs["AlternativeUserID"] = entry.tls_identity
    if entry.role:
        attrs["UserName"] = entry.role
    if entry.client:
        attrs["NetworkAccessPointID"] = entry.client
        attrs["NetworkAccessPointTypeCode"] = "2"  # IP address
    p = ET.SubElement(root, "ActiveParticipant", attrs)
    if event.event_id == INSTANCES_TRANSFERRED:
        (SOURCE if event.requestor_sends else DESTINATION).element(p, "RoleIDCode")


def _archive(root: ET.Element, source: AuditSource, event: Event) -> None:
    p = ET.SubElement(root, "ActiveParticipant", {
        "UserID": source.source_id, "UserIsRequestor": "false",
        "NetworkAccessPointID": source.host, "NetworkAccessPointTypeCode": "1"})
    if event.event_id == INSTANCES_TRANSFERRED:
        (DESTINATION if event.requestor_sends else SOURCE).element(p, "RoleIDCode")
    else:
        APPLICATION.element(p, "RoleIDCode")


def _datetime(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


# -- syslog (RFC 5424) ------------------------------------------------------------------------

FACILITY_AUTHPRIV = 10  # security/authorization messages, as IHE ATNA asks
SEVERITY_NOTICE = 5
APP_NAME = "vna"
MSG_ID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"


def syslog_message(xml: bytes, *, hostname: str, at: datetime, procid: str = "-") -> bytes:
    """An RFC 5424 SYSLOG-MSG carrying one audit message (UTF-8, with the BOM)."""
    pri = FACILITY_AUTHPRIV * 8 + SEVERITY_NOTICE
    header = f"<{pri}>1 {_datetime(at)} {_field(hostname, 255)} {APP_NAME} " \
             f"{_field(procid, 128)} {MSG_ID} -"
    return header.encode("ascii") + b" " + BOM + xml


def octet_counted(msg: bytes) -> bytes:
    """The RFC 5425 (TLS) / RFC 6587 frame: MSG-LEN SP SYSLOG-MSG."""
    return str(len(msg)).encode("ascii") + b" " + msg


@dataclass(frozen=True)
class SyslogTarget:
    """Where the messages go: `VNA_AUDIT_SYSLOG` parsed."""

    transport: str  # "tcp+tls" | "tcp" | "udp"
    host: str
    port: int

    DEFAULT_PORTS = {"tcp+tls": 6514, "tcp": 601, "udp": 514}

    @classmethod
    def parse(cls, url: str) -> SyslogTarget:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in cls.DEFAULT_PORTS:
            raise ValueError(f"{url!r}: expected tcp+tls://host:port, udp://host:port or "
                             "tcp://host:port")
        rest = rest.rstrip("/")
        host, colon, port = rest.rpartition(":") if not rest.endswith("]") else (rest, "", "")
        if not colon:
            host, port = rest, str(cls.DEFAULT_PORTS[scheme])
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{url!r}: a host and a port from 1 to 65535 are needed")
        return cls(scheme, host, int(port))


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, or the nil value."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"
