"""What the DICOMweb routes share: media types, the DICOM JSON response, URLs, and which
studies a token may reach.

Access is the REST API's: the same bearer tokens (or the viewer's session cookie,
`security.SESSION_COOKIE`), viewers and admins read, uploaders store, and a token limited
to departments reaches the studies one of its departments took part in (a series whose
InstitutionalDepartmentName is one of them), as on the patient timeline. A study it may
not reach answers 404, as one that does not exist: no hint that it does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException, Request
from starlette.responses import Response

from services.xds_api.security import audit_context
from vna.dicom.attributes import is_valid_uid
from vna.dicom.mediatypes import DICOM_JSON, MediaRange, parse_accept, takes_json
from vna.documents.entry import PATIENT_ID_PATTERN

PREFIX = "/dicomweb"

_PATIENT_ID = re.compile(PATIENT_ID_PATTERN)


# The DICOM JSON model as an OpenAPI schema: an array of datasets, each attribute (8-hex tag)
# an object with its VR and a Value, BulkDataURI or InlineBinary (PS3.18 F.2).
DICOM_JSON_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"type": "object", "additionalProperties": {
        "type": "object", "required": ["vr"],
        "properties": {"vr": {"type": "string"}, "Value": {"type": "array", "items": {}},
                       "BulkDataURI": {"type": "string"},
                       "InlineBinary": {"type": "string"}}}},
}


class DicomJSONResponse(Response):
    """A body in the DICOM JSON model (PS3.18 F), compact."""

    media_type = DICOM_JSON

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def require_json(request: Request) -> list[MediaRange]:
    """406 unless the client takes the DICOM JSON model (or JSON, or anything); the
    Accept header's media ranges, most preferred first."""
    accept = request.headers.get("accept")
    ranges = parse_accept(accept)
    if not takes_json(ranges):
        raise HTTPException(406, f"this resource is {DICOM_JSON}; Accept was {accept!r}")
    return ranges


def dicomweb_base(request: Request) -> str:
    """The absolute URL of this service's DICOMweb root, as the client reached it."""
    return str(request.base_url).rstrip("/") + PREFIX


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, instance: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{instance}"


def check_uid(name: str, value: str) -> str:
    """A UID from the path: 400 if it is not one (nothing else is looked up with it)."""
    if not is_valid_uid(value):
        raise HTTPException(400, f"{name} {value!r} is not a valid UID")
    return value


def audit_patient(request: Request, patient_id: str | None) -> None:
    """Record the patient a request touched (only a well-formed ID)."""
    if patient_id and _PATIENT_ID.match(patient_id):
        audit_context(request).patient_id = patient_id


def audit_study(request: Request, study: str) -> None:
    audit_context(request).resource = study


def audit_access(request: Request, study: str, patient_ids: Iterable[str | None]) -> None:
    """Record the study a request reached and its patient (when all it read was one's)."""
    audit_study(request, study)
    audit_patients(request, patient_ids)


def audit_patients(request: Request, patient_ids: Iterable[str | None]) -> None:
    """Record the patient of what a request read, when all of it was one patient's."""
    patients = set(patient_ids)
    if len(patients) == 1:
        audit_patient(request, patients.pop())
