"""Servers of a test's own, which the test may stop and start again: PostgreSQL, SeaweedFS
(S3) and Redis, as a region's archive sees them go down and come back in a year.

The session's shared servers (conftest) are never stopped; these run on free ports in
their own folders, and are removed when the test ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.conftest import free_port, free_port_pair, wait_port


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited after `timeout` seconds."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {tool} is not installed")
    return found[-1]


class PrivatePostgres:
    """A PostgreSQL cluster in a temp folder (initdb, trust auth), run as the `postgres`
    user when the tests run as root (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vna-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, "postgres")
            os.chmod(self.root, 0o700)
        subprocess.run([*self._as, _pg_bin("initdb"), "-D", str(self.data), "-A", "trust",
                        "-U", "postgres", "--no-sync"], check=True, capture_output=True)
        self.start()
        subprocess.run([*self._as, _pg_bin("createdb"), "-h", "127.0.0.1", "-p",
                        str(self.port), "-U", "postgres", "vna"], check=True,
                       capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/vna"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self._as, _pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                        *args], check=True, capture_output=True)

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
                  "-l", str(self.root / "log"), "start")

    def stop(self) -> None:
        """A fast shutdown, as a restart by an operator or an upgrade does it."""
        self._ctl("-m", "fast", "stop")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ctl("-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class RestartableWeed:
    """A one-process SeaweedFS with S3 on fixed ports and folder, so that it comes back
    as the same server with the same objects."""

    BUCKET = "vna"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vna-weed-"))
        self.s3_port, self._master, self._volume, self._filer = (
            free_port_pair() for _ in range(4))
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    def start(self) -> None:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        log = open(self.dir / "weed.log", "ab")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(
            [weed, "server", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-s3", f"-s3.port={self.s3_port}", f"-master.port={self._master}",
             f"-volume.port={self._volume}", f"-filer.port={self._filer}",
             "-volume.max=100", "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.preStopSeconds=0",
             "-master.electionTimeout=1s"],  # a restarted master leads at once
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.s3_port, 60)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        import io

        from minio import Minio

        client = Minio(self.endpoint, "vna", "vna-secret", secure=False)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not client.bucket_exists(self.BUCKET):
                    client.make_bucket(self.BUCKET)
                probe = f"probe-{uuid.uuid4().hex}"
                client.put_object(self.BUCKET, probe, io.BytesIO(b"x"), 1)
                client.remove_object(self.BUCKET, probe)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        """As an operator stops it (SIGTERM); SeaweedFS takes ~15 s to finish."""
        _terminate(self.proc, 30)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:  # its data goes with it: no need to wait for it
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """redis-server on a free port, nothing kept on disk (like the one of these machines)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        wait_port(self.port, 30)

    def stop(self) -> None:
        _terminate(self.proc, 20)
        self.proc = None

    def close(self) -> None:
        self.stop()
