"""The DICOM side of the audit trail: who is on an association (calling AE title, peer
address, TLS identity) and the records of its requests, in the HTTP trail's table.

Reads (C-FIND, C-GET, C-MOVE, Modality Worklist) are recorded, and committed, before the
first response or sub-operation goes out; C-STOREs by `storage.audit.AssociationAudit`
inside the ingest transaction; the association itself when it ends, or when it is
rejected. A query that touches many patients gets one record per patient up to
`MAX_PATIENT_RECORDS`, then one record for the rest.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from services.dicom_scp import pynetdicom_compat
from storage.audit import AssociationAudit
from storage.index.tokens import AuditRecord, AuditTrail
from vna.atna import DicomAction

log = logging.getLogger("vna.scp.audit")

MAX_PATIENT_RECORDS = 100
MAX_STUDIES_PER_RECORD = 100


def who(assoc: Any) -> AuditRecord:
    """The base record of a pynetdicom association's requests."""
    return base_record(str(assoc.requestor.ae_title).strip(), assoc.requestor.address,
                       pynetdicom_compat.tls_identity(assoc))


def base_record(calling_aet: str, address: str | None,
                identity: str | None) -> AuditRecord:
    return AuditRecord(action="", method="", route="", status=0, protocol="dicom",
                       calling_aet=calling_aet[:16] or None, client=address or None,
                       tls_identity=identity)


def per_patient(base: AuditRecord, action: DicomAction, method: str, route: str,
                touched: Iterable[tuple[str, str | None]], *, status: int = 0,
                outcome: str = "success", resource: str | None = None,
                instances: int | None = None) -> list[AuditRecord]:
    """The records of one request: one per patient touched (with its studies), at least
    one; past MAX_PATIENT_RECORDS patients, one more for all the others."""
    studies: dict[str, set[str]] = defaultdict(set)
    for patient, study in touched:
        studies[patient or ""].update([study] if study else [])
    def record(**fields: Any) -> AuditRecord:
        return replace(base, action=action.value, method=method, route=route, status=status,
                       given_outcome=outcome, resource=resource, **fields)

    if not studies:
        return [record(instances=instances or 0)]
    patients = sorted(studies)
    out = [record(patient_id=p or None,
                  studies=sorted(studies[p])[:MAX_STUDIES_PER_RECORD] or None,
                  instances=instances if len(patients) == 1 else None)
           for p in patients[:MAX_PATIENT_RECORDS]]
    if len(patients) > MAX_PATIENT_RECORDS:
        out.append(replace(record(), resource=f"{len(patients) - MAX_PATIENT_RECORDS} more "
                                              "patients"))
    return out


class DicomAudit:
    """The audit trail as the SCP's handlers use it."""

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    def association(self, base: AuditRecord) -> AssociationAudit:
        return AssociationAudit(self.trail, base)

    def ended(self, audit: AssociationAudit | None, outcome: str) -> None:
        """Write the association's record and its C-STORE counts; an index that is down
        only loses the counts (the C-STORE records are committed already)."""
        if audit is None:
            return
        try:
            audit.close(outcome)
        except Exception as exc:
            log.error("audit record of the association from %s not written: %s",
                      audit.base.calling_aet, exc.__class__.__name__)

    def rejected(self, base: AuditRecord, reason: str) -> None:
        rec = replace(base, action=DicomAction.ASSOCIATION.value, method="A-ASSOCIATE-RJ",
                      given_outcome="denied", resource=reason[:128])
        try:
            self.trail.record(rec)
        except Exception as exc:
            log.error("audit record of a rejected association from %s not written: %s",
                      base.calling_aet, exc.__class__.__name__)

    def request(self, records: list[AuditRecord]) -> None:
        """Commit a request's records; raises if they cannot be (then it is not served)."""
        self.trail.record_all(records)
