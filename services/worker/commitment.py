"""Storage Commitment reports: the worker sends the N-EVENT-REPORT of every commitment
request the index holds unreported, on a new association to the requester.

Where: a thread of the Celery worker's main process (`CommitmentReporter`), not a task in
its pool, so that a report never waits behind a long outbox drain (the pool of `vna up`
has one process; a study of 1,000 instances is 1,000 outbox events). It sends what is due,
then sleeps until the next report is due, at most VNA_COMMITMENT_RETRY_SECONDS; an SCP
that has just kept a request wakes it at once through the broker (`wake_workers`: a
Celery remote-control broadcast, which the worker's consumer thread receives whatever its
pool is doing).

Durable: the request and its due time are in the index, committed before the N-ACTION
was answered. A report is claimed for a lease before it is sent (two workers never send
one report at once) and marked reported only once the requester answered the
N-EVENT-REPORT; a worker killed mid-send leaves it due again when the lease ends, so a
report may be sent twice (the requester sees the same Transaction UID and the same lists),
never lost. An unreachable requester is tried again after VNA_COMMITMENT_RETRY_SECONDS,
doubled per attempt, at most an hour.
"""

from __future__ import annotations

import logging
import ssl
import threading
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from celery.worker.control import control_command
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel

from services.dicom_scp import tls
from services.dicom_scp.pynetdicom_compat import install_requestor
from storage.index import workflow
from storage.index.db import Index
from vna import commitment
from vna.orders import utc_now
from vna.settings import DicomPeer, Settings

log = logging.getLogger("vna.worker.commitment")

WAKEUP = "vna_commitment_wakeup"  # the remote-control command an SCP broadcasts
LEASE = timedelta(minutes=2)  # a claimed report is due again after this (a killed worker)
TIMEOUT_SECONDS = 30.0  # connect, association and response timeouts of one attempt


def wake_workers(celery: Celery) -> None:
    """Tell every worker that a report is due (no reply awaited)."""
    celery.control.broadcast(WAKEUP)


class ReportFailed(Exception):
    """The requester could not be told (unknown, unreachable, refused the association)."""


def send_report(settings: Settings, peer: DicomPeer, due: workflow.DueReport,
                tls_context: ssl.SSLContext | None = None) -> int:
    """Send one N-EVENT-REPORT to `peer` on a new association, proposing the Storage
    Commitment context with the SCP role for us (the requester is the SCU that now
    receives); the status the requester answered. `tls_context`: the reporter's, made
    once (else one is made for a `/tls` peer)."""
    ae = AE(ae_title=settings.dicom_aet)
    ae.connection_timeout = ae.acse_timeout = TIMEOUT_SECONDS
    ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
    ae.add_requested_context(StorageCommitmentPushModel,
                             [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role],
                         tls_args=tls.peer_tls_args(settings, peer, tls_context))
    if not assoc.is_established:
        raise ReportFailed(f"association with {peer!r} "
                           f"{'rejected' if assoc.is_rejected else 'not established'}")
    try:
        if not any(cx.abstract_syntax == StorageCommitmentPushModel
                   for cx in assoc.accepted_contexts):
            raise ReportFailed(f"{peer!r} did not accept the Storage Commitment context")
        info = commitment.event_information(due.transaction_uid, due.result,
                                            settings.dicom_aet)
        status, _ = assoc.send_n_event_report(info, due.result.event_type,
                                              StorageCommitmentPushModel,
                                              commitment.PUSH_MODEL_INSTANCE)
        if "Status" not in status:
            raise ReportFailed(f"no N-EVENT-REPORT response from {peer!r}")
        return int(status.Status)
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()


class CommitmentReporter:
    """Sends due reports until stopped; `wake()` makes it look at once."""

    def __init__(self, settings: Settings, index: Index) -> None:
        self.settings = settings
        self.index = index
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tls: ssl.SSLContext | None = None  # for `/tls` requesters, made once

    def start(self) -> None:
        install_requestor()
        if any(p.tls for p in self.settings.peers.values()):
            self._tls = tls.client_context(self.settings)
        # each report would log a dozen association lines at INFO; vna logs its own line
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._run, name="commitment-reports",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT_SECONDS)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        retry = self.settings.commitment_retry_seconds
        while not self._stop.is_set():
            try:
                self.send_due()
                with self.index.begin() as conn:
                    due = workflow.next_due(conn)
                wait = retry if due is None else (due - utc_now()).total_seconds()
            except Exception as exc:  # the index is away: look again later
                log.warning("commitment reports: %s", exc)
                wait = retry
            self._wake.wait(min(max(wait, 0.0), retry))
            self._wake.clear()

    def send_due(self) -> int:
        """Send every report due now; how many the requesters answered."""
        sent = 0
        while not self._stop.is_set():
            with self.index.begin() as conn:
                claimed = workflow.claim_due(conn, now=utc_now(), lease=LEASE)
            if not claimed:
                return sent
            for due in claimed:
                sent += self._attempt(due)
        return sent

    def _attempt(self, due: workflow.DueReport) -> int:
        peer = self.settings.peers.get(due.requester_aet)
        try:
            if peer is None:
                raise ReportFailed(f"{due.requester_aet} is not in VNA_DICOM_PEERS")
            status = send_report(self.settings, peer, due, self._tls)
        except Exception as exc:  # unreachable, refused, timed out: try again later
            delay = commitment.retry_delay(self.settings.commitment_retry_seconds,
                                           due.attempts)
            log.warning("Storage Commitment report %s to %s failed (attempt %d, next in "
                        "%.0f s): %s", due.transaction_uid, due.requester_aet, due.attempts,
                        delay, exc)
            self._unreported(due, str(exc) or type(exc).__name__,
                             utc_now() + timedelta(seconds=delay))
            return 0
        note = None if status == 0 else f"the requester answered 0x{status:04X}"
        with self.index.begin() as conn:
            workflow.mark_reported(conn, due.transaction_uid, now=utc_now(), note=note)
        log.info("Storage Commitment report %s sent to %s: %d committed, %d failed%s",
                 due.transaction_uid, due.requester_aet, len(due.result.committed),
                 len(due.result.failed), f" ({note})" if note else "")
        return 1

    def _unreported(self, due: workflow.DueReport, error: str, retry_at: datetime) -> None:
        with self.index.begin() as conn:
            workflow.mark_unreported(conn, due.transaction_uid, error=error,
                                     retry_at=retry_at)


_reporter: CommitmentReporter | None = None


def start_reporter(settings: Settings, index: Index) -> CommitmentReporter:
    """The worker process's reporter (started once, in its main process)."""
    global _reporter
    if _reporter is None:
        _reporter = CommitmentReporter(settings, index)
        _reporter.start()
    return _reporter


def stop_reporter() -> None:
    global _reporter
    if _reporter is not None:
        _reporter.stop()
        _reporter = None


@control_command()
def vna_commitment_wakeup(state: Any, **_: Any) -> dict[str, str]:
    """A commitment report is due: look now (broadcast by the SCP that kept the request)."""
    if _reporter is not None:
        _reporter.wake()
    return {"ok": "woken"}
