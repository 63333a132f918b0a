"""The XDS DocumentEntry's metadata rules (IHE XDS attribute names, camelCase).

`DocumentMetadata` is what an uploader sends, validated here before a byte is stored; what
the archive answers (`DocumentEntry`) is the HTTP API's (`services/xds_api/schemas.py`).
Codes (classCode, practiceSettingCode, ...) are plain strings here: the region's code
lists, not whole coded values.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

# A patient ID as XDS carries it: an ID, optionally in CX form `ID^^^&1.2.3&ISO`. Letters,
# digits and the few separators IDs use; no spaces, quotes, `%`, `*`, `?`, `;` or `/`, so an
# ID can never be mistaken for a pattern, smuggle SQL or break a URL path.
PATIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.\-_+^&:]{0,127}$"
_PATIENT_ID = re.compile(PATIENT_ID_PATTERN)
# A document uniqueId: an OID (this archive makes `2.25.<uuid>`).
UNIQUE_ID_PATTERN = r"^[0-9][0-9.]{0,63}$"
# Codes: a code value from a code list (e.g. SNOMED CT `394582007`, or `dermatology`).
CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.\-_:]{0,63}$"
_CODE = re.compile(CODE_PATTERN)
_MIME = re.compile(r"^[a-z0-9][a-z0-9.+\-]*/[a-z0-9][a-z0-9.+\-]*$")


class AvailabilityStatus(StrEnum):
    APPROVED = "Approved"
    DEPRECATED = "Deprecated"
    SUBMITTED = "Submitted"  # a patient's upload waiting for a reviewer
    REJECTED = "Rejected"  # a reviewer said no: kept for audit, never shown to viewers


class Source(StrEnum):
    DEPARTMENT = "department"
    PATIENT = "patient"


def valid_patient_id(value: str) -> str:
    if not _PATIENT_ID.match(value):
        raise ValueError("patientId may hold letters, digits and . - _ + ^ & : only "
                         "(no spaces, wildcards, quotes or slashes), at most 128 characters")
    return value


def _valid_code(value: str) -> str:
    if not _CODE.match(value):
        raise ValueError("a code may hold letters, digits and . - _ : only, at most 64 "
                         "characters")
    return value


def _valid_mime(value: str) -> str:
    value = value.strip().lower()
    if not _MIME.match(value):
        raise ValueError("mimeType must look like type/subtype")
    return value


def as_utc(value: datetime) -> datetime:
    """Times without a zone are taken as UTC; all times are kept in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


PatientId = Annotated[str, AfterValidator(valid_patient_id)]
Code = Annotated[str, AfterValidator(_valid_code)]
MimeType = Annotated[str, AfterValidator(_valid_mime)]
Time = Annotated[datetime, AfterValidator(as_utc)]
Text = Annotated[str, Field(max_length=256)]
LanguageCode = Annotated[str, Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]


class DocumentMetadata(BaseModel):
    """The `metadata` part of an upload. Unknown attributes are refused, not dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patientId: PatientId
    classCode: Code
    practiceSettingCode: Code
    typeCode: Code | None = None
    healthcareFacilityTypeCode: Code | None = None
    title: Text | None = None
    author: Text | None = None
    creationTime: Time | None = None  # default: when the archive received it
    serviceStartTime: Time | None = None
    serviceStopTime: Time | None = None
    confidentialityCode: Code = "N"
    languageCode: LanguageCode = "sv-SE"
    mimeType: MimeType | None = None  # checked against what the bytes are
    source: Source = Source.DEPARTMENT


class MetadataPatch(BaseModel):
    """The `metadata` part of a replace: what changes; the rest is taken from the old entry."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patientId: PatientId | None = None  # must equal the old entry's if given
    classCode: Code | None = None
    practiceSettingCode: Code | None = None
    typeCode: Code | None = None
    healthcareFacilityTypeCode: Code | None = None
    title: Text | None = None
    author: Text | None = None
    creationTime: Time | None = None
    serviceStartTime: Time | None = None
    serviceStopTime: Time | None = None
    confidentialityCode: Code | None = None
    languageCode: LanguageCode | None = None
    mimeType: MimeType | None = None
    source: Source | None = None

    def apply_to(self, old: DocumentMetadata) -> DocumentMetadata:
        if self.patientId is not None and self.patientId != old.patientId:
            raise ValueError("a replacement must keep the patientId of the entry it replaces")
        changes = self.model_dump(exclude_unset=True, exclude_none=True)
        changes.pop("mimeType", None)  # the new file's type, not the old one's
        merged = {**old.model_dump(exclude={"mimeType"}), **changes}
        if self.mimeType is not None:
            merged["mimeType"] = self.mimeType
        return DocumentMetadata.model_validate(merged)


def parse_metadata(raw: bytes | str, model: type[BaseModel] = DocumentMetadata) -> Any:
    """Parse the metadata JSON; raises `ValidationError` (fields) or `ValueError` (JSON)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise ValueError(f"metadata is not valid JSON: {exc.errors()[0]['msg']}") from None
        raise


def new_unique_id() -> str:
    """A document uniqueId: an OID under 2.25 (UUID-derived, ISO/IEC 9834-8)."""
    return f"2.25.{uuid.uuid4().int}"


def new_entry_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")


def check_filename(name: str | None) -> str | None:
    """The uploader's filename, kept as metadata only. A name with a path in it is refused:
    it says the client is confused about what it is sending, and it is never a path here."""
    if not name:
        return None
    if "/" in name or "\\" in name or name in (".", "..") or _UNSAFE_NAME.search(name):
        raise ValueError("filename must be a plain file name, without a path or control "
                         "characters")
    if len(name) > 255:
        raise ValueError("filename is longer than 255 characters")
    return name
