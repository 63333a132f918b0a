"""STOW-RS (PS3.18 10.5) without HTTP: which bodies and parts are taken, which instances
are refused before the archive sees them, and the Store Instances Response (PS3.18 10.5.3,
Annex I) in the DICOM JSON model.

Each part of a `multipart/related; type="application/dicom"` body is one Part 10 file. It
is archived by the ingest path a C-STORE takes (`storage.archive.Archive.store_file`), so
the refusals are the same and so are their codes; STOW-RS adds three checks of its own,
`refusal`: the transfer syntax (the ones the DICOM service negotiates), the study named in
the URL, and the token's departments.

FailureReason values answered (PS3.18 Table 10.5.3-2 and vna's C-STORE statuses):

- 0xA700 out of resources: the disk, the index or object storage is full or unavailable;
- 0xA900 no valid SOP Instance, Study or Series Instance UID, or a study not the URL's;
- 0xC000 the part is not a DICOM Part 10 file;
- 0xC122 the part is not `application/dicom`, or its transfer syntax is not one the
  archive takes;
- 0x0124 not authorized: a department-limited token, an instance of another department;
- 0xA778 the study or SOP Instance is archived for another patient
  (VNA_PATIENT_CONFLICT=reject), the code dcm4chee-arc answers;
- 0xC001 the SOP Instance UID is archived with other content;
- 0x0110 processing failure: what vna did not foresee (a bug, logged with its traceback).

Each failed item also carries ErrorComment (0000,0902) saying why in words.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import parse_options_header

from vna.dicom.attributes import InstanceHeader
from vna.dicom.dimse import (
    STATUS_DATASET_MISMATCH,
    STATUS_NOT_AUTHORIZED,
    STATUS_OUT_OF_RESOURCES,
    STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED,
    error_comment,
)
from vna.dicom.json_model import dataset_json
from vna.dicom.part10 import ACCEPTED_TRANSFER_SYNTAXES

DICOM = "application/dicom"
MULTIPART_RELATED = "multipart/related"


class UnsupportedMediaType(ValueError):
    """A body STOW-RS does not take (HTTP 415)."""


class MalformedRequest(ValueError):
    """A body that is not what its Content-Type announces (HTTP 400)."""


def request_boundary(content_type: str | None) -> bytes:
    """The boundary of a STOW-RS body: `multipart/related` whose `type` is
    `application/dicom` (quoted or not, any case; a missing `type` is taken as that, the
    only one vna stores). Other `multipart/related` types (the metadata and bulk data form,
    `application/dicom+json`) and other media types are UnsupportedMediaType; no boundary
    is MalformedRequest."""
    kind, params = parse_options_header(content_type or "")
    media = kind.decode("latin-1").strip().lower()
    if media != MULTIPART_RELATED:
        raise UnsupportedMediaType(
            f'send {MULTIPART_RELATED}; type="{DICOM}", not {media or "no Content-Type"}')
    root = params.get(b"type", DICOM.encode()).decode("latin-1").strip().lower()
    if root != DICOM:
        raise UnsupportedMediaType(f"vna stores {MULTIPART_RELATED} parts of type {DICOM} "
                                   f"only, not {root}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedRequest(f"the {MULTIPART_RELATED} Content-Type names no boundary")
    return boundary


def is_dicom_part(content_type: str | None) -> bool:
    """Whether a part is `application/dicom` (its parameters, e.g. transfer-syntax, aside:
    the file meta says which syntax the file has). A part without Content-Type is the
    body's `type`, which `request_boundary` made sure is that."""
    if content_type is None:
        return True
    return content_type.split(";", 1)[0].strip().lower() == DICOM


# -- what became of each part ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StoredInstance:
    """A part archived (or archived already, byte for byte: a re-send is a success)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str | None = None


@dataclass(frozen=True, slots=True)
class FailedInstance:
    """A part not archived: the FailureReason, why in words, and the UIDs when known.
    `full`: out of resources because something is full (not merely unavailable)."""

    failure_reason: int
    comment: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    full: bool = False


Outcome = StoredInstance | FailedInstance


def not_dicom_part(content_type: str) -> FailedInstance:
    return FailedInstance(STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED,
                          f"a part of type {content_type}: only {DICOM} parts are stored")


def out_of_resources(what: str, *, full: bool) -> FailedInstance:
    return FailedInstance(STATUS_OUT_OF_RESOURCES, f"archive unavailable: {what}", full=full)


def unsupported_transfer_syntax(transfer_syntax: str, sop_class_uid: str | None = None,
                                sop_instance_uid: str | None = None) -> FailedInstance | None:
    """0xC122 for a transfer syntax the DICOM service would not negotiate, or None."""
    if transfer_syntax in ACCEPTED_TRANSFER_SYNTAXES:
        return None
    return FailedInstance(STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED,
                          f"transfer syntax {transfer_syntax} is not one the archive takes",
                          sop_class_uid, sop_instance_uid)


def refusal(header: InstanceHeader, transfer_syntax: str, *, study: str | None,
            departments: frozenset[str]) -> FailedInstance | None:
    """Why STOW-RS refuses an instance the archive would take, or None: a transfer syntax
    the DICOM service does not negotiate, a study other than the URL's, a department
    outside the token's (an empty set: every department; an instance without
    InstitutionalDepartmentName is no department's)."""
    ids = header.sop_class_uid, header.sop_instance_uid
    unsupported = unsupported_transfer_syntax(transfer_syntax, *ids)
    if unsupported is not None:
        return unsupported
    if study is not None and header.study_instance_uid != study:
        return FailedInstance(STATUS_DATASET_MISMATCH,
                              f"StudyInstanceUID {header.study_instance_uid} is not the "
                              f"study of the request, {study}", *ids)
    department = header.series.get("institutional_department_name")
    if departments and department not in departments:
        return FailedInstance(STATUS_NOT_AUTHORIZED,
                              f"InstitutionalDepartmentName {department or '(none)'} is not "
                              f"one of this token's departments", *ids)
    return None


# -- the answer ---------------------------------------------------------------------------------

def http_status(outcomes: Sequence[Outcome]) -> int:
    """200 every instance stored, 202 some, 409 none (PS3.18 10.5.3). When none was stored
    only because the archive is out of resources: 507 if something is full, else 503 (the
    client should try again later, as an upload or a C-STORE would be told)."""
    stored = sum(isinstance(o, StoredInstance) for o in outcomes)
    if stored == len(outcomes):
        return 200
    if stored:
        return 202
    failed = [o for o in outcomes if isinstance(o, FailedInstance)]
    if all(o.failure_reason == STATUS_OUT_OF_RESOURCES for o in failed):
        return 507 if any(o.full for o in failed) else 503
    return 409


def response(outcomes: Iterable[Outcome], *, study_url: Callable[[str], str],
             instance_url: Callable[[StoredInstance], str],
             study: str | None) -> dict[str, Any]:
    """The Store Instances Response dataset: RetrieveURL of the study (the URL's, or the one
    study every stored instance belongs to), ReferencedSOPSequence (class, instance, its
    RetrieveURL) and FailedSOPSequence (class and instance when known, FailureReason,
    ErrorComment), in part order."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: set[str] = set()
    for o in outcomes:
        if isinstance(o, StoredInstance):
            studies.add(o.study_instance_uid)
            referenced.append(dataset_json({"ReferencedSOPClassUID": o.sop_class_uid,
                                            "ReferencedSOPInstanceUID": o.sop_instance_uid,
                                            "RetrieveURL": instance_url(o)}))
        else:
            item = {"ReferencedSOPClassUID": o.sop_class_uid,
                    "ReferencedSOPInstanceUID": o.sop_instance_uid,
                    "FailureReason": o.failure_reason, "ErrorComment": error_comment(o.comment)}
            failed.append(dataset_json({k: v for k, v in item.items() if v is not None}))
    target = study if study is not None else (next(iter(studies)) if len(studies) == 1
                                              else None)
    extra: list[tuple[str, dict[str, Any]]] = []
    if referenced:
        extra.append(("00081199", {"vr": "SQ", "Value": referenced}))
    if failed:
        extra.append(("00081198", {"vr": "SQ", "Value": failed}))
    return dataset_json({"RetrieveURL": study_url(target)} if target else {}, extra=extra)
