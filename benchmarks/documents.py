"""Document throughput: one large file up and down through the HTTP API vs the minio SDK direct.

The production shape: `vna api` on a fresh single-process SeaweedFS (S3) and a fresh PostgreSQL
database. Each run starts `vna api` fresh, warms it up with one small upload and download, then
times, against the same S3 server and bucket:

- API upload: `POST /api/v1/documents` (multipart, `metadata` then `file`), streamed from the
  file in 1 MiB chunks, until the 201 is in; the returned size and sha256 are checked;
- direct put: `Minio.fput_object` of the same file (SDK defaults: multipart, 3 parallel parts);
- API download: `GET /api/v1/documents/{uniqueId}/content` to nowhere, sha256 checked;
- direct get: `Minio.get_object` read in 1 MiB chunks to nowhere, sha256 checked;

and samples the server's resident memory (/proc/<pid>/status VmRSS every 50 ms, and VmHWM
after resetting it) during the API upload. The file is an MP4 header and random bytes, so
libmagic calls it video/mp4 and nothing can compress it.

    .venv/bin/python benchmarks/documents.py --help
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import secrets
import shutil
import statistics
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import DEFAULT_WORKDIR  # noqa: E402
from servers import (  # noqa: E402
    REPO,
    VNA,
    BenchError,
    Weed,
    _venv_tool,
    cleanup_on_exit,
    create_database,
    first_line,
    free_port,
    make_tempdir,
    remove_tempdir,
    start_process,
    stop_process,
    sync_disk,
    tail,
    vna_env,
    wait_port,
)

MIB = 1 << 20
MB = 1e6  # rates and memory are reported in MB (10^6 bytes), the file size is given in MiB
CHUNK = 1 << 20
BUCKET = "bench"
FTYP = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"  # ISO-BMFF `ftyp` box, 24 bytes
METADATA = {"patientId": "191212121212", "classCode": "video", "practiceSettingCode": "surgery",
            "title": "vna benchmark"}
TARGET_RATIO = 0.8  # API throughput at least this times the direct S3 put/get
TARGET_RSS_MB = 100.0  # server RSS growth during the upload below this


# -- the file -----------------------------------------------------------------------------------

@dataclass
class TestFile:
    path: Path
    size: int
    sha256: str


def make_file(path: Path, size: int) -> TestFile:
    """An MP4 of `size` bytes: an `ftyp` box, then one `mdat` box (64-bit size) of random data."""
    if size < 64:
        raise BenchError("the file must be at least 64 bytes")
    head = FTYP + struct.pack(">I4sQ", 1, b"mdat", size - len(FTYP))
    digest = hashlib.sha256(head)
    with open(path, "wb") as f:
        f.write(head)
        left = size - len(head)
        while left:
            block = os.urandom(min(CHUNK, left))
            f.write(block)
            digest.update(block)
            left -= len(block)
    import magic

    kind = magic.from_file(str(path), mime=True)
    if kind != "video/mp4":
        raise BenchError(f"libmagic calls the test file {kind}, not video/mp4")
    return TestFile(path, size, digest.hexdigest())


# -- the server and its memory ------------------------------------------------------------------

class ApiServer:
    """`vna api` on the given storage, with a bootstrap admin token, in its own temp dir."""

    def __init__(self, workdir: Path, storage_env: dict[str, str]) -> None:
        self.dir = make_tempdir(workdir, "vna-api-")
        self.port = free_port()
        self.token = "bench_" + secrets.token_urlsafe(24)
        self.log = self.dir / "vna-api.log"
        env = vna_env({**storage_env, "VNA_DATA_DIR": str(self.dir / "vna-data"),
                       "VNA_HTTP_HOST": "127.0.0.1", "VNA_HTTP_PORT": str(self.port),
                       "VNA_ADMIN_TOKEN": self.token})
        # `vna api` runs uvicorn in-process: this pid is the server whose memory is measured.
        self.proc = start_process([*VNA, "api"], env=env, log=self.log,
                                  cwd=self.dir)
        try:
            wait_port(self.port, 90, self.proc)
            self._wait_healthy(60)
        except BaseException as exc:
            log = tail(self.log)
            self.stop()
            if isinstance(exc, BenchError):
                raise BenchError(f"vna api did not start: {exc}\n{log}") from None
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                            timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise BenchError(f"/health not OK after {timeout:.0f} s: {last}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"vna api exited with {self.proc.returncode}:\n{tail(self.log)}")

    def stop(self) -> None:
        stop_process(self.proc)
        remove_tempdir(self.dir)


def _status_kb(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field_name} in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") * 1024 / MB


class PeakRss:
    """The peak RSS of a process while the `with` block runs: VmRSS sampled in a thread, and
    VmHWM (the kernel's own high-water mark) after resetting it through clear_refs."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.before = 0.0
        self.peak = 0.0
        self.samples = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError, BenchError):
                self.peak = max(self.peak, rss_mb(self.pid))
                self.samples += 1

    def __enter__(self) -> PeakRss:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.before = self.peak = rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError, BenchError):
            self.peak = max(self.peak, rss_mb(self.pid))
            if self.hwm_reset:
                self.peak = max(self.peak, _status_kb(self.pid, "VmHWM") * 1024 / MB)

    @property
    def growth(self) -> float:
        return self.peak - self.before


# -- the clients --------------------------------------------------------------------------------

def _multipart(f: TestFile, filename: str) -> tuple[str, bytes, bytes]:
    """Boundary, the bytes before the file's and the bytes after them."""
    boundary = "vnabench" + uuid.uuid4().hex
    pre = (f"--{boundary}\r\n"
           'Content-Disposition: form-data; name="metadata"\r\n'
           "Content-Type: application/json\r\n\r\n"
           f"{json.dumps(METADATA)}\r\n"
           f"--{boundary}\r\n"
           f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
           "Content-Type: video/mp4\r\n\r\n").encode()
    return boundary, pre, f"\r\n--{boundary}--\r\n".encode()


def api_upload(server: ApiServer, f: TestFile, timeout: float,
               filename: str = "big.mp4") -> tuple[float, str]:
    """POST the file as a document, streamed from disk; (seconds, uniqueId)."""
    boundary, pre, post = _multipart(f, filename)

    def body() -> Iterator[bytes]:
        yield pre
        with open(f.path, "rb", buffering=0) as src:
            while chunk := src.read(CHUNK):
                yield chunk
        yield post

    headers = {"Authorization": f"Bearer {server.token}",
               "Content-Type": f"multipart/form-data; boundary={boundary}",
               "Content-Length": str(len(pre) + f.size + len(post))}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/v1/documents", body=body(), headers=headers)
        except OSError as exc:  # the server may have answered (and closed) early: read why
            try:
                resp = conn.getresponse()
                detail = resp.read(2000).decode(errors="replace")
            except Exception:
                server.check_alive()
                raise BenchError(f"API upload: sending failed: {exc!r}") from None
            raise BenchError(f"API upload: sending failed ({exc!r}) after HTTP "
                             f"{resp.status}: {detail}") from None
        resp = conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    if resp.status != 201:
        raise BenchError(f"API upload: HTTP {resp.status}: "
                         f"{data[:2000].decode(errors='replace')}")
    entry: dict[str, Any] = json.loads(data)
    if entry.get("size") != f.size or entry.get("hash") != f.sha256:
        raise BenchError(f"API upload: the entry says size {entry.get('size')} hash "
                         f"{entry.get('hash')}, the file is {f.size} bytes, {f.sha256}")
    return elapsed, str(entry["uniqueId"])


def _drain(chunks: Iterator[bytes], f: TestFile, what: str) -> None:
    digest = hashlib.sha256()
    n = 0
    for chunk in chunks:
        digest.update(chunk)
        n += len(chunk)
    if n != f.size or digest.hexdigest() != f.sha256:
        raise BenchError(f"{what}: got {n} bytes, sha256 {digest.hexdigest()}; expected "
                         f"{f.size} bytes, {f.sha256}")


def api_download(server: ApiServer, unique_id: str, f: TestFile, timeout: float) -> float:
    """GET the document's content to nowhere (sha256 checked); seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request("GET", f"/api/v1/documents/{unique_id}/content",
                     headers={"Authorization": f"Bearer {server.token}"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"API download: HTTP {resp.status}: "
                             f"{resp.read(2000).decode(errors='replace')}")
        _drain(iter(lambda: resp.read(CHUNK), b""), f, "API download")
        elapsed = time.perf_counter() - t0
    except OSError as exc:
        server.check_alive()
        raise BenchError(f"API download: {exc!r}") from None
    finally:
        conn.close()
    return elapsed


def direct_put(client: Any, key: str, f: TestFile, part_size: int) -> float:
    """`fput_object` of the file; seconds."""
    t0 = time.perf_counter()
    client.fput_object(BUCKET, key, str(f.path), content_type="video/mp4", part_size=part_size)
    elapsed = time.perf_counter() - t0
    size = client.stat_object(BUCKET, key).size
    if size != f.size:
        raise BenchError(f"direct put: the object has {size} bytes, the file {f.size}")
    return elapsed


def direct_get(client: Any, key: str, f: TestFile) -> float:
    """`get_object` read to nowhere in 1 MiB chunks (sha256 checked); seconds."""
    t0 = time.perf_counter()
    resp = client.get_object(BUCKET, key)
    try:
        _drain(resp.stream(CHUNK), f, "direct get")
    finally:
        resp.close()
        resp.release_conn()
    return time.perf_counter() - t0


def remove_objects(client: Any, prefix: str) -> None:
    for obj in client.list_objects(BUCKET, prefix=prefix, recursive=True):
        client.remove_object(BUCKET, obj.object_name)


# -- one run ------------------------------------------------------------------------------------

@dataclass
class Run:
    """The figures of one run (seconds, MB); None where a step failed."""

    api_upload_s: float | None = None
    direct_put_s: float | None = None
    api_download_s: float | None = None
    direct_get_s: float | None = None
    rss_started_mb: float | None = None
    rss_before_mb: float | None = None
    rss_upload_peak_mb: float | None = None
    rss_download_peak_mb: float | None = None
    rss_samples: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def rss_upload_growth_mb(self) -> float | None:
        if self.rss_upload_peak_mb is None or self.rss_before_mb is None:
            return None
        return self.rss_upload_peak_mb - self.rss_before_mb

    @property
    def rss_download_growth_mb(self) -> float | None:
        if self.rss_download_peak_mb is None or self.rss_before_mb is None:
            return None
        return self.rss_download_peak_mb - self.rss_before_mb


def _step(run: Run, label: str, fn: Any) -> Any:
    """Run one measured step; a failure is recorded and printed, not raised."""
    try:
        return fn()
    except BenchError as exc:
        msg = f"{label}: {exc}"
    except Exception as exc:  # an SDK or protocol error: report it as it is
        msg = f"{label}: {type(exc).__name__}: {exc}"
    run.errors.append(msg)
    print(f"  FAILED {msg}", file=sys.stderr, flush=True)
    return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int | None, timeout: float = 60.0) -> None:
    """Flush dirty pages, then wait until the S3 server is idle (< 5% of a core over 0.5 s).

    SeaweedFS goes on working for seconds after a large multipart upload; whichever step
    came next paid for it, so single figures said more about the order than the paths."""
    sync_disk()
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return


def measure(n: int, f: TestFile, warm: TestFile, workdir: Path, storage_env: dict[str, str],
            client: Any, part_size: int, timeout: float, downloads: int = 3,
            s3_pid: int | None = None) -> Run:
    """One run on a fresh `vna api`: warm-up, then both uploads, then `downloads` rounds of
    both downloads, alternating (the median of each counts). Every timed step starts with
    the S3 server idle (`settle`)."""
    run = Run()
    server = ApiServer(workdir, storage_env)
    try:
        run.rss_started_mb = rss_mb(server.pid)
        _, warm_id = api_upload(server, warm, timeout, filename="warm.mp4")
        api_download(server, warm_id, warm, timeout)
        direct_key = f"direct/{uuid.uuid4().hex}.mp4"
        api_first = n % 2 == 1  # alternate which goes first, against drift
        unique_id: str | None = None
        rss = PeakRss(server.pid)

        def up_api() -> None:
            nonlocal unique_id
            settle(s3_pid)
            with rss:
                run.api_upload_s, unique_id = api_upload(server, f, timeout)
            run.rss_before_mb, run.rss_upload_peak_mb = rss.before, rss.peak
            run.rss_samples = rss.samples

        def up_direct() -> None:
            settle(s3_pid)
            run.direct_put_s = direct_put(client, direct_key, f, part_size)

        api_gets: list[float] = []
        direct_gets: list[float] = []

        def down_api() -> None:
            if unique_id is None:
                return
            settle(s3_pid)
            with PeakRss(server.pid) as down:
                api_gets.append(api_download(server, unique_id, f, timeout))
            run.rss_download_peak_mb = max(run.rss_download_peak_mb or 0.0, down.peak)

        def down_direct() -> None:
            if run.direct_put_s is None:
                return
            settle(s3_pid)
            direct_gets.append(direct_get(client, direct_key, f))

        ups = [("API upload", up_api), ("direct put", up_direct)]
        downs = [("API download", down_api), ("direct get", down_direct)]
        steps = (ups + downs * downloads) if api_first else (ups[::-1] + downs[::-1] * downloads)
        for label, fn in steps:
            _step(run, label, fn)
        run.api_download_s = statistics.median(api_gets) if api_gets else None
        run.direct_get_s = statistics.median(direct_gets) if direct_gets else None
    finally:
        server.stop()
        for prefix in ("documents/", "direct/"):
            with contextlib.suppress(Exception):
                remove_objects(client, prefix)
        sync_disk()
    return run


# -- the report ---------------------------------------------------------------------------------

def _rate(size: int, seconds: float | None) -> float | None:
    return None if seconds is None else size / MB / seconds


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _fmt(v: float | None, digits: int = 1) -> str:
    return "failed" if v is None else f"{v:,.{digits}f}"


def summarize(runs: list[Run], size: int) -> dict[str, dict[str, Any]]:
    """Per-run values and medians of every reported figure (ratios: per run, then median)."""
    rows: dict[str, list[float | None]] = {
        "API upload MB/s": [_rate(size, r.api_upload_s) for r in runs],
        "direct put MB/s": [_rate(size, r.direct_put_s) for r in runs],
        "API download MB/s": [_rate(size, r.api_download_s) for r in runs],
        "direct get MB/s": [_rate(size, r.direct_get_s) for r in runs],
    }
    rows["upload API / direct"] = [_ratio(a, b) for a, b in zip(
        rows["API upload MB/s"], rows["direct put MB/s"], strict=True)]
    rows["download API / direct"] = [_ratio(a, b) for a, b in zip(
        rows["API download MB/s"], rows["direct get MB/s"], strict=True)]
    rows["server RSS at start MB"] = [r.rss_started_mb for r in runs]
    rows["server RSS before upload MB"] = [r.rss_before_mb for r in runs]
    rows["server RSS peak, upload MB"] = [r.rss_upload_peak_mb for r in runs]
    rows["server RSS growth, upload MB"] = [r.rss_upload_growth_mb for r in runs]
    rows["server RSS growth, download MB"] = [r.rss_download_growth_mb for r in runs]
    return {k: {"runs": v, "median": _median(v)} for k, v in rows.items()}


def report(summary: dict[str, dict[str, Any]], runs: int) -> str:
    head = "| | " + " | ".join(f"run {i}" for i in range(1, runs + 1)) + " | median |"
    lines = [head, "|---|" + "---:|" * (runs + 1)]
    for name, row in summary.items():
        digits = 2 if "/ direct" in name else 1
        cells = " | ".join(_fmt(v, digits) for v in row["runs"])
        lines.append(f"| {name} | {cells} | {_fmt(row['median'], digits)} |")
    return "\n".join(lines)


def verdicts(summary: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """(what, figure, met) per target; throughput on the median ratio, memory on the worst run."""
    out: list[tuple[str, str, bool | None]] = []
    for name in ("upload API / direct", "download API / direct"):
        v = summary[name]["median"]
        out.append((f"{name.split()[0]} throughput, API vs direct S3 (median), "
                    f">= {TARGET_RATIO}x", _fmt(v, 2) + "x",
                    None if v is None else v >= TARGET_RATIO))
    growth = [g for g in summary["server RSS growth, upload MB"]["runs"] if g is not None]
    worst = max(growth) if growth else None
    out.append((f"server RSS growth during the upload (worst run), < {TARGET_RSS_MB:.0f} MB",
                _fmt(worst) + " MB", None if worst is None else worst < TARGET_RSS_MB))
    return out


def environment(weed: str) -> dict[str, str]:
    import minio

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "host": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "vna": first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "seaweedfs": first_line([weed, "version"]),
        "minio-py": minio.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Document upload/download through `vna api` vs the minio SDK direct to the "
                    "same S3 server (SeaweedFS), and the server's RSS during the upload.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="file size in MiB (1024 = 1 GiB)")
    ap.add_argument("--runs", type=int, default=3, help="runs (median reported)")
    ap.add_argument("--downloads", type=int, default=3,
                    help="downloads of each object per run, alternating (median counts)")
    ap.add_argument("--part-size-mb", type=int, default=0,
                    help="multipart part size of the direct put in MiB; 0 = the SDK's choice")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help="test file and temporary storage (env VNA_BENCH_DIR); not in the repo")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="socket timeout of the API requests, seconds")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)
    if args.size_mb < 1 or args.runs < 1:
        ap.error("--size-mb and --runs must be at least 1")
    workdir = args.workdir.resolve()
    if workdir.is_relative_to(REPO):
        ap.error(f"--workdir must be outside the repository ({REPO})")
    size = args.size_mb * MIB

    with cleanup_on_exit():
        workdir.mkdir(parents=True, exist_ok=True)
        need = size * (2 * args.runs + 1) + (1 << 30)  # SeaweedFS reclaims deletions lazily
        free = shutil.disk_usage(workdir).free
        if free < need:
            raise BenchError(f"{workdir} has {free / MB:,.0f} MB free; this needs about "
                             f"{need / MB:,.0f} MB")
        env = environment(_venv_tool("weed"))
        for k, v in env.items():
            print(f"# {k}: {v}")
        files = make_tempdir(workdir, "documents-")
        t0 = time.perf_counter()
        big = make_file(files / "big.mp4", size)
        warm = make_file(files / "warm.mp4", MIB)
        print(f"# file: {size / MB:,.1f} MB video/mp4 ({args.size_mb} MiB), made in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

        # Volumes big enough that no upload fills one: SeaweedFS growing a new volume in the
        # middle of a timed upload made single figures swing by 2x.
        weed = Weed(workdir, volume_size_limit_mb=16000)
        storage_env = {"VNA_STORAGE": "s3", "VNA_S3_ENDPOINT": weed.endpoint,
                       "VNA_S3_ACCESS_KEY": "x", "VNA_S3_SECRET_KEY": "y",
                       "VNA_S3_BUCKET": BUCKET, "VNA_DATABASE_URL": create_database()}
        from minio import Minio

        client = Minio(weed.endpoint, "x", "y", secure=False)
        if not client.bucket_exists(BUCKET):
            client.make_bucket(BUCKET)

        runs: list[Run] = []
        for n in range(1, args.runs + 1):
            run = measure(n, big, warm, workdir, storage_env, client, args.part_size_mb * MIB,
                          args.timeout, downloads=args.downloads, s3_pid=weed.proc.pid)
            runs.append(run)
            print(f"run {n}/{args.runs}: API up {_fmt(_rate(size, run.api_upload_s))} MB/s, "
                  f"direct put {_fmt(_rate(size, run.direct_put_s))} MB/s, "
                  f"API down {_fmt(_rate(size, run.api_download_s))} MB/s, "
                  f"direct get {_fmt(_rate(size, run.direct_get_s))} MB/s, "
                  f"RSS {_fmt(run.rss_before_mb)} -> {_fmt(run.rss_upload_peak_mb)} MB "
                  f"({run.rss_samples} samples)", file=sys.stderr, flush=True)
        weed.stop()

        summary = summarize(runs, size)
        print()
        print(f"{args.size_mb} MiB video/mp4 through `vna api` vs the minio SDK direct, same "
              f"SeaweedFS S3 server; median of {args.runs} run(s); MB = 10^6 bytes")
        print()
        print(report(summary, args.runs))
        print()
        for what, figure, met in verdicts(summary):
            mark = "failed" if met is None else ("met" if met else "NOT met")
            print(f"- {what}: {figure}: {mark}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "environment": env, "size_bytes": size, "runs": [
                    {**asdict(r), "rss_upload_growth_mb": r.rss_upload_growth_mb,
                     "rss_download_growth_mb": r.rss_download_growth_mb} for r in runs],
                "summary": summary,
                "targets": [{"what": w, "figure": fig, "met": m}
                            for w, fig, m in verdicts(summary)]}, indent=2))
        return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
