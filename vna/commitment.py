"""Storage Commitment Push Model (PS3.4 J.3): which of the instances a modality asks about
the archive commits to keep, and the N-EVENT-REPORT that tells it. Free of DIMSE and of
the database.

An instance is committed when the index holds it under the same SOP Class: the index row
is only ever committed after its object was written (and fsynced under VNA_FSYNC), so
nothing is reported committed that is not stored. Every other reference is failed, with
the reason of PS3.4 J.3.3.1.2 (the codes dcm4chee-arc reports): 0x0112 no such object
instance, 0x0119 class/instance conflict, 0x0110 processing failure (a reference that is
not one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from vna.dicom.attributes import is_valid_uid
from vna.dicom.dimse import (
    STATUS_CLASS_INSTANCE_CONFLICT,
    STATUS_INVALID_ATTRIBUTE_VALUE,
    STATUS_MISSING_ATTRIBUTE,
    STATUS_NO_SUCH_ACTION_TYPE,
    STATUS_NO_SUCH_OBJECT_INSTANCE,
    STATUS_PROCESSING_FAILURE,
)

REQUEST_STORAGE_COMMITMENT = 1  # the one Action Type ID (J.3.2.1)
EVENT_ALL_COMMITTED = 1  # Storage Commitment Request Successful (J.3.3.1)
EVENT_SOME_FAILED = 2  # Storage Commitment Request Complete - Failures Exist
# the well-known SOP Instance every request and report names (PS3.4 J.3.4)
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
MAX_RETRY_SECONDS = 3600.0  # the back-off stops doubling here


class CommitmentRefused(Exception):
    """An N-ACTION the archive does not take: its status and why (nothing is kept)."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class Reference:
    """A ReferencedSOPSequence item."""

    sop_class_uid: str
    sop_instance_uid: str

    def as_json(self) -> dict[str, str]:
        return {"sop_class_uid": self.sop_class_uid, "sop_instance_uid": self.sop_instance_uid}


@dataclass(frozen=True)
class Failed:
    reference: Reference
    reason: int  # FailureReason (0008,1197)

    def as_json(self) -> dict[str, Any]:
        return {**self.reference.as_json(), "failure_reason": self.reason}


@dataclass(frozen=True)
class CommitmentResult:
    committed: tuple[Reference, ...]
    failed: tuple[Failed, ...]

    @property
    def event_type(self) -> int:
        return EVENT_SOME_FAILED if self.failed else EVENT_ALL_COMMITTED

    @classmethod
    def from_json(cls, committed: Sequence[Mapping[str, Any]] | None,
                  failed: Sequence[Mapping[str, Any]] | None) -> CommitmentResult:
        return cls(
            tuple(Reference(c["sop_class_uid"], c["sop_instance_uid"]) for c in committed or ()),
            tuple(Failed(Reference(f["sop_class_uid"], f["sop_instance_uid"]),
                         int(f["failure_reason"])) for f in failed or ()))


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def parse_request(action_type: int | None,
                  information: Dataset | None) -> tuple[str, list[Reference]]:
    """The Transaction UID and references of an N-ACTION (J.3.2.1.1); refuses one that is
    not a storage commitment request or has no Transaction UID or references."""
    if action_type != REQUEST_STORAGE_COMMITMENT:
        raise CommitmentRefused(STATUS_NO_SUCH_ACTION_TYPE,
                                f"Action Type ID {action_type} is not 1 (Request Storage "
                                "Commitment)")
    info = information if information is not None else Dataset()
    transaction = _text(info, "TransactionUID")
    if not transaction:
        raise CommitmentRefused(STATUS_MISSING_ATTRIBUTE, "TransactionUID is missing")
    if not is_valid_uid(transaction):
        raise CommitmentRefused(STATUS_INVALID_ATTRIBUTE_VALUE,
                                f"TransactionUID {transaction!r} is not a UID")
    items = info.get("ReferencedSOPSequence") or []
    if not len(items):
        raise CommitmentRefused(STATUS_MISSING_ATTRIBUTE,
                                "ReferencedSOPSequence is missing or empty")
    return transaction, [Reference(_text(i, "ReferencedSOPClassUID"),
                                   _text(i, "ReferencedSOPInstanceUID")) for i in items]


def check(references: Sequence[Reference], stored: Mapping[str, str]) -> CommitmentResult:
    """Each reference committed or failed, from `stored`: SOP Instance UID -> SOP Class
    UID of what the index holds."""
    committed: list[Reference] = []
    failed: list[Failed] = []
    for ref in references:
        if not (is_valid_uid(ref.sop_class_uid) and is_valid_uid(ref.sop_instance_uid)):
            failed.append(Failed(ref, STATUS_PROCESSING_FAILURE))
        elif ref.sop_instance_uid not in stored:
            failed.append(Failed(ref, STATUS_NO_SUCH_OBJECT_INSTANCE))
        elif stored[ref.sop_instance_uid] != ref.sop_class_uid:
            failed.append(Failed(ref, STATUS_CLASS_INSTANCE_CONFLICT))
        else:
            committed.append(ref)
    return CommitmentResult(tuple(committed), tuple(failed))


def event_information(transaction_uid: str, result: CommitmentResult,
                      retrieve_aet: str) -> Dataset:
    """The N-EVENT-REPORT's Event Information (J.3.3.1.1 and .2): the committed instances
    (with where to retrieve them) and the failed ones with their FailureReason."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if result.committed:
        ds.RetrieveAETitle = retrieve_aet
        ds.ReferencedSOPSequence = [_item(r) for r in result.committed]
    if result.failed:
        items = []
        for f in result.failed:
            item = _item(f.reference)
            item.FailureReason = f.reason
            items.append(item)
        ds.FailedSOPSequence = items
    return ds


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def retry_delay(first: float, attempts: int) -> float:
    """Seconds before attempt `attempts + 1` of a report: `first`, doubled per attempt
    made, at most an hour."""
    return min(first * 2 ** max(attempts - 1, 0), MAX_RETRY_SECONDS)
