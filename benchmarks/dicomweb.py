"""DICOMweb side by side: vna's `/dicomweb` and Orthanc with its DICOMweb plugin, in one run.

Both servers run on loopback on the same corpora, and one HTTP client (httpx: HTTP/1.1,
keep-alive, TCP_NODELAY; wall time on the client, responses streamed, never held whole when
large) asks both the same questions, the targets interleaved (A B, then B A), as short runs
on a shared machine drift by up to +-35 %. Figures are medians, and ratios vna / Orthanc.

- series `/metadata` of a 1,000-instance series (median ms; target < 300 ms and >= 3x faster
  than Orthanc);
- QIDO studies by PatientID, OHIF's study-list query, on a 100,000-instance index (median ms;
  target < 20 ms); with `--qido-pg-count 1000000`, vna alone on PostgreSQL at a million
  (stats.py's region-year index; target < 50 ms);
- WADO-RS series retrieval, `transfer-syntax=*` (MB/s);
- every frame of a 500-slice CT series as OHIF fetches them: `/frames/1` per instance,
  OHIF's Accept, 6 requests in flight (seconds, frames/s);
- STOW-RS ingest into an empty archive, bodies of `--stow-per-request` instances, 1 and 4
  concurrent clients (instances/s);
- the server's RSS while it takes a `--big-gb` STOW (one request) and while it sends the same
  study back (one WADO-RS request), sampled every 0.5 s (growth; target < 100 MB).

The series, the frames' series and the QIDO index are loaded once into one vna (`vna import`,
then the outbox drained as `vna worker` would: the per-instance DICOM JSON is derived) and one
Orthanc (DCMTK storescu, 4 associations), kept under `<workdir>/dicomweb-index/` and reused
while their counts match. STOW and the big runs start each target fresh on empty storage.

A vna route that does not exist yet (404 "Not Found" from the router, or 405) is reported as
"n/a (not implemented)" for that figure; any other failure as "error: ..." (exit 1).

    .venv/bin/python benchmarks/dicomweb.py --help
    .venv/bin/python benchmarks/dicomweb.py --quick     # small sizes, about a minute
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import (  # noqa: E402
    DEFAULT_WORKDIR,
    Corpus,
    generate,
    instance_uid,
    series_uid,
    study_uid,
    warm,
)
from servers import (  # noqa: E402
    REPO,
    VNA,
    BenchError,
    OrthancDicomWebTarget,
    OrthancTarget,
    RssSampler,
    VnaApiTarget,
    cleanup_on_exit,
    make_tempdir,
    remove_tempdir,
    split,
    storescu,
    sync_disk,
    tail,
    vna_env,
)

TARGETS = ("vna", "orthanc")
MEASURES = ("metadata", "qido", "retrieve", "frames", "stow", "big")
DICOM_JSON = "application/dicom+json"
# WADO-RS as dicomweb-client and most archives' clients ask for the stored bytes.
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# OHIF 3.13's frames request (see /work/shared/FIELD-NOTES.md).
ACCEPT_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
# OHIF 3.13's study list: this query string plus the filter.
OHIF_STUDY_LIST = ("limit=101&offset=0&fuzzymatching=false"
                   "&includefield=00081030,00080060,00080090,00100030")
FRAME_BYTES = 512 * 512 * 2  # the series corpus: 512x512, 16 bits allocated
SLICE_FILE_BYTES = 525_700  # about, one series-corpus file (for --big-gb)
MB = 1e6
# Accept-Encoding of every request: `identity` measures what each server does to answer,
# not a compression trade-off that depends on the network (--accept-encoding to change).
CONTENT_CODING = ["identity"]
TARGET_METADATA_MS = 300.0
TARGET_METADATA_SPEEDUP = 3.0
TARGET_QIDO_MS = 20.0
TARGET_QIDO_PG_MS = 50.0
TARGET_RSS_MB = 100.0

# What `vna worker` does with the outbox, run once over a loaded index: derives each
# instance's DICOM JSON (InstanceMetadata), so /metadata is measured in its steady state.
DERIVE = """
from zoneinfo import ZoneInfo
from services.runtime import open_runtime
from storage.derive import Deriver
from storage.outbox import lag
r = open_runtime()
d = Deriver(r.index, r.store, ZoneInfo(r.settings.timezone))
n = 0
while (k := d.drain(batch=500, max_events=20_000)):
    n += k
print(n, lag(r.index)[0])
"""


class NotImplementedRoute(Exception):
    """The route is not there (yet): the figure is n/a, not an error."""


class Failed(Exception):
    """A request answered wrongly: the figure is an error."""


# -- results ------------------------------------------------------------------------------------

@dataclass
class Cell:
    """One target's figure for one measure: the median of `runs`, or why there is none."""

    value: float | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, NotImplementedRoute):
            self.note = "n/a (not implemented)"
        else:
            self.note = f"error: {exc}"[:400]
        self.value = None

    @property
    def error(self) -> bool:
        return self.note.startswith("error")


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    lower_is_better: bool
    target: str = ""
    cells: dict[str, Cell] = field(default_factory=dict)
    met: bool | None = None

    def cell(self, target: str) -> Cell:
        return self.cells.setdefault(target, Cell())

    def ratio(self) -> float | None:
        v, o = self.cells.get("vna"), self.cells.get("orthanc")
        if v and o and v.value is not None and o.value:
            return v.value / o.value
        return None


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p90(values: Sequence[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(0.9 * (len(s) - 1))))]


# -- sites: a started target as an HTTP client sees it -------------------------------------------

@dataclass
class Site:
    name: str  # "vna" or "orthanc"
    target: VnaApiTarget | OrthancDicomWebTarget

    @property
    def root(self) -> str:
        return self.target.dicomweb_root

    @property
    def pid(self) -> int:
        return self.target.pid

    def client(self, timeout: float) -> httpx.Client:
        """One keep-alive HTTP/1.1 connection (httpcore sets TCP_NODELAY on it), asking
        for CONTENT_CODING (httpx would ask for gzip, which Orthanc then spends CPU on)."""
        headers = {**self.target.headers, "Accept-Encoding": CONTENT_CODING[0]}
        return httpx.Client(headers=headers, timeout=timeout,
                            limits=httpx.Limits(max_connections=1,
                                                max_keepalive_connections=1))


def fresh_target(name: str, workdir: Path) -> VnaApiTarget | OrthancDicomWebTarget:
    return VnaApiTarget(workdir) if name == "vna" else OrthancDicomWebTarget(workdir)


def check(r: httpx.Response, expected: int = 200) -> None:
    """`expected`, or NotImplementedRoute for a route that is not there, or Failed."""
    if r.status_code == expected:
        return
    with contextlib.suppress(Exception):
        r.read()  # a streamed answer: its body says what went wrong
    if r.status_code == 405 or (r.status_code == 404 and _router_404(r)):
        raise NotImplementedRoute()
    raise Failed(f"{r.request.method} {r.request.url.path} -> {r.status_code} "
                 f"{r.text[:300]!r}")


def _router_404(r: httpx.Response) -> bool:
    """FastAPI's answer for a path no route has (a route's own 404 says what is missing)."""
    try:
        return bool(r.json() == {"detail": "Not Found"})
    except Exception:  # noqa: BLE001 - not JSON: not the router's
        return False


_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


def boundary_of(r: httpx.Response) -> bytes:
    ctype = r.headers.get("content-type", "")
    m = _BOUNDARY.search(ctype)
    if not ctype.lower().startswith("multipart/related") or not m:
        raise Failed(f"not a multipart/related answer: Content-Type {ctype!r}")
    return (m.group(1) or m.group(2)).encode()


class PartCounter:
    """Counts the parts of a multipart body as it streams by (no part is kept)."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"--" + boundary
        self._tail = b""
        self.delimiters = 0
        self.nbytes = 0

    def feed(self, chunk: bytes) -> None:
        self.nbytes += len(chunk)
        data = self._tail + chunk
        self.delimiters += data.count(self.delimiter)
        self._tail = data[-(len(self.delimiter) - 1):]

    @property
    def parts(self) -> int:
        return max(0, self.delimiters - 1)  # the close delimiter is one more


def single_part_payload(body: bytes, boundary: bytes) -> tuple[int, int]:
    """(parts, bytes of the first part's payload) of a small multipart body."""
    pieces = body.split(b"--" + boundary)[1:-1]
    if not pieces:
        return 0, 0
    head_end = pieces[0].find(b"\r\n\r\n")
    payload = pieces[0][head_end + 4:] if head_end >= 0 else b""
    if payload.endswith(b"\r\n"):
        payload = payload[:-2]
    return len(pieces), len(payload)


# -- loading the kept index ----------------------------------------------------------------------

def _marker(d: Path, name: str) -> Path:
    return d / f"{name}.loaded.json"


def loaded(d: Path, name: str, corpora: Sequence[Corpus]) -> bool:
    try:
        meta = json.loads(_marker(d, name).read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("corpora") == [c.name for c in corpora])


def load_vna(corpora: Sequence[Corpus], d: Path, timeout: float) -> None:
    """`vna import` every corpus into `d/vna-data`, then derive what the workers derive."""
    _marker(d, "vna").unlink(missing_ok=True)
    shutil.rmtree(d / "vna-data", ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    count = sum(len(c.files) for c in corpora)
    env = vna_env({"VNA_DATA_DIR": str(d / "vna-data"), "VNA_FSYNC": "true"})
    log = d / "vna-import.log"
    print(f"loading vna: vna import of {count} files", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        r = subprocess.run([*VNA, "import", *(str(c.root) for c in corpora)], env=env,
                           stdout=out, stderr=subprocess.STDOUT, timeout=timeout, cwd=d)
    if r.returncode != 0:
        raise BenchError(f"vna import failed ({r.returncode}):\n{tail(log)}")
    imported = time.perf_counter() - t0
    print(f"  imported in {imported:.0f} s; deriving the per-instance DICOM JSON (the "
          "workers' job)", file=sys.stderr, flush=True)
    p = subprocess.run([sys.executable, "-c", DERIVE], env=env, capture_output=True,
                       text=True, timeout=timeout, cwd=d)
    if p.returncode != 0:
        raise BenchError(f"deriving failed ({p.returncode}):\n{p.stderr[-2000:]}")
    derived, pending = (int(x) for x in p.stdout.split()[-2:])
    if pending:
        raise BenchError(f"{pending} outbox events left after deriving (see the worker)")
    _marker(d, "vna").write_text(json.dumps({
        "corpora": [c.name for c in corpora], "count": count, "derived": derived,
        "import_seconds": round(imported, 1),
        "derive_seconds": round(time.perf_counter() - t0 - imported, 1)}))


def load_orthanc(corpora: Sequence[Corpus], d: Path, workdir: Path, timeout: float) -> None:
    """storescu (4 associations) of every corpus into an Orthanc on `d/orthanc`."""
    _marker(d, "orthanc").unlink(missing_ok=True)
    shutil.rmtree(d / "orthanc", ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    files = [f for c in corpora for f in c.files]
    print(f"loading orthanc: storescu, 4 associations ({len(files)} files)",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    target = OrthancTarget(workdir, storage_dir=d / "orthanc")
    with target as endpoint:
        tmp = make_tempdir(workdir, "load-")
        try:
            storescu(files, endpoint, 4, tmp=tmp, timeout=timeout)
        finally:
            remove_tempdir(tmp)
        held = target.count()
    if held != len(files):
        raise BenchError(f"orthanc holds {held} instances after loading {len(files)}")
    _marker(d, "orthanc").write_text(json.dumps({
        "corpora": [c.name for c in corpora], "count": len(files),
        "seconds": round(time.perf_counter() - t0, 1)}))


def kept_target(name: str, d: Path, workdir: Path) -> VnaApiTarget | OrthancDicomWebTarget:
    if name == "vna":
        return VnaApiTarget(workdir, data_dir=d / "vna-data")
    return OrthancDicomWebTarget(workdir, storage_dir=d / "orthanc")


# -- the measures on the kept index ------------------------------------------------------------

def interleaved(sites: Sequence[Site], rounds: int) -> Iterator[tuple[int, Site]]:
    """(round, site): A B, then B A, ..."""
    for i in range(rounds):
        for s in (sites if i % 2 == 0 else list(reversed(sites))):
            yield i, s


def metadata_request(client: httpx.Client, site: Site, corpus: Corpus) -> float:
    """ms to the last byte of the series' /metadata; checks one dataset per instance."""
    url = (f"{site.root}/studies/{study_uid(corpus.name, 0)}/series/"
           f"{series_uid(corpus.name, 0, 0)}/metadata")
    t0 = time.perf_counter()
    r = client.get(url, headers={"Accept": DICOM_JSON})
    ms = (time.perf_counter() - t0) * 1000
    check(r)
    items = r.json()
    if not isinstance(items, list) or len(items) != len(corpus.files):
        raise Failed(f"/metadata gave {len(items)} datasets, expected {len(corpus.files)}")
    return ms


def qido_request(client: httpx.Client, site: Site, patient: str, expected: int) -> float:
    """ms to the last byte of OHIF's study-list QIDO for one PatientID."""
    url = (f"{site.root}/studies?{OHIF_STUDY_LIST}&00100020="
           f"{urllib.parse.quote(patient, safe='')}")
    t0 = time.perf_counter()
    r = client.get(url, headers={"Accept": DICOM_JSON})
    ms = (time.perf_counter() - t0) * 1000
    check(r)
    found = len(r.json()) if r.content else 0
    if found != expected:
        raise Failed(f"QIDO for {patient}: {found} studies, expected {expected}")
    return ms


def repeat_pairwise(fig: Figure, sites: Sequence[Site], rounds: int, warmup: int,
                    timeout: float, request: Callable[[httpx.Client, Site, int], float]
                    ) -> None:
    """`warmup` unmeasured then `rounds` measured requests per site, interleaved."""
    clients = {s.name: s.client(timeout) for s in sites}
    live = []
    try:
        for s in sites:
            cell = fig.cell(s.name)
            try:
                for i in range(warmup):
                    request(clients[s.name], s, -1 - i)
                live.append(s)
            except Exception as exc:  # noqa: BLE001 - the figure says what went wrong
                cell.fail(exc)
        for i, s in interleaved(live, rounds):
            cell = fig.cell(s.name)
            if cell.note:
                continue
            try:
                cell.runs.append(request(clients[s.name], s, i))
            except Exception as exc:  # noqa: BLE001 - the figure says what went wrong
                cell.fail(exc)
        for s in live:
            cell = fig.cell(s.name)
            if not cell.note and cell.runs:
                cell.value = median(cell.runs)
                cell.extra = {"p90": round(p90(cell.runs), 2),
                              "mean": round(statistics.fmean(cell.runs), 2)}
    finally:
        for c in clients.values():
            c.close()


def retrieve_series(client: httpx.Client, site: Site, corpus: Corpus,
                    path: str | None = None) -> tuple[float, int]:
    """(seconds, bytes) of one WADO-RS retrieve (default: the corpus's series), streamed to
    nowhere; every instance must be a part of the answer."""
    path = path or (f"/studies/{study_uid(corpus.name, 0)}/series/"
                    f"{series_uid(corpus.name, 0, 0)}")
    t0 = time.perf_counter()
    with client.stream("GET", site.root + path, headers={"Accept": ACCEPT_DICOM}) as r:
        check(r)
        counter = PartCounter(boundary_of(r))
        for chunk in r.iter_bytes():
            counter.feed(chunk)
    seconds = time.perf_counter() - t0
    if counter.parts != len(corpus.files) or counter.nbytes < corpus.nbytes:
        raise Failed(f"retrieve gave {counter.parts} parts, {counter.nbytes} bytes; expected "
                     f"{len(corpus.files)} parts, at least {corpus.nbytes} bytes")
    return seconds, counter.nbytes


def fetch_frames(site: Site, corpus: Corpus, in_flight: int, timeout: float
                 ) -> tuple[float, list[float]]:
    """Every instance's frame 1 as OHIF asks for it, `in_flight` requests at a time (one
    connection each, as a browser); (seconds for all, ms of each request)."""
    st, se = study_uid(corpus.name, 0), series_uid(corpus.name, 0, 0)
    urls = [f"{site.root}/studies/{st}/series/{se}/instances/{instance_uid(corpus.name, i)}"
            f"/frames/1" for i in range(len(corpus.files))]
    todo = iter(urls)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[BaseException] = []

    def work() -> None:
        with site.client(timeout) as client:
            while not errors:
                with lock:
                    url = next(todo, None)
                if url is None:
                    return
                try:
                    t0 = time.perf_counter()
                    r = client.get(url, headers={"Accept": ACCEPT_FRAMES})
                    ms = (time.perf_counter() - t0) * 1000
                    check(r)
                    parts, size = single_part_payload(r.content, boundary_of(r))
                    if parts != 1 or size != FRAME_BYTES:
                        raise Failed(f"frame answer of {parts} parts, {size} bytes; expected "
                                     f"1 of {FRAME_BYTES}")
                    latencies.append(ms)
                except BaseException as exc:  # noqa: BLE001 - reported by the caller
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=work, daemon=True) for _ in range(in_flight)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return seconds, latencies


def measure_kept(args: argparse.Namespace, sites: Sequence[Site], meta: Corpus,
                 frames: Corpus, find: Corpus, excluded: set[str],
                 figures: dict[str, Figure]) -> None:
    timeout = args.timeout
    if "metadata" in args.measures:
        fig = figures["metadata"]
        print(f"series /metadata of {len(meta.files)} instances ...", file=sys.stderr,
              flush=True)
        repeat_pairwise(fig, sites, args.metadata_requests, 2, timeout,
                        lambda c, s, _i: metadata_request(c, s, meta))
    if "qido" in args.measures:
        import random

        fig = figures["qido"]
        rng = random.Random(args.seed)
        patients = [p for p in find.patient_ids() if p not in excluded]
        chosen = [rng.choice(patients) for _ in range(args.qido_queries)]
        warm_ids = [rng.choice(patients) for _ in range(args.qido_warmup)]
        print(f"QIDO studies by PatientID, {args.qido_queries} queries ...", file=sys.stderr,
              flush=True)
        repeat_pairwise(fig, sites, args.qido_queries, args.qido_warmup, timeout,
                        lambda c, s, i: qido_request(c, s, chosen[i] if i >= 0
                                                     else warm_ids[-1 - i], 1))
    if "retrieve" in args.measures:
        fig = figures["retrieve"]
        print(f"WADO-RS series retrieve of {len(frames.files)} instances ...",
              file=sys.stderr, flush=True)

        def retrieve(c: httpx.Client, s: Site, i: int) -> float:
            seconds, nbytes = retrieve_series(c, s, frames)
            fig.cell(s.name).extra["bytes"] = nbytes
            return nbytes / MB / seconds

        repeat_pairwise(fig, sites, args.retrieve_runs, 1, timeout, retrieve)
    if "frames" in args.measures:
        fig = figures["frames"]
        print(f"all frames of {len(frames.files)} slices, {args.in_flight} in flight ...",
              file=sys.stderr, flush=True)
        lat: dict[str, list[float]] = {}

        def all_frames(_c: httpx.Client, s: Site, i: int) -> float:
            seconds, ms = fetch_frames(s, frames, args.in_flight, timeout)
            if i >= 0:
                lat.setdefault(s.name, []).extend(ms)
            return seconds

        repeat_pairwise(fig, sites, args.frames_runs, 1, timeout, all_frames)
        for name, ms in lat.items():
            cell = fig.cell(name)
            if cell.value is not None:
                cell.extra.update({"frames_per_s": round(len(frames.files) / cell.value, 1),
                                   "request_ms_median": round(median(ms), 2),
                                   "request_ms_p90": round(p90(ms), 2)})


def measure_qido_pg(args: argparse.Namespace, workdir: Path, fig: Figure) -> None:
    """vna alone on PostgreSQL at `--qido-pg-count` instances: stats.py's region-year index
    (generated by COPY, kept as database vna_bench_stats_<count>, shared with stats.py)."""
    import random

    import psycopg
    from stats import prepare

    url, _gen = prepare("pg", workdir, args.qido_pg_count, True, False)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, connect_timeout=10) as c:
        rows = c.execute("SELECT p.patient_id, count(*) FROM patient p JOIN study s "
                         "ON s.patient_fk = p.id GROUP BY p.patient_id").fetchall()
    rng = random.Random(args.seed)
    chosen = [rows[rng.randrange(len(rows))] for _ in range(args.qido_queries)]
    target = VnaApiTarget(workdir, db_url=url)
    target.start()
    try:
        site = Site("vna", target)
        print(f"QIDO on PostgreSQL, {args.qido_pg_count:,} instances ...", file=sys.stderr,
              flush=True)
        repeat_pairwise(fig, [site], len(chosen), args.qido_warmup, args.timeout,
                        lambda cl, s, i: qido_request(cl, s, *chosen[i if i >= 0 else
                                                                  (-1 - i) % len(chosen)]))
        cell = fig.cell("vna")
        cell.extra.update({"patients": len(rows), "studies": sum(n for _, n in rows)})
    finally:
        target.stop()


# -- STOW-RS -----------------------------------------------------------------------------------

def stow_body(files: Sequence[Path]) -> tuple[str, int, Iterator[bytes]]:
    """(Content-Type, Content-Length, body) of a STOW-RS request, read from the files as it
    is sent: one part per file (header, bytes, CRLF together in one write)."""
    boundary = "vnabench" + uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    close = f"--{boundary}--\r\n".encode()
    length = sum(len(head) + f.stat().st_size + 2 for f in files) + len(close)

    def body() -> Iterator[bytes]:
        for f in files:
            yield head + f.read_bytes() + b"\r\n"
        yield close

    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return ctype, length, body()


def stow(client: httpx.Client, site: Site, files: Sequence[Path]) -> None:
    """One STOW-RS request of `files`; every one must be referenced and none failed."""
    ctype, length, body = stow_body(files)
    r = client.post(f"{site.root}/studies", content=body,
                    headers={"Content-Type": ctype, "Content-Length": str(length),
                             "Accept": DICOM_JSON})
    check(r)
    answer = r.json()
    stored = len(answer.get("00081199", {}).get("Value", []))
    failed = len(answer.get("00081198", {}).get("Value", []))
    if stored != len(files) or failed:
        raise Failed(f"STOW of {len(files)}: {stored} referenced, {failed} failed")


def stow_run(site: Site, files: Sequence[Path], clients: int, per_request: int,
             timeout: float) -> float:
    """Seconds to store `files` over `clients` concurrent clients (each its own contiguous
    share, as several modalities would), `per_request` instances per body."""
    shares = split(files, clients)
    errors: list[BaseException] = []

    def work(share: list[Path]) -> None:
        with site.client(timeout) as client:
            for i in range(0, len(share), per_request):
                if errors:
                    return
                try:
                    stow(client, site, share[i:i + per_request])
                except BaseException as exc:  # noqa: BLE001 - reported by the caller
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in shares]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return seconds


def expect_count(target: VnaApiTarget | OrthancDicomWebTarget, n: int) -> None:
    held = target.count()
    if held != n:
        raise Failed(f"{target.name} holds {held} instances, expected {n}")


def measure_stow(args: argparse.Namespace, names: Sequence[str], corpus: Corpus,
                 warmup_file: Path, workdir: Path, figures: dict[str, Figure]) -> None:
    """Fresh, empty targets for each run; runs x client counts x targets, interleaved."""
    warm(corpus)
    gone: set[str] = set()
    for run in range(args.runs):
        for clients in args.stow_clients:
            fig = figures[f"stow{clients}"]
            order = names if (run + clients) % 2 == 0 else list(reversed(names))
            for name in order:
                cell = fig.cell(name)
                if name in gone or cell.error:
                    continue
                print(f"STOW-RS {name}, {clients} client(s), run {run + 1} ...",
                      file=sys.stderr, flush=True)
                target = fresh_target(name, workdir)
                try:
                    target.start()
                    site = Site(name, target)
                    with site.client(args.timeout) as c:
                        stow(c, site, [warmup_file])  # not timed: the first request's setup
                    sync_disk()
                    seconds = stow_run(site, corpus.files, clients, args.stow_per_request,
                                       args.timeout)
                    expect_count(target, len(corpus.files) + 1)
                    cell.runs.append(len(corpus.files) / seconds)
                except NotImplementedRoute as exc:
                    for c in args.stow_clients:
                        figures[f"stow{c}"].cell(name).fail(exc)
                    gone.add(name)
                except (Failed, httpx.HTTPError) as exc:
                    cell.fail(exc)
                finally:
                    target.stop()
                    sync_disk()
    for clients in args.stow_clients:
        for cell in figures[f"stow{clients}"].cells.values():
            if not cell.note and cell.runs:
                cell.value = median(cell.runs)


# -- the big STOW and retrieve: memory -----------------------------------------------------------

def load_fresh(name: str, target: VnaApiTarget | OrthancDicomWebTarget, corpus: Corpus,
               workdir: Path, timeout: float) -> None:
    """Put the corpus into a started fresh target without STOW: vna by `vna import` (the
    server stopped meanwhile, then started again), Orthanc by storescu."""
    if isinstance(target, VnaApiTarget):
        assert target.data_dir is not None
        target.stop_server()
        log = target.data_dir.parent / "vna-import.log"
        with open(log, "wb") as out:
            r = subprocess.run([*VNA, "import", str(corpus.root)],
                               env=vna_env(target.env()), stdout=out,
                               stderr=subprocess.STDOUT, timeout=timeout,
                               cwd=target.data_dir.parent)
        if r.returncode != 0:
            raise BenchError(f"vna import failed ({r.returncode}):\n{tail(log)}")
        target.start()
    else:
        assert target.endpoint is not None
        tmp = make_tempdir(workdir, "load-")
        try:
            storescu(corpus.files, target.endpoint, 4, tmp=tmp, timeout=timeout)
        finally:
            remove_tempdir(tmp)


def measure_big(args: argparse.Namespace, names: Sequence[str], corpus: Corpus,
                warmup_file: Path, workdir: Path, figures: dict[str, Figure]) -> None:
    """For each target, fresh: one STOW of the whole big study while its RSS is sampled,
    then (stored by STOW, or else loaded) one WADO-RS retrieve of the study, sampled too."""
    warm(corpus)
    per_request = args.big_per_request or len(corpus.files)
    study = f"/studies/{study_uid(corpus.name, 0)}"
    for name in names:
        fs, fr = figures["big_stow"].cell(name), figures["big_retrieve"].cell(name)
        print(f"big STOW and retrieve, {name}, {corpus.nbytes / 1e9:.2f} GB ...",
              file=sys.stderr, flush=True)
        target = fresh_target(name, workdir)
        try:
            target.start()
            site = Site(name, target)
            stored = False
            try:
                with site.client(args.timeout) as c:
                    stow(c, site, [warmup_file])
                sync_disk()
                with RssSampler(site.pid) as rss:
                    seconds = stow_run(site, corpus.files, 1, per_request, args.big_timeout)
                record_rss(fs, rss, corpus.nbytes / MB / seconds)
                expect_count(target, len(corpus.files) + 1)
                stored = True
            except (NotImplementedRoute, Failed, httpx.HTTPError) as exc:
                fs.fail(exc)
            first = (f"{study}/series/{series_uid(corpus.name, 0, 0)}"
                     f"/instances/{instance_uid(corpus.name, 0)}")
            if not stored:
                if not route_exists(site, first, args.timeout):
                    fr.fail(NotImplementedRoute())
                    continue
                print(f"  ({name}: loading the big study without STOW for the retrieve)",
                      file=sys.stderr, flush=True)
                load_fresh(name, target, corpus, workdir, args.big_timeout)
                site = Site(name, target)
            try:
                with site.client(args.big_timeout) as c:
                    # not timed: the first retrieve's setup (one instance)
                    retrieve_series(c, site, _one(corpus), first)
                    sync_disk()
                    with RssSampler(site.pid) as rss:
                        seconds, nbytes = retrieve_series(c, site, corpus, study)
                record_rss(fr, rss, nbytes / MB / seconds)
            except (NotImplementedRoute, Failed, httpx.HTTPError) as exc:
                fr.fail(exc)
        finally:
            target.stop()
            sync_disk()


def route_exists(site: Site, path: str, timeout: float) -> bool:
    """Whether WADO-RS answers `path` with anything but "no such route"."""
    with site.client(timeout) as c:
        try:
            check(c.get(site.root + path, headers={"Accept": ACCEPT_DICOM}))
        except NotImplementedRoute:
            return False
        except Failed:
            pass
    return True


def _one(corpus: Corpus) -> Corpus:
    """The corpus's first instance, as a corpus of one (what a retrieve of it must give)."""
    first = corpus.files[0]
    return Corpus(corpus.kind, 1, corpus.root, [first], first.stat().st_size)


def record_rss(cell: Cell, rss: RssSampler, mb_per_s: float) -> None:
    cell.value = rss.growth
    cell.runs = [rss.growth]
    cell.extra = {"rss_before_mb": round(rss.before, 1), "rss_peak_mb": round(rss.peak, 1),
                  "rss_after_mb": round(rss.after, 1), "samples": len(rss.samples),
                  "mb_per_s": round(mb_per_s, 1)}


# -- the report -------------------------------------------------------------------------------

def _num(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _show(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.value is None:
        return cell.note or "-"
    return _num(cell.value)


def judge(figures: dict[str, Figure]) -> None:
    """Whether each figure with a target meets it (None: cannot tell)."""
    def v(key: str, t: str = "vna") -> float | None:
        c = figures[key].cells.get(t) if key in figures else None
        return c.value if c else None

    def at_least_orthanc(key: str) -> None:
        a, b = v(key), v(key, "orthanc")
        if a is None or b is None:
            return
        lower = figures[key].lower_is_better
        figures[key].met = a <= b if lower else a >= b

    if "metadata" in figures and (m := v("metadata")) is not None:
        o = v("metadata", "orthanc")
        figures["metadata"].met = m < TARGET_METADATA_MS and (
            o is None or o / m >= TARGET_METADATA_SPEEDUP)
    if "qido" in figures and (q := v("qido")) is not None:
        figures["qido"].met = q < TARGET_QIDO_MS
    if "qido_pg" in figures and (q := v("qido_pg")) is not None:
        figures["qido_pg"].met = q < TARGET_QIDO_PG_MS
    for key in ("retrieve", "frames", *(k for k in figures if k.startswith("stow"))):
        if key in figures:
            at_least_orthanc(key)
    for key in ("big_stow", "big_retrieve"):
        if key in figures and (g := v(key)) is not None:
            figures[key].met = g < TARGET_RSS_MB


def report(figures: dict[str, Figure], env: dict[str, str]) -> str:
    lines = [f"DICOMweb: vna {env['vna']} vs Orthanc {env['orthanc']} with its DICOMweb "
             f"plugin {env['orthanc_dicomweb']} (defaults); loopback, {env['cpus']} CPUs, "
             f"client httpx {env['httpx']} (HTTP/1.1 keep-alive, Accept-Encoding: "
             f"{CONTENT_CODING[0]}), wall time on the client.",
             "vna/Orthanc: below 1 is better for vna in ms, s and MB; above 1 in MB/s and "
             "inst/s.", "",
             "| measure | vna | Orthanc | vna/Orthanc | target | met |",
             "|---|---:|---:|---:|---|---|"]
    for fig in figures.values():
        r = fig.ratio()
        met = {True: "yes", False: "**no**", None: ""}[fig.met]
        lines.append(f"| {fig.label} ({fig.unit}) | {_show(fig.cells.get('vna'))} | "
                     f"{_show(fig.cells.get('orthanc'))} | "
                     f"{f'{r:.2f}' if r is not None else ''} | {fig.target} | {met} |")
    lines += ["", "Details (every run; RSS in MB):", ""]
    for fig in figures.values():
        for name, cell in fig.cells.items():
            if cell.runs or cell.extra:
                runs = ", ".join(_num(x) for x in cell.runs) if len(cell.runs) <= 20 else (
                    f"{len(cell.runs)}: min {_num(min(cell.runs))}, median "
                    f"{_num(median(cell.runs))}, p90 {_num(p90(cell.runs))}, max "
                    f"{_num(max(cell.runs))}")
                extra = ", ".join(f"{k} {v}" for k, v in cell.extra.items())
                lines.append(f"- {fig.label}, {name}: runs {runs}" + (f"; {extra}" if extra
                                                                       else ""))
    return "\n".join(lines)


def versions(sites: Sequence[Site]) -> dict[str, str]:
    out = {"vna": "?", "orthanc": "?", "orthanc_dicomweb": "?", "httpx": httpx.__version__,
           "python": platform.python_version(), "cpus": str(os.cpu_count())}
    with contextlib.suppress(Exception):
        out["vna"] = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                    capture_output=True, text=True).stdout.strip() or "?"
    for s in sites:
        if s.name == "orthanc":
            with contextlib.suppress(Exception), httpx.Client(timeout=10) as c:
                out["orthanc"] = c.get(f"{s.target.url}/system").json()["Version"]
                out["orthanc_dicomweb"] = c.get(
                    f"{s.target.url}/plugins/dicom-web").json()["Version"]
    return out


def make_figures(args: argparse.Namespace, meta: Corpus, frames: Corpus, find_total: int,
                 big_gb: float) -> dict[str, Figure]:
    f: dict[str, Figure] = {}
    m = args.measures
    if "metadata" in m:
        f["metadata"] = Figure("metadata", f"series /metadata, {len(meta.files):,} instances",
                               "median ms", True, f"< {TARGET_METADATA_MS:.0f} ms and >= "
                               f"{TARGET_METADATA_SPEEDUP:.0f}x faster")
    if "qido" in m:
        f["qido"] = Figure("qido", f"QIDO studies by PatientID, {find_total:,} instances",
                           "median ms", True, f"< {TARGET_QIDO_MS:.0f} ms")
    if args.qido_pg_count and "vna" in args.targets:
        f["qido_pg"] = Figure("qido_pg", f"QIDO studies by PatientID, "
                              f"{args.qido_pg_count:,} instances on PostgreSQL (vna only)",
                              "median ms", True, f"< {TARGET_QIDO_PG_MS:.0f} ms")
    if "retrieve" in m:
        f["retrieve"] = Figure("retrieve", f"WADO-RS series retrieve, {len(frames.files):,} "
                               "x 0.5 MB, transfer-syntax=*", "MB/s", False, ">= Orthanc")
    if "frames" in m:
        f["frames"] = Figure("frames", f"all frames of a {len(frames.files):,}-slice CT as "
                             f"OHIF, {args.in_flight} in flight", "s", True, ">= Orthanc")
    if "stow" in m:
        for c in args.stow_clients:
            f[f"stow{c}"] = Figure(f"stow{c}", f"STOW-RS, {c} client{'s' if c > 1 else ''}, "
                                   f"{args.stow_per_request} instances per request",
                                   "inst/s", False, ">= Orthanc")
    if "big" in m:
        how = (f"{args.big_per_request} per request" if args.big_per_request
               else "one request")
        f["big_stow"] = Figure("big_stow", f"RSS growth during a {big_gb:.2f} GB STOW "
                               f"({how})", "MB", True, f"< {TARGET_RSS_MB:.0f} MB")
        f["big_retrieve"] = Figure("big_retrieve", f"RSS growth during a {big_gb:.2f} GB "
                                   "study retrieve", "MB", True, f"< {TARGET_RSS_MB:.0f} MB")
    return f


# -- main -------------------------------------------------------------------------------------

QUICK = {"metadata_count": 100, "metadata_requests": 5, "qido_count": 2000, "qido_queries": 30,
         "qido_warmup": 5, "frames_count": 50, "retrieve_runs": 2, "frames_runs": 2,
         "stow_count": 100, "stow_per_request": 10, "runs": 1, "big_gb": 0.05}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="DICOMweb side by side: vna vs Orthanc with its DICOMweb plugin.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small sizes for a smoke run (about a minute): " +
                    ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    ap.add_argument("--measures", default=",".join(MEASURES),
                    help=f"comma-separated, of {', '.join(MEASURES)}")
    ap.add_argument("--metadata-count", type=int, default=1000,
                    help="instances in the /metadata series")
    ap.add_argument("--metadata-requests", type=int, default=20,
                    help="measured /metadata requests per target (2 warm-up first)")
    ap.add_argument("--qido-count", type=int, default=100_000,
                    help="instances of the QIDO index (10 per patient, one study each)")
    ap.add_argument("--qido-queries", type=int, default=300, help="measured QIDOs per target")
    ap.add_argument("--qido-warmup", type=int, default=20, help="unmeasured QIDOs first")
    ap.add_argument("--qido-pg-count", type=int, default=0,
                    help="also QIDO vna alone on PostgreSQL at this many instances (e.g. "
                         "1000000: stats.py's region-year index, kept; 0 = skip)")
    ap.add_argument("--frames-count", type=int, default=500,
                    help="slices of the CT series for retrieve and frames (512x512x16)")
    ap.add_argument("--retrieve-runs", type=int, default=5, help="series retrieves per target")
    ap.add_argument("--frames-runs", type=int, default=3,
                    help="all-frames fetches per target")
    ap.add_argument("--in-flight", type=int, default=6,
                    help="concurrent frame requests (a browser's connections per host)")
    ap.add_argument("--stow-count", type=int, default=1000,
                    help="CT slices (512x512x16, the `ct` corpus) stored per STOW run")
    ap.add_argument("--stow-per-request", type=int, default=50, help="instances per body")
    ap.add_argument("--stow-clients", default="1,4", help="concurrent STOW clients")
    ap.add_argument("--runs", type=int, default=3, help="STOW runs per target and clients")
    ap.add_argument("--big-gb", type=float, default=2.0,
                    help="size of the big STOW and retrieve (GB of 0.5 MB CT slices)")
    ap.add_argument("--big-per-request", type=int, default=0,
                    help="instances per big STOW request (0 = all in one request)")
    ap.add_argument("--accept-encoding", default="identity",
                    help="Accept-Encoding of every request (browsers send e.g. 'gzip, "
                         "deflate', and Orthanc then compresses some answers)")
    ap.add_argument("--reload", action="store_true",
                    help="load the kept index again even if its counts match")
    ap.add_argument("--seed", type=int, default=1, help="for the choice of patients")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per request")
    ap.add_argument("--big-timeout", type=float, default=0,
                    help="seconds for the big requests; 0 = 120 + 60 s per GB")
    ap.add_argument("--load-timeout", type=float, default=0.0,
                    help="max seconds to load an index; 0 = 300 + 0.1 s per instance")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help="corpora, kept indexes, temporary files (env VNA_BENCH_DIR)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            if ap.get_default(k) == getattr(args, k):
                setattr(args, k, v)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.targets or set(args.targets) - set(TARGETS):
        ap.error(f"--targets takes {', '.join(TARGETS)}")
    args.measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    if set(args.measures) - set(MEASURES):
        ap.error(f"--measures takes {', '.join(MEASURES)}")
    args.stow_clients = [int(c) for c in args.stow_clients.split(",") if c.strip()]
    if any(c < 1 for c in args.stow_clients) or args.stow_per_request < 1:
        ap.error("--stow-clients and --stow-per-request must be >= 1")
    for name in ("metadata_count", "frames_count", "stow_count"):
        if getattr(args, name) < 2:
            ap.error(f"--{name.replace('_', '-')} must be >= 2")
    if args.qido_count < 10 or args.qido_queries < 1:
        ap.error("--qido-count must be >= 10 and --qido-queries >= 1")
    if args.big_gb <= 0:
        ap.error("--big-gb must be > 0")
    CONTENT_CODING[0] = args.accept_encoding
    args.big_timeout = args.big_timeout or 120 + 60 * args.big_gb
    args.workdir = args.workdir.resolve()
    if args.workdir.is_relative_to(REPO):
        ap.error(f"--workdir must be outside the repository ({REPO})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    workdir: Path = args.workdir
    with cleanup_on_exit():
        meta = generate("series", args.metadata_count, workdir)
        frames = generate("series", args.frames_count, workdir)
        find = generate("find", args.qido_count, workdir)
        kept = list({c.name: c for c in (find, meta, frames)}.values())
        total = sum(len(c.files) for c in kept)
        big_count = max(2, math.ceil(args.big_gb * 1e9 / SLICE_FILE_BYTES))
        big = generate("series", big_count, workdir) if "big" in args.measures else None
        stow_corpus = generate("ct", args.stow_count, workdir) \
            if "stow" in args.measures else None
        figures = make_figures(args, meta, frames, total,
                               big.nbytes / 1e9 if big else args.big_gb)
        # The series corpora's patient has studies in the find corpus too: not queried.
        excluded = set(meta.patient_ids()) | set(frames.patient_ids())
        sites: list[Site] = []
        env: dict[str, str] = {}
        kept_measures = {"metadata", "qido", "retrieve", "frames"} & set(args.measures)
        d = workdir / "dicomweb-index" / "+".join(c.name for c in kept)
        timeout = args.load_timeout or 300 + 0.1 * total
        if kept_measures:
            for name in args.targets:
                if args.reload or not loaded(d, name, kept):
                    if name == "vna":
                        load_vna(kept, d, timeout)
                    else:
                        load_orthanc(kept, d, workdir, timeout)
                else:
                    print(f"{name}: reusing the index loaded in {d}", file=sys.stderr)
            try:
                for name in args.targets:
                    target = kept_target(name, d, workdir)
                    sites.append(Site(name, target))
                    target.start()
                    held = target.count()
                    if held != total:
                        raise BenchError(f"{name} holds {held} instances, expected {total}; "
                                         "try --reload")
                env = versions(sites)
                measure_kept(args, sites, meta, frames, find, excluded, figures)
            finally:
                for s in sites:
                    s.target.stop()
        if args.qido_pg_count and "vna" in args.targets:
            try:
                measure_qido_pg(args, workdir, figures["qido_pg"])
            except (Failed, httpx.HTTPError) as exc:
                figures["qido_pg"].cell("vna").fail(exc)
        warmup_file = frames.files[0]  # not in the STOW or big corpus: a first request
        if stow_corpus is not None:
            measure_stow(args, args.targets, stow_corpus, warmup_file, workdir, figures)
        if big is not None:
            measure_big(args, args.targets, big, warmup_file, workdir, figures)
        env = env or versions([])
        judge(figures)
        print()
        print(report(figures, env))
        print(f"\n(the loaded indexes are kept in {d}; delete it or pass --reload)")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "environment": env, "args": {k: str(v) if isinstance(v, Path) else v
                                             for k, v in vars(args).items()},
                "figures": {k: asdict(f) | {"ratio": f.ratio()} for k, f in figures.items()},
            }, indent=2))
        errors = [f"{f.label} ({n})" for f in figures.values() for n, c in f.cells.items()
                  if c.error]
        if errors:
            print("\nerrors in: " + "; ".join(errors), file=sys.stderr)
            return 1
        return 0


if __name__ == "__main__":
    sys.exit(main())
