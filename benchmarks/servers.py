"""The benchmark targets and the plumbing around them: ports, DCMTK tools, process cleanup.

Every target is started fresh on 127.0.0.1, on free ports, with its storage in a temporary
directory under the benchmark work dir (the same disk as the corpus). Every child process runs
in its own session, is remembered here, and is stopped by its id on exit, on an error or on
Ctrl-C; temporary directories and PostgreSQL databases are removed the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# `vna` of this checkout (vna_env puts it first on PYTHONPATH): the venv's `vna` script runs
# whichever checkout the venv was installed from, with whatever entry point it had then.
VNA = [sys.executable, "-m", "services.cli"]
PG_ADMIN_DSN = os.environ.get("VNA_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ORTHANC_BIN = os.environ.get("VNA_BENCH_ORTHANC", "/usr/sbin/Orthanc")
TARGETS = ("vna", "vna-pg", "vna-s3", "vna-s3-2nodes", "orthanc", "orthanc-pg", "storescp")
ORTHANC_PG_PLUGIN = os.environ.get(
    "VNA_BENCH_ORTHANC_PG", "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")
ORTHANC_DICOMWEB_PLUGIN = os.environ.get(
    "VNA_BENCH_ORTHANC_DICOMWEB", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class BenchError(RuntimeError):
    """A target did not start, or a run did not do what it should."""


# -- tools ------------------------------------------------------------------------------------

def _venv_tool(name: str) -> str:
    for d in (VENV_BIN, REPO / ".venv" / "bin"):
        if (d / name).exists():
            return str(d / name)
    found = shutil.which(name)
    if not found:
        raise BenchError(f"`{name}` not found (is the venv set up?)")
    return found


def dcmtk(tool: str) -> str:
    """The DCMTK binary `tool`: pynetdicom installs Python scripts of the same names in the venv,
    so take the first one on PATH that is a real executable (ELF), not a script."""
    for d in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]:
        p = Path(d or ".") / tool
        try:
            with open(p, "rb") as f:
                if f.read(4) == b"\x7fELF" and os.access(p, os.X_OK):
                    return str(p)
        except OSError:
            continue
    raise BenchError(f"DCMTK's `{tool}` is not installed (apt-get install dcmtk)")


def first_line(cmd: list[str]) -> str:
    """The first line a command prints (its version, say), or "?"."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception:
        return "?"


def dcmtk_env() -> dict[str, str]:
    """DCMTK (and Orthanc, which links it) leave Nagle on unless TCP_NODELAY=1: ~40 ms/message."""
    return {**os.environ, "TCP_NODELAY": "1"}


def vna_env(extra: dict[str, str]) -> dict[str, str]:
    """A clean environment for a vna process: no VNA_* from the caller's shell, no .env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNA_")}
    env["TCP_NODELAY"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


# -- ports --------------------------------------------------------------------------------------

_taken: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, plus_10000: bool = False) -> int:
    """A free loopback port (with port+10000 free too if asked: SeaweedFS's gRPC ports)."""
    for _ in range(500):
        p = random.randint(20000, 44999) if plus_10000 else random.randint(20000, 60999)
        if p in _taken or (plus_10000 and p + 10000 in _taken):
            continue
        if _bindable(p) and (not plus_10000 or _bindable(p + 10000)):
            _taken.update({p, p + 10000} if plus_10000 else {p})
            return p
    raise BenchError("no free port")


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


# -- processes and cleanup ----------------------------------------------------------------------

class _Registry:
    """What this benchmark started and must undo: processes, temp dirs, databases."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.undo: list[Callable[[], None]] = []

    def cleanup(self) -> None:
        for proc in list(self.procs):
            stop_process(proc, timeout=5)
        for fn in reversed(list(self.undo)):
            with contextlib.suppress(Exception):
                fn()
        self.undo.clear()


REGISTRY = _Registry()


def _on_sigterm(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def install_cleanup() -> None:
    """SIGTERM behaves like Ctrl-C, so that `finally` blocks run and children are stopped."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    import atexit

    atexit.register(REGISTRY.cleanup)


def start_process(cmd: Sequence[str], *, env: dict[str, str], log: Path,
                  cwd: Path | None = None, group: bool = False) -> subprocess.Popen[bytes]:
    """Start a child in its own session (so a stray signal to us does not race our cleanup).

    group: the child starts children of its own, to be killed with it if they linger.
    """
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
    if group:
        _groups.add(proc.pid)
    REGISTRY.procs.append(proc)
    return proc


_groups: set[int] = set()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM to the process itself, SIGKILL after `timeout`; then its lingering children."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if proc.pid in _groups:
            _groups.discard(proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc in REGISTRY.procs:
            REGISTRY.procs.remove(proc)


def spread_subdirectories(d: Path) -> None:
    """Mark `d` as the top of unrelated directory trees (`chattr +T`), so that ext4 puts each
    run's storage in a block group of its own.

    Each run deletes thousands of files, and ext4 without a journal (as on these machines)
    skips inodes deleted in the last minute when it allocates one, one candidate at a time:
    a file created in the same block group afterwards took 600-700 us instead of 20 us
    (measured), which would make whoever runs next pay for its predecessor's cleanup.
    Without the flag (another file system), nothing changes.
    """
    subprocess.run(["chattr", "+T", str(d)], capture_output=True, check=False)


def make_tempdir(workdir: Path, prefix: str) -> Path:
    """A temp dir under the work dir (same disk as the corpus), removed at exit at the latest."""
    runs = workdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    spread_subdirectories(runs)
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=runs))
    REGISTRY.undo.append(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def remove_tempdir(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)


def tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def echo(aet: str, port: int, *, timeout: float = 5) -> bool:
    """One C-ECHO with DCMTK's echoscu: the target answers DICOM, not just TCP."""
    try:
        r = subprocess.run([dcmtk("echoscu"), "-to", "3", "-ta", "3", "-aec", aet,
                            "127.0.0.1", str(port)], env=dcmtk_env(), capture_output=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def wait_echo(aet: str, port: int, proc: subprocess.Popen[bytes], log: Path,
              timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{aet} exited with {proc.returncode}:\n{tail(log)}")
        if echo(aet, port):
            return
        time.sleep(0.2)
    raise BenchError(f"{aet} on port {port} does not answer C-ECHO:\n{tail(log)}")


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until GET `url` answers 200 (the process must stay up meanwhile)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(f"{url} not OK after {timeout:.0f} s: {last}\n{tail(log)}")


def sync_disk() -> None:
    """Flush what the previous run left dirty (storescp does not fsync), so no run pays for it."""
    os.sync()


# -- PostgreSQL and SeaweedFS (the production shape of vna) --------------------------------------

def create_database() -> str:
    """A fresh PostgreSQL database; returns its SQLAlchemy URL. Dropped at exit at the latest."""
    import psycopg

    name = "vna_bench_" + uuid.uuid4().hex[:12]
    try:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=10) as c:
            c.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise BenchError(f"PostgreSQL at {PG_ADMIN_DSN} is not usable: {exc}") from exc
    REGISTRY.undo.append(lambda: drop_database(name))
    host = PG_ADMIN_DSN.split("://", 1)[1].rsplit("/", 1)[0]
    return f"postgresql+psycopg://{host}/{name}"


def drop_database(name_or_url: str) -> None:
    import psycopg

    name = name_or_url.rsplit("/", 1)[-1]
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=10) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def release(weed: Weed | None, db_url: str | None) -> None:
    """Stop a target's SeaweedFS and drop its database (either may be None)."""
    if weed is not None:
        weed.stop()
    if db_url is not None:
        with contextlib.suppress(Exception):
            drop_database(db_url)


class Weed:
    """A one-process SeaweedFS (master, volume, filer, S3) in its own temp dir."""

    def __init__(self, workdir: Path, *, volume_size_limit_mb: int = 1024) -> None:
        self.dir = make_tempdir(workdir, "weed-")
        self.log = self.dir / "weed.log"
        self.s3_port = free_port(plus_10000=True)
        ports = [free_port(plus_10000=True) for _ in range(3)]
        (self.dir / "data").mkdir()
        self.proc = start_process(
            [_venv_tool("weed"), "server", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1", "-s3", f"-s3.port={self.s3_port}",
             f"-master.port={ports[0]}", f"-volume.port={ports[1]}", f"-filer.port={ports[2]}",
             "-master.telemetry=false", "-volume.max=100",
             f"-master.volumeSizeLimitMB={volume_size_limit_mb}",
             "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed default ports: would clash
             "-volume.preStopSeconds=0"],
            env=dict(os.environ), log=self.log, group=True)
        try:
            wait_port(self.s3_port, 90, self.proc)
            self._wait_ready(90)
        except BaseException:
            self.stop()
            raise

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    def _wait_ready(self, timeout: float) -> None:
        import io

        from minio import Minio

        client = Minio(self.endpoint, "x", "y", secure=False)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                name = "ready-" + uuid.uuid4().hex[:8]
                client.make_bucket(name)
                client.put_object(name, "probe", io.BytesIO(b"x"), 1)
                client.remove_object(name, "probe")
                client.remove_bucket(name)
                return
            except Exception as exc:  # not ready yet
                last = exc
                time.sleep(0.5)
        raise BenchError(f"SeaweedFS S3 not ready: {last}\n{tail(self.log)}")

    def stop(self) -> None:
        # weed takes ~15 s to exit gracefully; its data is thrown away, so do not wait for it.
        stop_process(self.proc, timeout=3)
        remove_tempdir(self.dir)


# -- targets ------------------------------------------------------------------------------------

@dataclass
class Endpoint:
    aet: str
    port: int
    host: str = "127.0.0.1"


class Target:
    """A C-STORE/C-FIND peer: `start()` it on fresh storage, `count()` what it holds, `stop()`."""

    name = ""
    aet = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.endpoint: Endpoint | None = None
        self.log: Path | None = None

    def start(self) -> Endpoint:
        raise NotImplementedError

    @property
    def endpoints(self) -> list[Endpoint]:
        """Where senders go: one endpoint, or one per node of a scaled-out target."""
        assert self.endpoint is not None
        return [self.endpoint]

    def count(self) -> int | None:
        """Instances the target holds (to check a run), or None if it cannot tell."""
        return None

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Endpoint:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class VnaTarget(Target):
    """`vna scp`: embedded (files + SQLite), on PostgreSQL with files (`pg`, the shape of
    Orthanc with its PostgreSQL index plugin), or production-shaped (SeaweedFS S3 +
    PostgreSQL)."""

    aet = "VNA"

    def __init__(self, workdir: Path, *, s3: bool = False, pg: bool = False,
                 data_dir: Path | None = None, extra_env: dict[str, str] | None = None,
                 weed: Weed | None = None, db_url: str | None = None) -> None:
        super().__init__(workdir)
        self.name = "vna-s3" if s3 else "vna-pg" if pg else "vna"
        self.s3 = s3
        self.pg = pg or s3
        self.keep = data_dir is not None  # a caller-owned data dir (find.py's loaded index)
        self.data_dir = data_dir
        self.extra_env = extra_env or {}
        self.tmp: Path | None = None
        self.shared = weed is not None  # a node of a scaled-out target: not its to stop
        self.weed: Weed | None = weed
        self.db_url: str | None = db_url
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """The VNA_* settings of this target (also used by `vna import`)."""
        if self.data_dir is None:
            self.tmp = make_tempdir(self.workdir, f"{self.name}-")
            self.data_dir = self.tmp / "vna-data"
        env = {"VNA_DATA_DIR": str(self.data_dir), "VNA_FSYNC": "true", **self.extra_env}
        if self.pg:
            if self.db_url is None:
                self.db_url = create_database()
            env["VNA_DATABASE_URL"] = self.db_url
        if self.s3:
            if self.weed is None:
                self.weed = Weed(self.workdir)
            env.update({"VNA_STORAGE": "s3", "VNA_S3_ENDPOINT": self.weed.endpoint,
                        "VNA_S3_ACCESS_KEY": "x", "VNA_S3_SECRET_KEY": "y",
                        "VNA_S3_BUCKET": "bench"})
        return env

    def start(self) -> Endpoint:
        port = free_port()
        env = self.env()
        env.update({"VNA_DICOM_PORT": str(port), "VNA_DICOM_HOST": "127.0.0.1"})
        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.data_dir.parent / f"vna-scp-{port}.log"
        self.proc = start_process([*VNA, "scp"], env=vna_env(env), log=self.log,
                                  cwd=self.data_dir.parent, group=True)
        wait_echo(self.aet, port, self.proc, self.log)
        # The supervisor logs "listening" once every SCP process has bound the port.
        deadline = time.monotonic() + 30
        while "listening" not in tail(self.log, 200):
            if time.monotonic() > deadline:
                print(f"  ({self.name}: no 'listening' line in {self.log}; going on)",
                      file=sys.stderr)
                break
            time.sleep(0.1)
        self.endpoint = Endpoint(self.aet, port)
        return self.endpoint

    def count(self) -> int | None:
        try:
            if self.db_url:
                import psycopg

                dsn = self.db_url.replace("postgresql+psycopg://", "postgresql://")
                with psycopg.connect(dsn, connect_timeout=10) as c:
                    row = c.execute("SELECT count(*) FROM instance").fetchone()
                    return int(row[0]) if row else None
            assert self.data_dir is not None
            with contextlib.closing(sqlite3.connect(self.data_dir / "index.sqlite3")) as c:
                return int(c.execute("SELECT count(*) FROM instance").fetchone()[0])
        except Exception as exc:  # the schema is the archive's business; warn, do not fail
            print(f"  ({self.name}: cannot count instances: {exc})", file=sys.stderr)
            return None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if not self.shared:
            release(self.weed, self.db_url)
        self.weed = self.db_url = None
        if self.tmp is not None and not self.keep:
            remove_tempdir(self.tmp)
            self.tmp = None
            self.data_dir = None


class VnaNodesTarget(Target):
    """The production shape scaled out: two `vna scp` nodes, each with its own local data
    dir, on one PostgreSQL database and one SeaweedFS bucket; senders go round the nodes."""

    name = "vna-s3-2nodes"
    aet = "VNA"

    def __init__(self, workdir: Path, nodes: int = 2) -> None:
        super().__init__(workdir)
        self.n = nodes
        self.weed: Weed | None = None
        self.db_url: str | None = None
        self.nodes: list[VnaTarget] = []
        self._endpoints: list[Endpoint] = []

    def start(self) -> Endpoint:
        self.weed = Weed(self.workdir)
        self.db_url = create_database()
        for _ in range(self.n):
            node = VnaTarget(self.workdir, s3=True, weed=self.weed, db_url=self.db_url)
            self.nodes.append(node)
            self._endpoints.append(node.start())
        self.endpoint = self._endpoints[0]
        return self.endpoint

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    def count(self) -> int | None:
        return self.nodes[0].count() if self.nodes else None

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes, self._endpoints = [], []
        release(self.weed, self.db_url)
        self.weed = self.db_url = None


class VnaApiTarget(VnaTarget):
    """`vna api` (FastAPI under uvicorn, in-process: the started pid is the server) on files
    + SQLite, or PostgreSQL with files (`pg`, or a caller's database `db_url`, which it
    leaves alone), with a fresh bootstrap admin token (VNA_ADMIN_TOKEN) for each start."""

    def __init__(self, workdir: Path, *, pg: bool = False, data_dir: Path | None = None,
                 db_url: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, pg=pg or db_url is not None, data_dir=data_dir,
                         extra_env=extra_env, db_url=db_url)
        self.name = "vna-api-pg" if self.pg else "vna-api"
        self.shared = db_url is not None  # the caller's database: not this target's to drop
        self.token = ""
        self.http_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_root(self) -> str:
        return self.url + "/dicomweb"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Endpoint:
        self.http_port = free_port()
        self.token = "bench_" + secrets.token_urlsafe(24)
        env = self.env()
        env.update({"VNA_HTTP_HOST": "127.0.0.1", "VNA_HTTP_PORT": str(self.http_port),
                    "VNA_ADMIN_TOKEN": self.token})
        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.data_dir.parent / f"vna-api-{self.http_port}.log"
        self.proc = start_process([*VNA, "api"], env=vna_env(env), log=self.log,
                                  cwd=self.data_dir.parent, group=True)
        wait_http(f"{self.url}/health", 90, self.proc, self.log)
        self.endpoint = Endpoint("", self.http_port)
        return self.endpoint

    def stop_server(self) -> None:
        """Stop the process, keep its data (to `vna import` into it, then start again)."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


class OrthancTarget(Target):
    """Debian's Orthanc with its own config: default settings but for ports, storage, access."""

    name = "orthanc"
    aet = "ORTHANC"

    def __init__(self, workdir: Path, *, storage_dir: Path | None = None) -> None:
        super().__init__(workdir)
        self.keep = storage_dir is not None
        self.dir = storage_dir
        self.tmp: Path | None = None
        self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def extra_config(self) -> dict[str, object]:
        """What a variant adds to the default configuration."""
        return {}

    def start(self) -> Endpoint:
        if self.dir is None:
            self.tmp = self.dir = make_tempdir(self.workdir, "orthanc-")
        self.dir.mkdir(parents=True, exist_ok=True)
        port, self.http_port = free_port(), free_port()
        config = {
            "Name": "vna-bench", "DicomAet": self.aet, "DicomPort": port,
            "HttpPort": self.http_port, "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"), "Plugins": [],
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
            "DicomCheckCalledAet": False, "RemoteAccessAllowed": False,
            **self.extra_config(),
        }
        cfg = self.dir / f"orthanc-{port}.json"
        cfg.write_text(json.dumps(config, indent=2))
        self.log = self.dir / f"orthanc-{port}.log"
        self.proc = start_process([ORTHANC_BIN, str(cfg)], env=dcmtk_env(), log=self.log,
                                  cwd=self.dir)
        wait_port(self.http_port, 90, self.proc)
        wait_echo(self.aet, port, self.proc, self.log)
        self.endpoint = Endpoint(self.aet, port)
        return self.endpoint

    def count(self) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/statistics",
                                        timeout=30) as r:
                return int(json.load(r)["CountInstances"])
        except Exception as exc:
            print(f"  (orthanc: cannot count instances: {exc})", file=sys.stderr)
            return None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=60)
            self.proc = None
        if self.tmp is not None:
            remove_tempdir(self.tmp)
            self.tmp = self.dir = None


class OrthancPgTarget(OrthancTarget):
    """Orthanc with its PostgreSQL index plugin (Debian `orthanc-postgresql`), storage on
    disk: Orthanc's own production shape."""

    name = "orthanc-pg"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.db_url: str | None = None

    def extra_config(self) -> dict[str, object]:
        if not Path(ORTHANC_PG_PLUGIN).exists():
            raise BenchError(f"{ORTHANC_PG_PLUGIN} is missing (apt-get install "
                             "orthanc-postgresql)")
        self.db_url = create_database()
        host_port = PG_ADMIN_DSN.split("@", 1)[-1].split("/", 1)[0]
        host, _, port = host_port.partition(":")
        user = PG_ADMIN_DSN.split("://", 1)[1].split("@", 1)[0] if "@" in PG_ADMIN_DSN \
            else "postgres"
        return {"Plugins": [ORTHANC_PG_PLUGIN],
                "PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "Host": host,
                               "Port": int(port or 5432), "Database":
                               self.db_url.rsplit("/", 1)[1], "Username": user,
                               "Password": "", "Lock": False}}

    def stop(self) -> None:
        super().stop()
        release(None, self.db_url)
        self.db_url = None


class OrthancDicomWebTarget(OrthancTarget):
    """Orthanc with Debian's DICOMweb plugin (`orthanc-dicomweb`) at /dicom-web/, the
    plugin's defaults otherwise; HTTP for loopback only (RemoteAccessAllowed false)."""

    name = "orthanc-dicomweb"

    def extra_config(self) -> dict[str, object]:
        if not Path(ORTHANC_DICOMWEB_PLUGIN).exists():
            raise BenchError(f"{ORTHANC_DICOMWEB_PLUGIN} is missing (apt-get install "
                             "orthanc-dicomweb)")
        return {"Plugins": [ORTHANC_DICOMWEB_PLUGIN],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_root(self) -> str:
        return self.url + "/dicom-web"

    @property
    def headers(self) -> dict[str, str]:
        return {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class StorescpTarget(Target):
    """DCMTK's storescp writing every object as received (+B) to a file: the practical limit.

    `--fork` gives one process per association, as the other targets serve them concurrently.
    """

    name = "storescp"
    aet = "STORESCP"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Endpoint:
        self.dir = make_tempdir(self.workdir, "storescp-")
        out = self.dir / "out"
        out.mkdir()
        port = free_port()
        self.log = self.dir / "storescp.log"
        self.proc = start_process([dcmtk("storescp"), "--fork", "-aet", self.aet, "-dhl",
                                   "-od", str(out), "+B", str(port)],
                                  env=dcmtk_env(), log=self.log, cwd=self.dir, group=True)
        wait_echo(self.aet, port, self.proc, self.log)
        self.endpoint = Endpoint(self.aet, port)
        return self.endpoint

    def count(self) -> int | None:
        if self.dir is None:
            return None
        return sum(1 for p in (self.dir / "out").iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self.dir is not None:
            remove_tempdir(self.dir)
            self.dir = None


def make_target(name: str, workdir: Path) -> Target:
    if name == "vna":
        return VnaTarget(workdir)
    if name == "vna-pg":
        return VnaTarget(workdir, pg=True)
    if name == "vna-s3":
        return VnaTarget(workdir, s3=True)
    if name == "vna-s3-2nodes":
        return VnaNodesTarget(workdir)
    if name == "orthanc":
        return OrthancTarget(workdir)
    if name == "orthanc-pg":
        return OrthancPgTarget(workdir)
    if name == "storescp":
        return StorescpTarget(workdir)
    raise BenchError(f"unknown target {name!r} (known: {', '.join(TARGETS)})")


# -- memory -------------------------------------------------------------------------------------

def _status_kb(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    """The process's children, grandchildren, ... (from /proc/*/stat)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory (VmRSS, MB of 10^6 bytes) of a process and all its descendants."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError):
            total += _status_kb(p, "VmRSS")
    return total * 1024 / 1e6


class RssSampler:
    """A server's resident memory while the `with` block runs: VmRSS of the process and its
    descendants every `interval` seconds, and the process's own VmHWM (reset through
    clear_refs on entry) for a peak between samples."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.before = self.after = 0.0
        self.samples: list[float] = []
        self.hwm = 0.0
        self._hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                self.samples.append(tree_rss_mb(self.pid))

    def __enter__(self) -> RssSampler:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)
            self._hwm_reset = True
        except OSError:
            pass
        self.before = tree_rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self.after = tree_rss_mb(self.pid)
            if self._hwm_reset:
                self.hwm = _status_kb(self.pid, "VmHWM") * 1024 / 1e6

    @property
    def peak(self) -> float:
        return max([self.before, self.after, self.hwm, *self.samples])

    @property
    def growth(self) -> float:
        return self.peak - self.before


# -- where the time goes ---------------------------------------------------------------------------

_COMPONENTS = {"postgres": "postgresql", "weed": "seaweedfs", "Orthanc": "orthanc",
               "storescp": "storescp"}


def _cpu_by_component() -> dict[str, float]:
    """CPU seconds (user + system) of the live processes, by what they are."""
    ticks = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    out: dict[str, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / ticks
            name = _COMPONENTS.get(comm)
            if name is None and comm.startswith("python"):
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                name = "vna" if b"vna" in cmd or b"spawn_main" in cmd else None
        except (OSError, ValueError, IndexError):
            continue
        if name is not None:
            out[name] = out.get(name, 0.0) + cpu
    return out


class CpuMeter:
    """CPU seconds each component spent between `__init__` and `stop()`: the servers from
    /proc (they live through the run), the senders (storescu, this process's children,
    which exit during it) from this process's children's resource usage."""

    def __init__(self) -> None:
        import resource

        self._start = _cpu_by_component()
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children = ch.ru_utime + ch.ru_stime

    def stop(self) -> dict[str, float]:
        import resource

        end = _cpu_by_component()
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = {k: round(end[k] - self._start.get(k, 0.0), 2) for k in end
               if end[k] - self._start.get(k, 0.0) > 0.005}
        out["storescu"] = round(ch.ru_utime + ch.ru_stime - self._children, 2)
        return out


# -- the sender ---------------------------------------------------------------------------------

def split(files: Sequence[Path], n: int) -> list[list[Path]]:
    """n contiguous chunks of nearly equal size: n modalities, each sending its own studies."""
    k, r = divmod(len(files), n)
    out, start = [], 0
    for i in range(n):
        end = start + k + (1 if i < r else 0)
        out.append(list(files[start:end]))
        start = end
    return [c for c in out if c]


def storescu(files: Sequence[Path], endpoint: Endpoint | Sequence[Endpoint],
             associations: int, *, tmp: Path, timeout: float) -> float:
    """Send `files` over `associations` parallel storescu processes; the wall time in seconds.
    Given several endpoints (the nodes of a scaled-out target), the processes go round them.

    Each process reads its file list from a response file (@list), so any count fits.
    """
    targets = [endpoint] if isinstance(endpoint, Endpoint) else list(endpoint)
    chunks = split(files, associations)
    lists, logs = [], []
    for i, chunk in enumerate(chunks):
        lst = tmp / f"storescu-{i}.args"
        lst.write_text("\n".join(str(p) for p in chunk) + "\n")
        lists.append(lst)
        logs.append(tmp / f"storescu-{i}.log")
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        handles: list[IO[bytes]] = [stack.enter_context(open(log, "wb")) for log in logs]
        try:
            t0 = time.perf_counter()
            for i, (lst, out) in enumerate(zip(lists, handles, strict=True)):
                to = targets[i % len(targets)]
                procs.append(subprocess.Popen(
                    [dcmtk("storescu"), "-aet", "BENCHSCU", "-aec", to.aet,
                     # e.g. "-xf cfg profile": contexts beyond storage (pynetdicom's path)
                     *os.environ.get("VNA_BENCH_STORESCU_ARGS", "").split(), to.host,
                     str(to.port), f"@{lst}"],
                    env=dcmtk_env(), stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True))
                REGISTRY.procs.append(procs[-1])
            deadline = t0 + timeout
            for p in procs:
                try:
                    p.wait(max(0.1, deadline - time.perf_counter()))
                except subprocess.TimeoutExpired:
                    raise BenchError(f"storescu did not finish in {timeout:.0f} s") from None
            elapsed = time.perf_counter() - t0
        finally:
            for p in procs:
                stop_process(p, timeout=2)
    bad = [(p.returncode, log) for p, log in zip(procs, logs, strict=True) if p.returncode]
    for log in logs:
        text = log.read_text(errors="replace")
        if "E:" in text or "Failed" in text or "Error" in text:
            bad.append((0, log))
    if bad:
        rc, log = bad[0]
        raise BenchError(f"storescu failed (exit {rc}):\n{tail(log)}")
    return elapsed


@contextlib.contextmanager
def cleanup_on_exit() -> Iterator[None]:
    """Run a benchmark's main body; whatever happens, stop what it started."""
    install_cleanup()
    try:
        yield
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        raise SystemExit(130) from None
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        REGISTRY.cleanup()
