"""Storage Commitment Push Model SOP Class (PS3.4 J): the N-ACTION a modality sends before
it deletes its copy. The answer says the request was taken; the result goes back later in
an N-EVENT-REPORT, sent by a worker on a new association (services/worker/commitment.py).

The request is checked against the index and kept, with what was found, in one
transaction before Success is answered; the worker is then woken through the broker (a
fire-and-forget signal on a thread of its own, so a broker outage never delays or fails
the answer: the worker's own sweep finds the request in the index all the same).

A calling AE title that is not in VNA_DICOM_PEERS cannot be reported to, so the request is
refused with 0x0110 "Unknown Calling AET", as dcm4chee-arc does, and nothing is kept.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydicom.dataset import Dataset

from services.dicom_scp.mpps import InTransaction
from storage.archive import Archive
from storage.errors import FailureLog
from storage.index import workflow
from vna import commitment
from vna.dicom.dimse import (
    ARCHIVE_UNAVAILABLE,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    status_dataset,
)
from vna.orders import utc_now
from vna.settings import Settings

log = logging.getLogger("vna.scp.commitment")


class WorkerWakeup:
    """Tells the workers "a report is due" through the broker, from one thread that
    coalesces requests: a slow or absent broker delays the signal, never the caller."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._due = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # started on first use: after the SCP process has forked
                self._thread = threading.Thread(target=self._run, name="commitment-wakeup",
                                                daemon=True)
                self._thread.start()
        self._due.set()

    def _run(self) -> None:
        from services.worker.commitment import wake_workers

        celery = None
        while True:
            self._due.wait()
            self._due.clear()
            try:
                if celery is None:
                    from services.worker.app import make_celery

                    celery = make_celery(self.settings)
                wake_workers(celery)
            except Exception as exc:  # the worker's sweep finds the request anyway
                log.warning("could not wake the workers for a commitment report: %s", exc)


class CommitmentService:
    """The Storage Commitment N-ACTION handler of one SCP process."""

    def __init__(self, settings: Settings, archive: Archive) -> None:
        self.settings = settings
        self.archive = archive
        self.failures = FailureLog(log)
        self.wake_workers = WorkerWakeup(settings)

    def action(self, event: Any, audited: InTransaction = None,
               ) -> tuple[int | Dataset, Dataset | None]:
        """`audited(conn)` writes the request's audit record in the request's transaction."""
        calling = event.assoc.requestor.ae_title
        try:
            transaction, references = commitment.parse_request(
                event.action_type, event.action_information)
        except commitment.CommitmentRefused as exc:
            log.warning("Storage Commitment from %s refused: %s", calling, exc.comment)
            return status_dataset(exc.status, exc.comment), None
        if calling not in self.settings.peers:
            log.warning("Storage Commitment %s from %s refused: not in VNA_DICOM_PEERS",
                        transaction, calling)
            return status_dataset(STATUS_PROCESSING_FAILURE,
                                  f"Unknown Calling AET: {calling}"), None
        try:
            with self.archive.index.begin() as conn:
                stored = workflow.stored_classes(conn, (r.sop_instance_uid for r in references))
                result = commitment.check(references, stored)
                workflow.record_commitment(conn, transaction_uid=transaction,
                                           requester_aet=calling, referenced=references,
                                           result=result, now=utc_now())
                if audited is not None:
                    audited(conn)
        except Exception as exc:
            self.failures.failed(f"Storage Commitment from {calling}", exc)
            return status_dataset(STATUS_PROCESSING_FAILURE, ARCHIVE_UNAVAILABLE), None
        log.info("Storage Commitment %s from %s: %d committed, %d failed", transaction,
                 calling, len(result.committed), len(result.failed))
        self.wake_workers()
        return STATUS_SUCCESS, None
