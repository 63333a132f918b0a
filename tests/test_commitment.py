"""Storage Commitment Push Model against a running `vna scp` and `vna worker`, pynetdicom
as the modality: it asks with an N-ACTION and receives the N-EVENT-REPORT on an SCP of its
own (an association the worker opens, with the SCP role for the archive). On both index
backends: stored instances committed, unknown ones failed with 0x0112, a SOP Class that is
not the stored one with 0x0119; a requester (and worker) that is down gets its report once
it is back, once; requests that cannot be taken change nothing. DCMTK has no Storage
Commitment tool (Debian's dcmtk 3.6.7), so pynetdicom is the only modality here."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from storage.archive import Archive
from tests.api_client import wait_for
from tests.conftest import VNA, Backend, RunningSCP, free_port, start_scp, stop_process, vna_env
from tests.dicom_client import _cx, associate
from tests.factory import store_study
from vna.commitment import PUSH_MODEL_INSTANCE
from vna.orders import new_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
MODALITY = "MOD1"


@dataclass
class Report:
    event_type: int
    information: Dataset
    calling_aet: str


@dataclass
class Modality:
    """The modality's own SCP for N-EVENT-REPORTs: it accepts the archive's association
    with the SCP role for the archive and collects what it is told."""

    port: int
    reports: queue.Queue[Report] = field(default_factory=queue.Queue)
    server: Any = None

    def start(self) -> None:
        ae = AE(ae_title=MODALITY)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30

        def on_report(event: Any) -> tuple[int, None]:
            self.reports.put(Report(event.event_type, event.event_information,
                                    event.assoc.requestor.ae_title))
            return 0x0000, None

        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def next_report(self, timeout: float = 30) -> Report:
        return self.reports.get(timeout=timeout)


@pytest.fixture
def modality() -> Iterator[Modality]:
    m = Modality(free_port())
    try:
        yield m
    finally:
        m.stop()


def broker_for(backend: Backend) -> str | None:
    """The serverless transport for the embedded shape, the real Redis for production's."""
    return f"redis://127.0.0.1:6379/{random.randint(1, 15)}" \
        if backend.name == "s3-postgres" else None


def workflow_env(backend: Backend, modality: Modality) -> dict[str, str]:
    env = {"VNA_DICOM_PEERS": f"{MODALITY}@127.0.0.1:{modality.port}",
           "VNA_COMMITMENT_RETRY_SECONDS": "1"}
    broker = broker_for(backend)
    if broker:
        env["VNA_BROKER_URL"] = broker
    return env


@contextmanager
def running_worker(backend: Backend, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log = backend.data_dir.parent / f"worker-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([*VNA, "worker"], env=vna_env({**backend.env, **env}),
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            cwd=backend.data_dir.parent, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process(proc)


@pytest.fixture
def archive_scp(archive: Archive, backend: Backend, modality: Modality
                ) -> Iterator[RunningSCP]:
    scp = start_scp(backend, **workflow_env(backend, modality))
    try:
        yield scp
    finally:
        stop_process(scp.proc)


def request(port: int, references: list[tuple[str, str]], *, calling: str = MODALITY,
            transaction: str | None = None, action_type: int = 1) -> tuple[int, str]:
    """An N-ACTION from `calling`: the status answered and the Transaction UID."""
    info = Dataset()
    info.TransactionUID = transaction or new_uid()
    items = []
    for sop_class, sop in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop
        items.append(item)
    info.ReferencedSOPSequence = items
    assoc = associate(port, [_cx(StorageCommitmentPushModel, ["1.2.840.10008.1.2.1"])],
                      calling=calling)
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(info, action_type, StorageCommitmentPushModel,
                                        PUSH_MODEL_INSTANCE)
    finally:
        assoc.release()
    return int(status.Status), str(info.TransactionUID)


def commitments(archive: Archive) -> list[dict[str, Any]]:
    with archive.index.read_session() as s:
        return [dict(r._mapping) for r in s.execute(sa.text(
            "SELECT transaction_uid, requester_aet, attempts, next_attempt_at, reported_at, "
            "last_error "
            "FROM storage_commitment ORDER BY transaction_uid"))]


def claimed(row: dict[str, Any]) -> bool:
    """Whether a worker holds the row's lease (its next attempt is a lease away)."""
    at = row["next_attempt_at"]
    if isinstance(at, str):  # SQLite through a plain text query
        at = datetime.fromisoformat(at)
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return at - datetime.now(UTC) > timedelta(seconds=30)


def references_of(seq: Any) -> list[tuple[str, str]]:
    return [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in seq]


def test_commitment_reported_with_failures(archive: Archive, backend: Backend,
                                           modality: Modality, archive_scp: RunningSCP,
                                           tmp_path: Path) -> None:
    stored = store_study(archive, tmp_path, 5)
    unknown = [new_uid(), new_uid()]
    refs = [(CT, u) for u in stored[:4]] + [(MR, stored[4])] + [(CT, u) for u in unknown]
    modality.start()
    with running_worker(backend, workflow_env(backend, modality)):
        status, transaction = request(archive_scp.port, refs)
        assert status == 0x0000
        report = modality.next_report(60)
    assert report.calling_aet == "VNA"
    assert report.event_type == 2  # failures exist
    info = report.information
    assert info.TransactionUID == transaction
    assert references_of(info.ReferencedSOPSequence) == [(CT, u) for u in stored[:4]]
    failed = {str(i.ReferencedSOPInstanceUID): int(i.FailureReason)
              for i in info.FailedSOPSequence}
    assert failed == {stored[4]: 0x0119, unknown[0]: 0x0112, unknown[1]: 0x0112}
    (row,) = commitments(archive)
    assert row["reported_at"] is not None and row["attempts"] == 1
    assert row["last_error"] is None

    # all stored: Event Type 1, no FailedSOPSequence
    with running_worker(backend, workflow_env(backend, modality)):
        status, transaction = request(archive_scp.port, [(CT, u) for u in stored[:4]])
        assert status == 0x0000
        report = modality.next_report(60)
    assert report.event_type == 1 and report.information.TransactionUID == transaction
    assert "FailedSOPSequence" not in report.information
    assert len(report.information.ReferencedSOPSequence) == 4
    assert modality.reports.empty()


def test_requester_and_worker_down_then_up(archive: Archive, backend: Backend,
                                           modality: Modality, archive_scp: RunningSCP,
                                           tmp_path: Path) -> None:
    """The request is kept with no worker running; a worker retries while the requester
    does not answer (with back-off) and is killed (-9); the next worker reports once,
    when the requester is back."""
    stored = store_study(archive, tmp_path, 3)
    status, transaction = request(archive_scp.port, [(CT, u) for u in stored])
    assert status == 0x0000
    time.sleep(1)
    (row,) = commitments(archive)
    assert row["attempts"] == 0 and row["reported_at"] is None  # no worker: waits
    env = workflow_env(backend, modality)
    with running_worker(backend, env) as worker:
        # two attempts made and the second one over (not under its claim's lease, which
        # a worker killed mid-attempt leaves for LEASE before another worker may retry)
        assert wait_for(lambda: commitments(archive)[0]["attempts"] >= 2
                        and not claimed(commitments(archive)[0]), 60)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    row = commitments(archive)[0]
    assert row["reported_at"] is None and "MOD1" in row["last_error"]
    assert modality.reports.empty()
    modality.start()  # the requester is back
    with running_worker(backend, env):
        report = modality.next_report(60)
        assert report.event_type == 1 and report.information.TransactionUID == transaction
        assert references_of(report.information.ReferencedSOPSequence) == \
            [(CT, u) for u in stored]
        assert wait_for(lambda: commitments(archive)[0]["reported_at"] is not None, 10)
        time.sleep(3)  # several retry periods: nothing is sent again
    assert modality.reports.empty()
    (row,) = commitments(archive)
    assert row["reported_at"] is not None and row["last_error"] is None


def test_unknown_uids_are_failed_never_committed(archive: Archive, backend: Backend,
                                                 modality: Modality,
                                                 archive_scp: RunningSCP) -> None:
    unknown = [new_uid() for _ in range(3)]
    modality.start()
    with running_worker(backend, workflow_env(backend, modality)):
        status, _ = request(archive_scp.port, [(CT, u) for u in unknown])
        assert status == 0x0000
        report = modality.next_report(60)
    assert report.event_type == 2
    assert "ReferencedSOPSequence" not in report.information
    assert {str(i.ReferencedSOPInstanceUID): int(i.FailureReason)
            for i in report.information.FailedSOPSequence} == {u: 0x0112 for u in unknown}
    with archive.index.read_session() as s:  # nothing was stored by asking
        assert s.execute(sa.text("SELECT count(*) FROM instance")).scalar_one() == 0


def test_requests_that_cannot_be_taken_change_nothing(archive: Archive,
                                                      archive_scp: RunningSCP,
                                                      tmp_path: Path) -> None:
    stored = store_study(archive, tmp_path, 1)
    refs = [(CT, stored[0])]
    # a requester not in VNA_DICOM_PEERS could never get its report: refused, as
    # dcm4chee-arc refuses it (0x0110 "Unknown Calling AET")
    status, _ = request(archive_scp.port, refs, calling="STRANGER")
    assert status == 0x0110
    assert request(archive_scp.port, refs, action_type=2)[0] == 0x0123  # no such action
    assert request(archive_scp.port, refs, transaction="not-a-uid")[0] == 0x0106
    assert request(archive_scp.port, [])[0] == 0x0120  # no references
    assert commitments(archive) == []


# -- the rules alone (vna/commitment.py) ---------------------------------------------------

def test_check_and_the_report_it_makes() -> None:
    from vna.commitment import Reference, check, event_information, retry_delay

    stored = {"1.2.1": CT, "1.2.2": CT, "1.2.3": MR}
    refs = [Reference(CT, "1.2.1"), Reference(CT, "1.2.3"), Reference(CT, "1.2.9"),
            Reference("", "1.2.2")]
    result = check(refs, stored)
    assert [r.sop_instance_uid for r in result.committed] == ["1.2.1"]
    assert [(f.reference.sop_instance_uid, f.reason) for f in result.failed] == \
        [("1.2.3", 0x0119), ("1.2.9", 0x0112), ("1.2.2", 0x0110)]
    assert result.event_type == 2
    info = event_information("1.2.99", result, "VNA")
    assert info.TransactionUID == "1.2.99" and info.RetrieveAETitle == "VNA"
    assert [int(i.FailureReason) for i in info.FailedSOPSequence] == [0x0119, 0x0112, 0x0110]
    assert [retry_delay(5, n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert retry_delay(5, 30) == 3600
