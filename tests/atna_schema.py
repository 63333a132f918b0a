"""The DICOM Audit Message schema (PS3.15 A.5.1, the RELAX NG one), as a table the tests
check messages against: every element's allowed and required attributes, its children
(with their order at the top), coded values' attributes and the codes defined for them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

CODED = {"csd-code", "codeSystemName", "displayName", "originalText"}
CODED_REQUIRED = {"csd-code", "codeSystemName", "originalText"}


@dataclass
class Rule:
    attributes: set[str]
    required: set[str] = field(default_factory=set)
    children: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # min, max
    coded: bool = False
    text: bool = False


RULES: dict[str, Rule] = {
    "AuditMessage": Rule(set(), children={
        "EventIdentification": (1, 1), "ActiveParticipant": (1, None),
        "AuditSourceIdentification": (1, 1),
        "ParticipantObjectIdentification": (0, None)}),
    "EventIdentification": Rule(
        {"EventActionCode", "EventDateTime", "EventOutcomeIndicator"},
        {"EventDateTime", "EventOutcomeIndicator"},
        {"EventID": (1, 1), "EventTypeCode": (0, None), "EventOutcomeDescription": (0, 1),
         "PurposeOfUse": (0, None)}),
    "EventID": Rule(CODED, CODED_REQUIRED, coded=True),
    "EventTypeCode": Rule(CODED, CODED_REQUIRED, coded=True),
    "EventOutcomeDescription": Rule(set(), text=True),
    "ActiveParticipant": Rule(
        {"UserID", "AlternativeUserID", "UserName", "UserIsRequestor", "NetworkAccessPointID",
         "NetworkAccessPointTypeCode", "MediaIdentifier"},
        {"UserID", "UserIsRequestor"}, {"RoleIDCode": (0, None), "MediaType": (0, 1)}),
    "RoleIDCode": Rule(CODED, CODED_REQUIRED, coded=True),
    "AuditSourceIdentification": Rule({"AuditEnterpriseSiteID", "AuditSourceID"},
                                      {"AuditSourceID"}, {"AuditSourceTypeCode": (0, None)}),
    "AuditSourceTypeCode": Rule(CODED, CODED_REQUIRED, coded=True),
    "ParticipantObjectIdentification": Rule(
        {"ParticipantObjectID", "ParticipantObjectTypeCode", "ParticipantObjectTypeCodeRole",
         "ParticipantObjectDataLifeCycle", "ParticipantObjectSensitivity"},
        {"ParticipantObjectID"},
        {"ParticipantObjectIDTypeCode": (1, 1), "ParticipantObjectName": (0, 1),
         "ParticipantObjectQuery": (0, 1), "ParticipantObjectDetail": (0, None),
         "ParticipantObjectDescription": (0, None), "SOPClass": (0, None),
         "Accession": (0, None), "MPPS": (0, None), "ParticipantObjectContainsStudy": (0, 1),
         "Encrypted": (0, 1), "Anonymized": (0, 1)}),
    "ParticipantObjectIDTypeCode": Rule(CODED, CODED_REQUIRED, coded=True),
    "ParticipantObjectQuery": Rule(set(), text=True),
    "ParticipantObjectDetail": Rule({"type", "value"}, {"type", "value"}),
}
TOP_ORDER = ["EventIdentification", "ActiveParticipant", "AuditSourceIdentification",
             "ParticipantObjectIdentification"]
VALUES = {
    "EventActionCode": {"C", "R", "U", "D", "E"},
    "EventOutcomeIndicator": {"0", "4", "8", "12"},
    "UserIsRequestor": {"true", "false"},
    "NetworkAccessPointTypeCode": {"1", "2", "3", "4", "5"},
    "ParticipantObjectTypeCode": {"1", "2", "3", "4"},
    "ParticipantObjectTypeCodeRole": {str(i) for i in range(1, 25)},
}
# PS3.16 CID 400 (Audit Event ID), CID 401 (type codes used here), CID 402 (roles),
# CID 404 (participant object ID types), and RFC 3881's
DCM_CODES = {
    "EventID": {"110100", "110101", "110102", "110103", "110104", "110105", "110106",
                "110107", "110108", "110109", "110110", "110111", "110112", "110113",
                "110114"},
    "EventTypeCode": {"110120", "110121", "110122", "110123", "110124", "110125",
                      "110126", "110127", "110128", "110129", "110130", "110131",
                      "110132", "110133", "110134", "110135", "110136", "110137",
                      "110138", "110139", "110140", "110141", "110142"},
    "RoleIDCode": {"110150", "110151", "110152", "110153", "110154", "110155"},
    "ParticipantObjectIDTypeCode": {"110180", "110181", "110182"},
}
RFC3881_ID_TYPES = {str(i) for i in range(1, 13)}
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def check(xml: bytes) -> ET.Element:
    """The parsed message; AssertionError naming what breaks the schema."""
    root = ET.fromstring(xml)
    assert root.tag == "AuditMessage", root.tag
    order = [TOP_ORDER.index(c.tag) for c in root if c.tag in TOP_ORDER]
    assert order == sorted(order), "AuditMessage children out of order"
    _check(root)
    return root


def _check(el: ET.Element) -> None:
    rule = RULES.get(el.tag)
    assert rule is not None, f"element {el.tag} is not in the schema"
    extra = set(el.attrib) - rule.attributes
    assert not extra, f"{el.tag}: attributes {extra} are not in the schema"
    missing = rule.required - set(el.attrib)
    assert not missing, f"{el.tag}: required attributes {missing} missing"
    for name, value in el.attrib.items():
        if name in VALUES:
            assert value in VALUES[name], f"{el.tag}@{name}={value!r}"
    if el.tag == "EventIdentification":
        assert DATETIME.match(el.attrib["EventDateTime"]), el.attrib["EventDateTime"]
    if el.tag == "ParticipantObjectDetail":
        assert BASE64.match(el.attrib["value"])
    if el.tag == "ParticipantObjectQuery":
        assert BASE64.match(el.text or "")
    if rule.coded:
        system, code = el.attrib["codeSystemName"], el.attrib["csd-code"]
        if system == "DCM" and el.tag in DCM_CODES:
            assert code in DCM_CODES[el.tag], f"{el.tag}: {code} is not a DCM code for it"
        elif el.tag == "ParticipantObjectIDTypeCode":
            assert system == "RFC-3881" and code in RFC3881_ID_TYPES, (system, code)
        assert el.attrib["originalText"], f"{el.tag} without originalText"
    counts: dict[str, int] = {}
    for child in el:
        assert child.tag in rule.children, f"{child.tag} is not allowed in {el.tag}"
        counts[child.tag] = counts.get(child.tag, 0) + 1
        _check(child)
    for tag, (low, high) in rule.children.items():
        n = counts.get(tag, 0)
        assert n >= low and (high is None or n <= high), f"{el.tag}: {n} x {tag}"
