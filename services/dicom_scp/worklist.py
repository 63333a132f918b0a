"""Modality Worklist Information Model - FIND (PS3.4 K): the C-FIND a modality sends to pick
today's patient, answered from the orders in the index. Thin: the keys and their matching
are `vna.worklist`'s, the query `storage.index.worklist`'s."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from services.dicom_scp.audit import DicomAudit, per_patient, who
from storage.archive import Archive
from storage.errors import FailureLog
from storage.index import worklist
from vna.atna import DicomAction
from vna.dicom.dimse import (
    QUERY_FAILED,
    STATUS_CANCEL,
    STATUS_IDENTIFIER_MISMATCH,
    STATUS_PENDING,
    STATUS_UNABLE_TO_PROCESS,
    status_dataset,
)
from vna.dicom.matching import InvalidQuery
from vna.settings import Settings
from vna.worklist import IdentifierMismatch, WorklistQuery

log = logging.getLogger("vna.scp")


class WorklistService:
    """The MWL C-FIND handler of one SCP process."""

    def __init__(self, settings: Settings, archive: Archive,
                 audit: DicomAudit | None = None) -> None:
        self.settings = settings
        self.archive = archive
        self.failures = FailureLog(log)
        self.audit = audit

    def find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        try:
            q = WorklistQuery.from_identifier(event.identifier)
            with self.archive.index.read_session() as s:
                entries = worklist.find(s, q)
        except IdentifierMismatch as exc:
            yield status_dataset(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
            return
        except InvalidQuery as exc:
            yield status_dataset(STATUS_UNABLE_TO_PROCESS, str(exc)), None
            return
        except Exception as exc:
            self.failures.failed("MWL C-FIND", exc)
            yield status_dataset(STATUS_UNABLE_TO_PROCESS, QUERY_FAILED), None
            return
        responses = [q.response(entry) for entry in entries]
        if self.audit is not None:
            touched = [(str(r.get("PatientID", "") or ""), None) for r in responses]
            try:  # committed before the first item goes out
                self.audit.request(per_patient(
                    who(event.assoc), DicomAction.WORKLIST, "C-FIND",
                    str(event.request.AffectedSOPClassUID), touched,
                    instances=len(responses)))
            except Exception as exc:
                self.failures.failed("MWL C-FIND", exc)
                yield status_dataset(STATUS_UNABLE_TO_PROCESS, QUERY_FAILED), None
                return
        for response in responses:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, response
