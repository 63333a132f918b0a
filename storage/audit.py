"""The audit trail of one DICOM association: its C-STOREs, one record per study.

A record per stored instance would double the writes of the ingest path. Instead, the
first instance an association stores of a study writes that study's record in its own
ingest transaction (`Archive._commit` calls `write`), so no instance is archived without
its record, and a crash loses neither; the association counts the rest in memory and
writes the counts, with the association's own record, when it ends (`close`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

from storage.index.tokens import AuditRecord, AuditTrail
from vna.atna import DicomAction
from vna.dicom.attributes import InstanceHeader

MAX_STUDIES_LISTED = 100  # in the association's own record


@dataclass
class _Study:
    row_id: int | None  # None until its transaction commits
    stored: int = 0
    refused: int = 0
    last_status: int = 0


class AssociationAudit:
    """What one association did, for the audit trail. `base` holds who (calling AE title,
    peer address, TLS identity); the association's threads call in one at a time."""

    def __init__(self, trail: AuditTrail, base: AuditRecord) -> None:
        self.trail = trail
        self.base = base
        self._studies: dict[str, _Study] = {}
        self._lock = threading.Lock()
        self.refused_unread = 0  # refused before a study was known (not DICOM, bad UIDs)
        self.closed = False

    # -- inside the ingest transaction ---------------------------------------------------------

    def needs_record(self, study_uid: str) -> bool:
        s = self._studies.get(study_uid)
        return s is None or s.row_id is None

    def write(self, cursor: Any, header: InstanceHeader) -> int:
        """Write the study's C-STORE record in the ingest transaction on `cursor`."""
        return self.trail.insert(cursor, self._store_record(header))

    def written(self, study_uid: str, row_id: int) -> None:
        """The transaction that wrote the study's record committed."""
        with self._lock:
            s = self._studies.setdefault(study_uid, _Study(None))
            s.row_id = row_id

    # -- after each C-STORE ----------------------------------------------------------------------

    def ensure(self, header: InstanceHeader) -> None:
        """A study's record for an instance that wrote nothing (a duplicate, a conflict
        found before any write): in a transaction of its own, once per study."""
        study = header.study_instance_uid
        if not self.needs_record(study):
            return
        row_id = self.trail.index.run_write(lambda cursor: self.write(cursor, header))
        self.written(study, row_id)

    def counted(self, study_uid: str, ok: bool, status: int) -> None:
        with self._lock:
            s = self._studies.setdefault(study_uid, _Study(None))
            if ok:
                s.stored += 1
            else:
                s.refused += 1
                s.last_status = status

    def refused_unreadable(self) -> None:
        with self._lock:
            self.refused_unread += 1

    # -- at release, abort or close ----------------------------------------------------------------

    def close(self, outcome: str = "success") -> None:
        """Write the association's record and the counts of its C-STORE records."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            studies = dict(self._studies)
        counts = [(s.row_id, s.stored, _outcome(s), s.last_status)
                  for s in studies.values() if s.row_id is not None]
        stored = sum(s.stored for s in studies.values())
        refused = sum(s.refused for s in studies.values()) + self.refused_unread
        rec = replace(self.base, action=DicomAction.ASSOCIATION.value, method="A-ASSOCIATE",
                      studies=sorted(studies)[:MAX_STUDIES_LISTED] or None,
                      instances=stored, given_outcome=outcome if not refused or stored
                      else "refused",
                      resource=f"{refused} refused" if refused else None)
        self.trail.close_association(rec, counts)

    def _store_record(self, header: InstanceHeader) -> AuditRecord:
        return replace(self.base, action=DicomAction.STORE.value, method="C-STORE",
                       patient_id=header.patient["patient_id"] or None,
                       studies=[header.study_instance_uid], instances=None,
                       given_outcome="success")


def _outcome(s: _Study) -> str:
    if not s.refused:
        return "success"
    return "partial" if s.stored else "refused"
