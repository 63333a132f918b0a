"""Deterministic object keys derived from the UID hierarchy.

UIDs are validated (digits and dots only) before they get here, so a key can never hold
a path separator or `..` from the sender.
"""

from __future__ import annotations

from vna.dicom.attributes import is_valid_uid


def dicom_object_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    for uid in (study_uid, series_uid, sop_instance_uid):
        if not is_valid_uid(uid):
            raise ValueError(f"{uid!r} is not a valid UID")
    return f"dicom/{study_uid}/{series_uid}/{sop_instance_uid}.dcm"
