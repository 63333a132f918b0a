"""Deterministic object keys: DICOM from the UID hierarchy, documents from their entryUUID.

UIDs are validated (digits and dots only) before they get here, so a key can never hold
a path separator or `..` from the sender.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from vna.dicom.attributes import is_valid_uid


def dicom_object_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    for uid in (study_uid, series_uid, sop_instance_uid):
        if not is_valid_uid(uid):
            raise ValueError(f"{uid!r} is not a valid UID")
    return f"dicom/{study_uid}/{series_uid}/{sop_instance_uid}.dcm"


def document_object_key(entry_uuid: str, received: datetime) -> str:
    """`documents/<yyyy>/<mm>/<uuid>`: the entryUUID (generated here, never from the client)
    under the month it arrived, so a bucket lists by time."""
    u = uuid.UUID(entry_uuid.removeprefix("urn:uuid:"))
    return f"documents/{received:%Y}/{received:%m}/{u}"


def subject_of_key(key: str) -> tuple[str, str] | None:
    """What an object key names: ("instance", SOP Instance UID) or ("document",
    entryUUID); None for a key neither scheme makes."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == "dicom" and parts[3].endswith(".dcm"):
        uid = parts[3][:-4]
        return ("instance", uid) if is_valid_uid(uid) else None
    if len(parts) == 4 and parts[0] == "documents":
        try:
            return "document", f"urn:uuid:{uuid.UUID(parts[3])}"
        except ValueError:
            return None
    return None
