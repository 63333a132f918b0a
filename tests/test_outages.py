"""Nothing acknowledged is lost when the servers under the archive go down and come back,
on the production shape (`vna scp` with two processes, `vna api`, PostgreSQL, S3, Redis):
requests during an outage are answered with a failure at once (C-STORE 0xA700, HTTP 503
with JSON), none waits longer than REQUEST_BOUND, vna reconnects by itself afterwards,
and every acknowledged instance and document is there with its hash. Also: two DICOM
nodes on one database and bucket, receiving one study at once."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_client import ADMIN_TOKEN, start_api, stop_api
from tests.conftest import Backend, S3Server, running_scp
from tests.factory import make_instance, write
from tests.private_servers import PrivatePostgres, PrivateRedis, RestartableWeed
from tests.workload import Answer, InstanceStream, UploadStream, verify

REQUEST_BOUND = 10.0  # seconds: no request may wait longer, outage or not
OUTAGE = 5.0


def _env(data_dir: Path, *, database_url: str, s3_endpoint: str, bucket: str,
         **extra: str) -> dict[str, str]:
    return {"VNA_DATA_DIR": str(data_dir), "VNA_LOG_LEVEL": "WARNING", "VNA_STORAGE": "s3",
            "VNA_S3_ENDPOINT": s3_endpoint, "VNA_S3_ACCESS_KEY": "vna",
            "VNA_S3_SECRET_KEY": "vna-secret", "VNA_S3_BUCKET": bucket,
            "VNA_DATABASE_URL": database_url, **extra}


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    with contextlib.closing(PrivatePostgres()) as pg:
        yield pg


@pytest.fixture
def private_weed() -> Iterator[RestartableWeed]:
    with contextlib.closing(RestartableWeed()) as weed:
        yield weed


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with contextlib.closing(PrivateRedis()) as redis:
        yield redis


def _run_with_outage(backend: Backend, tmp_path: Path, stop: Any, start: Any,
                     outage: float = OUTAGE) -> tuple[list[Answer], list[Answer], float, float]:
    """Streams of C-STOREs and uploads; the server goes down mid-stream and comes back.
    Returns both streams' answers and when the server was down (monotonic)."""
    with running_scp(backend) as scp:
        api = start_api(backend)
        try:
            stream = InstanceStream(scp.port, tmp_path / "sent").start()
            uploads = UploadStream(api.url, ADMIN_TOKEN).start()
            time.sleep(3)
            stop()
            down = time.monotonic()
            time.sleep(outage)
            back = time.monotonic()
            start()
            time.sleep(8)  # long enough for several requests to find it back
            instances, documents = stream.stop(), uploads.stop()
        finally:
            stop_api(api)
        assert "Traceback" not in scp.logtext(), scp.logtext()[-3000:]
    return instances, documents, down, back


def _check_outage(instances: list[Answer], documents: list[Answer], down: float,
                  back: float, backend: Backend) -> None:
    slow = [a for a in instances + documents if a.seconds > REQUEST_BOUND]
    assert slow == [], [(a.status, round(a.seconds, 1), a.detail) for a in slow]
    assert all(a.status != -1 for a in instances), "a C-STORE went unanswered"
    # Started while the server was gone (and early enough not to meet it back: a request
    # to S3 tries for ~2 s): each must fail.
    during = [a for a in instances if down < a.started < back - 2]
    assert during and {a.status for a in during} == {0xA700}, \
        sorted({(a.status, a.detail) for a in during})
    docs_during = [a for a in documents if down < a.started < back - 2]
    assert docs_during and {a.status for a in docs_during} == {503}, \
        sorted({(a.status, a.detail) for a in docs_during})
    assert all(a.detail for a in docs_during)  # JSON {"detail": ...}
    # back by itself: the last requests all succeed
    assert [a.status for a in instances[-5:]] == [0] * 5, instances[-5:]
    assert [a.status for a in documents[-3:]] == [201] * 3, documents[-3:]
    ok_instances = [a for a in instances if a.status == 0]
    ok_documents = [a for a in documents if a.status == 201]
    assert verify(backend.settings(), ok_instances, ok_documents) == []
    # for the record (pytest -s): how the outage looked to the clients
    for name, answers, bad in (("C-STORE", instances, 0xA700), ("upload", documents, 503)):
        failed = [a.seconds for a in answers if a.status == bad]
        print(f"{name}: {len(answers) - len(failed)} acknowledged, {len(failed)} refused "
              f"during the outage, slowest refusal {max(failed):.2f} s, slowest request "
              f"{max(a.seconds for a in answers):.2f} s")


def test_postgresql_restart(private_pg: PrivatePostgres, s3_server: S3Server,
                            tmp_path: Path) -> None:
    data_dir = tmp_path / "vna-data"
    backend = Backend("s3-postgres", _env(data_dir, database_url=private_pg.url,
                                          s3_endpoint=s3_server.endpoint,
                                          bucket=s3_server.bucket), data_dir)
    result = _run_with_outage(backend, tmp_path, private_pg.stop, private_pg.start)
    _check_outage(*result, backend)


def test_s3_down_and_back(private_weed: RestartableWeed, pg_url: str,
                          tmp_path: Path) -> None:
    data_dir = tmp_path / "vna-data"
    backend = Backend("s3-postgres", _env(data_dir, database_url=pg_url,
                                          s3_endpoint=private_weed.endpoint,
                                          bucket=private_weed.BUCKET), data_dir)
    result = _run_with_outage(backend, tmp_path, private_weed.stop, private_weed.start)
    _check_outage(*result, backend)


def test_redis_down_and_back(private_redis: PrivateRedis, s3_server: S3Server, pg_url: str,
                             tmp_path: Path) -> None:
    """The broker is off the ingest path: nothing fails; the outbox drains afterwards,
    and the statistics count every instance and document exactly once."""
    from tests.conftest import VNA, vna_env

    data_dir = tmp_path / "vna-data"
    env = _env(data_dir, database_url=pg_url, s3_endpoint=s3_server.endpoint,
               bucket=s3_server.bucket, VNA_BROKER_URL=private_redis.url,
               VNA_OUTBOX_POLL_SECONDS="1")
    backend = Backend("s3-postgres", env, data_dir)
    data_dir.mkdir(parents=True)
    worker = subprocess.Popen([*VNA, "worker", "--beat"], env=vna_env(env),
                              stdout=open(tmp_path / "worker.log", "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        instances, documents, _down, _back = _run_with_outage(
            backend, tmp_path, private_redis.stop, private_redis.start, outage=3.0)
        assert {a.status for a in instances} == {0}
        assert {a.status for a in documents} == {201}
        assert verify(backend.settings(), instances, documents) == []

        from sqlalchemy import func, select

        from storage.index.db import Index
        from storage.index.models import OutboxEvent

        index = Index(pg_url)
        deadline = time.monotonic() + 90
        pending = -1
        while time.monotonic() < deadline:
            with index.read_session() as s:
                pending = s.scalar(select(func.count()).select_from(OutboxEvent)
                                   .where(OutboxEvent.processed_at.is_(None)))
            if pending == 0:
                break
            time.sleep(1)
        index.dispose()
        assert pending == 0, (tmp_path / "worker.log").read_text()[-3000:]
        api = start_api(backend)
        try:
            summary = api.client().get("/api/v1/stats/summary").json()
        finally:
            stop_api(api)
        assert (summary["instances"], summary["documents"]) == (len(instances),
                                                                 len(documents))
    finally:
        worker.terminate()
        worker.wait(30)


def test_two_dicom_nodes_receive_one_study_at_once(s3_server: S3Server, pg_url: str,
                                                   tmp_path: Path,
                                                   dcmtk_env: dict[str, str]) -> None:
    """How a region scales out: two `vna scp` with their own local folders on one
    PostgreSQL and one bucket; two senders send the same study to both at the same time.
    One copy of each instance, no error status, counts exact."""
    study = f"2.25.{time.time_ns()}"
    files = [write(make_instance(patient_id="TWO-NODES", study_uid=study,
                                 series_uid=f"{study}.{s}", sop_uid=f"{study}.{s}.{i}",
                                 instance_number=i), tmp_path / "study" / f"{s}-{i}.dcm")
             for s in (1, 2) for i in range(40)]
    backends = [Backend("s3-postgres", _env(tmp_path / f"node-{n}", database_url=pg_url,
                                            s3_endpoint=s3_server.endpoint,
                                            bucket=s3_server.bucket), tmp_path / f"node-{n}")
                for n in ("a", "b")]
    with running_scp(backends[0]) as a, running_scp(backends[1]) as b:
        senders = [subprocess.Popen(["storescu", "-v", "-aec", "VNA", "-aet", f"SENDER{n}",
                                     "127.0.0.1", str(node.port), *map(str, files)],
                                    env=dcmtk_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
                   for n, node in enumerate((a, b))]
        outputs = [p.communicate(timeout=300)[0] for p in senders]
    for out in outputs:
        assert out.count("Received Store Response (Success)") == len(files), out[-2000:]
    ok = [Answer(f"{study}.{s}.{i}", 0, 0, 0, tmp_path / "study" / f"{s}-{i}.dcm")
          for s in (1, 2) for i in range(40)]
    assert verify(backends[0].settings(), ok, []) == []
    from sqlalchemy import func, select

    from storage.index.db import Index
    from storage.index.models import Instance, OutboxEvent, Series, Study

    index = Index(pg_url)
    try:
        with index.read_session() as s:
            counts = [s.scalar(select(func.count()).select_from(m))
                      for m in (Study, Series, Instance, OutboxEvent)]
    finally:
        index.dispose()
    assert counts == [1, 2, len(files), len(files)]
