"""Soak: the production shape under load for a while, and nothing acknowledged lost.

PostgreSQL, SeaweedFS (S3) and Redis; two `vna scp` nodes with their own local folders on
that one database and bucket (how a region scales out), one `vna api`, one `vna worker
--beat`. Against them, for `--duration` seconds: `--senders` DCMTK storescu processes
sending new studies round the nodes, a C-FIND loop (one kept association), and a document
client that uploads a PDF and downloads it again. At the end every acknowledged instance
and document is read back from the object store and checked by hash against what was
sent. Prints throughput and p50/p99 latency per operation, and the RSS of every vna
process over time; exits 1 if anything acknowledged is missing or changed, or a request
failed.

    .venv/bin/python benchmarks/soak.py                     # 10 minutes
    .venv/bin/python benchmarks/soak.py --duration 60 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus import DEFAULT_WORKDIR  # noqa: E402
from find import Client  # noqa: E402
from servers import (  # noqa: E402
    VNA,
    BenchError,
    Endpoint,
    Weed,
    cleanup_on_exit,
    create_database,
    dcmtk,
    dcmtk_env,
    free_port,
    make_tempdir,
    start_process,
    stop_process,
    tail,
    vna_env,
    wait_echo,
    wait_port,
)

REQUEST_BOUND = 10.0  # seconds: a request that waits longer counts as a failure
ADMIN_TOKEN = "vna_soak-admin-token"
PATIENTS = 500  # the senders' studies are spread over this many patients
REDIS_URL = os.environ.get("VNA_SOAK_REDIS", "redis://127.0.0.1:6379/13")

# DCMTK's log with a timestamp (epoch seconds, ms) on each line: C-STORE latencies from
# the sender's side, from "Sending Store Request" to "Received Store Response".
_DCMTK_LOG = """log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%s.%q} %m%n
"""


@dataclass
class Op:
    """The answers of one kind of request."""

    ok: int = 0
    failed: int = 0
    seconds: list[float] = field(default_factory=list)
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ok: bool, seconds: float, nbytes: int = 0, error: str = "") -> None:
        with self.lock:
            if ok and seconds <= REQUEST_BOUND:
                self.ok += 1
                self.bytes += nbytes
            else:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(error or f"took {seconds:.1f} s")
            self.seconds.append(seconds)

    def summary(self, elapsed: float) -> dict[str, Any]:
        s = sorted(self.seconds)

        def pct(q: float) -> float | None:
            return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 1) if s else None

        return {"ok": self.ok, "failed": self.failed, "per_second": round(self.ok / elapsed, 1),
                "mb_per_second": round(self.bytes / elapsed / 1e6, 2),
                "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                "max_ms": round(s[-1] * 1000, 1) if s else None, "errors": self.errors[:5]}


@dataclass
class Sent:
    """What was acknowledged, to be found again: SOP Instance UID or uniqueId -> SHA-256 of
    the dataset (instances) or of the bytes (documents)."""

    instances: dict[str, str] = field(default_factory=dict)
    documents: dict[str, str] = field(default_factory=dict)
    patients: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


# -- the load ---------------------------------------------------------------------------------

def _store_sender(n: int, node: Endpoint, folder: Path, until: float, op: Op, sent: Sent,
                  batch: int, log_config: Path) -> None:
    """storescu runs of `batch` new instances (one study each) until `until`."""
    from pydicom.uid import generate_uid

    from tests.factory import dataset_bytes, make_instance, write

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(n)
    while time.monotonic() < until:
        patient = f"SOAK{rng.randrange(PATIENTS):04d}"
        study, series = str(generate_uid()), str(generate_uid())
        files: dict[str, tuple[str, str, int]] = {}
        for i in range(batch):
            ds = make_instance(patient_id=patient, study_uid=study, series_uid=series,
                               instance_number=i, size=64)
            path = write(ds, folder / f"{i}.dcm")
            data = dataset_bytes(path)
            files[str(path)] = (str(ds.SOPInstanceUID), hashlib.sha256(data).hexdigest(),
                                path.stat().st_size)
        out = subprocess.run([dcmtk("storescu"), "-lc", str(log_config), "-aet", f"SOAK{n}",
                              "-aec", node.aet, node.host, str(node.port), *files],
                             env=dcmtk_env(), capture_output=True, text=True, timeout=300)
        answered = _parse_storescu(out.stdout + out.stderr)
        for path, (uid, sha, size) in files.items():
            status, seconds = answered.get(path, ("no answer", REQUEST_BOUND * 2))
            ok = status == "Success"
            op.record(ok, seconds, size, "" if ok else f"{status} (storescu {out.returncode})")
            if ok:
                with sent.lock:
                    sent.instances[uid] = sha
        with sent.lock:
            sent.patients.append(patient)


def _parse_storescu(log: str) -> dict[str, tuple[str, float]]:
    """File -> (status text, seconds from request to response) from storescu's log."""
    out: dict[str, tuple[str, float]] = {}
    current, started = "", 0.0
    for line in log.splitlines():
        stamp, _, message = line.partition(" ")
        try:
            t = float(stamp)
        except ValueError:
            continue
        if message.startswith("Sending file: "):
            current = message.removeprefix("Sending file: ").strip()
        elif message.startswith("Sending Store Request"):
            started = t
        elif message.startswith("Received Store Response (") and current:
            out[current] = (message.removeprefix("Received Store Response (").rstrip(")"),
                            t - started)
    return out


def _finder(node: Endpoint, until: float, op: Op, sent: Sent) -> None:
    """STUDY-level C-FIND by a Patient ID sent before, over one kept association."""
    client: Client | None = None
    while time.monotonic() < until:
        with sent.lock:
            patients = list(sent.patients[-200:])
        if not patients:
            time.sleep(0.2)
            continue
        t0 = time.perf_counter()
        try:
            if client is None:
                client = Client("soak", node)
            client.query(random.choice(patients), record=False)
            op.record(True, time.perf_counter() - t0)
        except Exception as exc:
            op.record(False, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
            client = None
        time.sleep(0.05)
    if client is not None:
        client.close()


def _documents(url: str, until: float, upload: Op, download: Op, sent: Sent,
               size: int) -> None:
    """Upload a PDF, then download it again and compare."""
    import httpx

    from tests.media import make_pdf

    pdf = make_pdf()
    meta = '{"patientId":"191212121212","classCode":"report","practiceSettingCode":"lung"}'
    with httpx.Client(base_url=url, timeout=REQUEST_BOUND * 3,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        while time.monotonic() < until:
            content = pdf + b"%" + os.urandom(size)
            t0 = time.perf_counter()
            try:
                r = client.post("/api/v1/documents", data={"metadata": meta},
                                files={"file": ("r.pdf", io.BytesIO(content),
                                                "application/pdf")})
                ok = r.status_code == 201
                upload.record(ok, time.perf_counter() - t0, len(content),
                              "" if ok else f"{r.status_code} {r.text[:200]}")
            except Exception as exc:
                upload.record(False, time.perf_counter() - t0, error=type(exc).__name__)
                continue
            if not ok:
                continue
            uid = r.json()["uniqueId"]
            with sent.lock:
                sent.documents[uid] = hashlib.sha256(content).hexdigest()
            t0 = time.perf_counter()
            try:
                got = client.get(f"/api/v1/documents/{uid}/content")
                same = got.status_code == 200 and got.content == content
                download.record(same, time.perf_counter() - t0, len(got.content),
                                "" if same else f"{got.status_code}: not what was sent")
            except Exception as exc:
                download.record(False, time.perf_counter() - t0, error=type(exc).__name__)


# -- what the processes take --------------------------------------------------------------------

def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [pid], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _role(pid: int, root: int) -> str:
    """What a process of a service's tree is, for the RSS table."""
    if pid == root:
        return "main"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
    if "resource_tracker" in cmd:
        return "resource tracker"
    return "SCP process" if "spawn_main" in cmd else "child"


def _sampler(services: dict[str, subprocess.Popen[bytes]], until: float, every: float,
             samples: dict[str, list[tuple[float, float]]]) -> None:
    t0 = time.monotonic()
    while True:
        now = time.monotonic()
        for name, proc in services.items():
            for pid in _tree(proc.pid):
                rss = _rss_mb(pid)
                if rss is not None:
                    samples.setdefault(f"{name} {_role(pid, proc.pid)} {pid}", []).append(
                        (round(now - t0, 1), round(rss, 1)))
        if now >= until:
            return
        time.sleep(min(every, max(0.0, until - now)))


# -- the check at the end ----------------------------------------------------------------------

def verify(env: dict[str, str], sent: Sent) -> dict[str, Any]:
    """Every acknowledged instance and document: its row, its object, its hash."""
    from sqlalchemy import select

    from services.runtime import open_store
    from storage.index.db import Index
    from storage.index.models import Document, Instance
    from vna.settings import Settings

    settings = Settings(**{k[4:].lower(): v for k, v in env.items() if k.startswith("VNA_")})
    index, store = Index(settings.resolved_database_url), open_store(settings)
    missing: list[str] = []
    changed: list[str] = []
    try:
        rows: dict[str, tuple[str, str, int]] = {}
        uids = list(sent.instances)
        with index.read_session() as s:
            for i in range(0, len(uids), 1000):
                for r in s.execute(select(Instance.sop_instance_uid, Instance.storage_key,
                                          Instance.sha256, Instance.dataset_offset).where(
                        Instance.sop_instance_uid.in_(uids[i:i + 1000]))):
                    rows[r[0]] = (r[1], r[2], r[3])
            docs = {r[0]: (r[1], r[2]) for r in s.execute(select(
                Document.unique_id, Document.storage_key, Document.sha256).where(
                    Document.unique_id.in_(list(sent.documents))))}

        def instance(uid: str) -> str | None:
            if uid not in rows:
                return "missing"
            key, sha, offset = rows[uid]
            data = store.read(key)
            ok = hashlib.sha256(data).hexdigest() == sha and \
                hashlib.sha256(data[offset:]).hexdigest() == sent.instances[uid]
            return None if ok else "changed"

        with ThreadPoolExecutor(8) as pool:
            for uid, problem in zip(uids, pool.map(instance, uids), strict=True):
                if problem:
                    (missing if problem == "missing" else changed).append(uid)
        for uid, sha in sent.documents.items():
            if uid not in docs:
                missing.append(uid)
            elif not sha == docs[uid][1] == hashlib.sha256(store.read(docs[uid][0])).hexdigest():
                changed.append(uid)
    finally:
        index.dispose()
    return {"instances": len(sent.instances), "documents": len(sent.documents),
            "missing": missing[:20], "changed": changed[:20],
            "lost": len(missing) + len(changed)}


def _outbox_pending(env: dict[str, str]) -> int:
    from sqlalchemy import func, select

    from storage.index.db import Index
    from storage.index.models import OutboxEvent

    index = Index(env["VNA_DATABASE_URL"])
    try:
        with index.read_session() as s:
            return int(s.scalar(select(func.count()).select_from(OutboxEvent)
                                .where(OutboxEvent.processed_at.is_(None))) or 0)
    finally:
        index.dispose()


# -- the run ----------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir)
    tmp = make_tempdir(workdir, "soak-")
    print("starting PostgreSQL database, SeaweedFS, 2 vna scp nodes, vna api, vna worker ...",
          file=sys.stderr)
    weed = Weed(workdir)
    base = {"VNA_STORAGE": "s3", "VNA_S3_ENDPOINT": weed.endpoint, "VNA_S3_ACCESS_KEY": "x",
            "VNA_S3_SECRET_KEY": "y", "VNA_S3_BUCKET": "soak",
            "VNA_DATABASE_URL": create_database(), "VNA_BROKER_URL": REDIS_URL,
            "VNA_OUTBOX_POLL_SECONDS": "2", "VNA_ADMIN_TOKEN": ADMIN_TOKEN,
            "VNA_LOG_LEVEL": "WARNING", "VNA_DICOM_PROCESSES": str(args.scp_processes)}
    services: dict[str, subprocess.Popen[bytes]] = {}
    nodes: list[Endpoint] = []
    try:
        for name in ("scp-a", "scp-b"):
            port = free_port()
            env = {**base, "VNA_DATA_DIR": str(tmp / name), "VNA_DICOM_PORT": str(port),
                   "VNA_DICOM_HOST": "127.0.0.1"}
            (tmp / name).mkdir()
            log = tmp / f"{name}.log"
            services[name] = start_process([*VNA, "scp"], env=vna_env(env),
                                           log=log, cwd=tmp, group=True)
            wait_echo("VNA", port, services[name], log)
            nodes.append(Endpoint("VNA", port))
        http = free_port()
        api_env = {**base, "VNA_DATA_DIR": str(tmp / "api"), "VNA_HTTP_PORT": str(http)}
        (tmp / "api").mkdir()
        services["api"] = start_process([*VNA, "api"], env=vna_env(api_env),
                                        log=tmp / "api.log", cwd=tmp, group=True)
        wait_port(http, 60, services["api"])
        worker_env = {**base, "VNA_DATA_DIR": str(tmp / "worker")}
        (tmp / "worker").mkdir()
        services["worker"] = start_process([*VNA, "worker", "--beat"],
                                           env=vna_env(worker_env), log=tmp / "worker.log",
                                           cwd=tmp, group=True)
        log_config = tmp / "dcmtk-log.cfg"
        log_config.write_text(_DCMTK_LOG)

        ops = {name: Op() for name in ("c_store", "c_find", "upload", "download")}
        sent = Sent()
        samples: dict[str, list[tuple[float, float]]] = {}
        print(f"load for {args.duration:.0f} s: {args.senders} storescu senders, a C-FIND "
              "loop, a document client", file=sys.stderr)
        t0 = time.monotonic()
        until = t0 + args.duration
        work: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
            (_store_sender, (n, nodes[n % 2], tmp / f"sender-{n}", until, ops["c_store"],
                             sent, args.batch, log_config)) for n in range(args.senders)]
        work.append((_finder, (nodes[0], until, ops["c_find"], sent)))
        work.append((_documents, (f"http://127.0.0.1:{http}", until, ops["upload"],
                                  ops["download"], sent, args.document_kb << 10)))
        work.append((_sampler, (services, until, args.sample_seconds, samples)))
        threads = [threading.Thread(target=fn, args=a, daemon=True) for fn, a in work]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.duration + 600)
        elapsed = time.monotonic() - t0
        pending_at_end = _outbox_pending(base)
        drained_after = None
        deadline = time.monotonic() + args.drain_timeout
        while True:
            if _outbox_pending(base) == 0:
                drained_after = round(time.monotonic() - t0 - elapsed, 1)
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(1)
        print("verifying every acknowledged instance and document by hash ...",
              file=sys.stderr)
        checked = verify({**base, "VNA_DATA_DIR": str(tmp / "verify")}, sent)
        for name, proc in services.items():
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode} during the soak:\n"
                                 f"{tail(tmp / f'{name}.log')}")
    finally:
        for name, proc in services.items():  # the worker may be in a long drain: no waiting
            stop_process(proc, timeout=3 if name == "worker" else 20)
        weed.stop()
    # Growth is counted from the first sample after a warm-up (imports, pools, caches
    # filling), to the end.
    warm = min(60.0, elapsed / 5)
    rss = {}
    for name, series in samples.items():
        after = [v for t, v in series if t >= warm] or [series[-1][1]]
        rss[name] = {"start_mb": series[0][1], "warm_mb": after[0],
                     "max_mb": max(v for _, v in series), "end_mb": series[-1][1],
                     "growth_mb": round(series[-1][1] - after[0], 1), "samples": series}
    return {"duration_s": round(elapsed, 1), "senders": args.senders, "nodes": 2,
            "scp_processes_per_node": args.scp_processes,
            "operations": {k: v.summary(elapsed) for k, v in ops.items()},
            "outbox_pending_at_end": pending_at_end, "outbox_drained_after_s": drained_after,
            "verified": checked, "rss": rss}


def report(result: dict[str, Any]) -> None:
    print(f"\nsoak: {result['duration_s']} s, {result['senders']} storescu senders over "
          f"{result['nodes']} vna scp nodes ({result['scp_processes_per_node']} processes "
          "each), one C-FIND loop, one document client")
    print(f"{'operation':<10} {'ok':>8} {'failed':>7} {'per s':>8} {'MB/s':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, o in result["operations"].items():
        print(f"{name:<10} {o['ok']:>8} {o['failed']:>7} {o['per_second']:>8} "
              f"{o['mb_per_second']:>7} {o['p50_ms']!s:>8} {o['p99_ms']!s:>8} "
              f"{o['max_ms']!s:>8}")
        for e in o["errors"]:
            print(f"    {e}")
    v = result["verified"]
    print(f"verified by hash: {v['instances']} instances, {v['documents']} documents; "
          f"lost or changed: {v['lost']}")
    drained = result["outbox_drained_after_s"]
    print(f"outbox: {result['outbox_pending_at_end']} events pending when the load stopped; "
          + (f"drained {drained} s later" if drained is not None else "not drained in the "
             "time waited (--drain-timeout)"))
    print(f"{'process':<34} {'start MB':>9} {'warm MB':>8} {'max MB':>8} {'end MB':>8} "
          f"{'growth':>8}")
    for name, r in sorted(result["rss"].items()):
        print(f"{name:<34} {r['start_mb']:>9} {r['warm_mb']:>8} {r['max_mb']:>8} "
              f"{r['end_mb']:>8} {r['growth_mb']:>8}")
    print("(growth: end minus the first sample after the warm-up, a fifth of the run or "
          "60 s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600, help="seconds of load")
    ap.add_argument("--senders", type=int, default=8, help="concurrent storescu senders")
    ap.add_argument("--batch", type=int, default=20, help="instances per storescu run")
    ap.add_argument("--scp-processes", type=int, default=2, help="SCP processes per node")
    ap.add_argument("--document-kb", type=int, default=256, help="size of each upload")
    ap.add_argument("--sample-seconds", type=float, default=10, help="RSS sampling period")
    ap.add_argument("--drain-timeout", type=float, default=600,
                    help="how long to wait afterwards for the workers to drain the outbox")
    ap.add_argument("--workdir", default=os.environ.get("VNA_BENCH_DIR", DEFAULT_WORKDIR))
    ap.add_argument("--json", help="write the result here too")
    args = ap.parse_args(argv)
    with cleanup_on_exit():
        result = run(args)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    failed = sum(o["failed"] for o in result["operations"].values())
    return 1 if result["verified"]["lost"] or failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
