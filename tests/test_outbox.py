"""The transactional outbox and the workers that drain it: real `vna worker` processes on the
serverless filesystem transport (files + SQLite) and on the real Redis (S3 + PostgreSQL)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from storage.archive import Archive
from storage.derive import Deriver
from storage.outbox import lag, pending
from tests.conftest import VNA, Backend, stop_process, vna_env
from tests.factory import make_instance, store_document, store_study, write
from tests.media import make_mp4, make_pdf


def count(archive: Archive, table: str, where: str = "") -> int:
    with archive.index.read_session() as s:
        return int(s.execute(sa.text(f"SELECT count(*) FROM {table} {where}")).scalar_one())


def test_events_are_written_with_the_index_entries(archive: Archive, tmp_path: Path) -> None:
    uids = store_study(archive, tmp_path, 3, "a")
    # a re-sent instance and a refused one add no work
    assert archive.store_file(write(make_instance(sop_uid=uids[0]), tmp_path / "x.dcm"),
                              source_aet="T").outcome in ("duplicate", "conflict")
    bad = make_instance()
    del bad.SeriesInstanceUID
    assert not archive.store_file(write(bad, tmp_path / "bad.dcm"), source_aet="T").ok
    batch = [write(make_instance(sop_uid=f"1.2.3.99.{i}", study_uid="1.2.3.99",
                                 series_uid="1.2.3.99.0"), tmp_path / f"b{i}.dcm")
             for i in range(4)]
    assert all(r.ok for r in archive.store_files(batch, source_aet="IMPORT"))
    doc = store_document(archive, make_pdf(), "application/pdf")
    events = pending(archive.index)
    assert [e.subject for e in events] == [*uids, *(f"1.2.3.99.{i}" for i in range(4)), doc]
    assert [e.kind for e in events] == ["instance.stored"] * 7 + ["document.stored"]


def test_deriver_is_idempotent(archive: Archive, tmp_path: Path) -> None:
    uids = store_study(archive, tmp_path, 2, "i")
    video = store_document(archive, make_mp4(), "video/mp4")
    deriver = Deriver(archive.index, archive.store)
    events = pending(archive.index)
    with ThreadPoolExecutor(2) as pool:  # two workers at once on the same events
        assert list(pool.map(lambda _: deriver.process(events), range(2))) == [3, 3]
    assert deriver.process(events) == 3  # again, as a redelivery would
    with archive.index.read_session() as s:
        counted = s.execute(sa.text("SELECT sum(count) FROM stats_hourly")).scalar_one()
        delays = s.execute(sa.text("SELECT sum(count) FROM stats_arrival_hourly")).scalar_one()
    assert counted == 3  # each instance and document counted once
    assert delays == 2  # and each instance's arrival delay
    assert count(archive, "study_fact") == 1
    assert count(archive, "instance_metadata") == 2
    assert count(archive, "document_media") == 1
    assert pending(archive.index) == [] and lag(archive.index) == (0, 0.0)
    with archive.index.read_session() as s:
        header = s.execute(sa.text("SELECT header FROM instance_metadata WHERE "
                                   "sop_instance_uid = :u"), {"u": uids[0]}).scalar_one()
        media = s.execute(sa.text("SELECT duration_seconds, width, height FROM "
                                  "document_media WHERE unique_id = :u"), {"u": video}).one()
    header = header if isinstance(header, dict) else json.loads(header)
    assert header["00080018"]["Value"] == [uids[0]]  # SOP Instance UID, DICOM JSON
    assert tuple(media) == (2.0, 160, 120)


# -- real worker processes -------------------------------------------------------------

@contextmanager
def running_worker(backend: Backend, broker: str | None) -> Iterator[subprocess.Popen[bytes]]:
    env = {**backend.env, "VNA_OUTBOX_POLL_SECONDS": "1"}
    if broker:
        env["VNA_BROKER_URL"] = broker
    log = backend.data_dir.parent / f"worker-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([*VNA, "worker", "--beat"], env=vna_env(env),
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            cwd=backend.data_dir.parent, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process(proc)


def broker_for(backend: Backend) -> str | None:
    """The serverless transport for the embedded shape, the real Redis for production's."""
    return f"redis://127.0.0.1:6379/{random.randint(1, 15)}" \
        if backend.name == "s3-postgres" else None


def wait_drained(archive: Archive, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lag(archive.index)[0] == 0:
            return True
        time.sleep(0.5)
    return False


def test_worker_outage_then_everything_processed_once(archive: Archive, backend: Backend,
                                                      tmp_path: Path) -> None:
    """Stores succeed with no worker running; a worker that comes later does it all, once;
    a worker killed with -9 mid-way loses nothing."""
    uids = store_study(archive, tmp_path, 40, "o")
    doc = store_document(archive, make_pdf(pages=3), "application/pdf")
    assert lag(archive.index)[0] == 41  # waiting in the database, not in a broker
    broker = broker_for(backend)
    with running_worker(backend, broker) as worker:
        deadline = time.monotonic() + 60
        while count(archive, "instance_metadata") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(worker.pid, signal.SIGKILL)  # mid-way (or just after): must not matter
        worker.wait()
    uids += store_study(archive, tmp_path, 10, "p")
    with running_worker(backend, broker):
        assert wait_drained(archive), lag(archive.index)
    assert count(archive, "instance_metadata") == len(uids) == 50
    assert count(archive, "document_media") == 1
    assert count(archive, "outbox_event", "WHERE processed_at IS NULL") == 0
    with archive.index.read_session() as s:  # counted once each, despite the kill -9
        counted = s.execute(sa.text("SELECT kind, sum(count) FROM stats_hourly "
                                    "GROUP BY kind")).all()
        delays = s.execute(sa.text("SELECT sum(count) FROM stats_arrival_hourly")).scalar_one()
    assert dict(counted) == {"instance": 50, "document": 1}
    assert delays == 50
    with archive.index.read_session() as s:
        pages = s.execute(sa.text("SELECT pages FROM document_media WHERE unique_id = :u"),
                          {"u": doc}).scalar_one()
    assert pages == 3
