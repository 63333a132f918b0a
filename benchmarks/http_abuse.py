"""A normal HTTP client's rate alone vs under abuse: slow-loris connections and a flood of
bad bearer tokens against the same `vna api` (files + SQLite, one process).

The normal client uploads a document (`POST /api/v1/documents`, a `--size` PDF) and
downloads it again (`GET .../content`, hash checked), over and over, for `--seconds`; its
rate is upload+download pairs per second. Under abuse, at the same time and from a process
of their own (an attacker does not share the normal client's interpreter):

- `--slowloris` connections each send one byte of a request head per second and open again
  when the server closes them (VNA_HTTP_HEADER_TIMEOUT_SECONDS, `--header-timeout` here);
- a flood of `--flood-rate` requests per second with random bearer tokens from another
  loopback address (127.0.0.2): after VNA_HTTP_AUTH_FAILURES failures the address gets 429
  before routing.

Rounds alternate alone / abused (`--rounds` of each, A B A B: short runs on a shared machine
drift); figures are medians, and the ratio abused / alone is the median of each round's
(target >= 0.8).

    .venv/bin/python benchmarks/http_abuse.py                 # 3 rounds of 20 s each
    .venv/bin/python benchmarks/http_abuse.py --quick         # the suite's: seconds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import secrets
import selectors
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from benchmarks.servers import (  # noqa: E402
    BenchError,
    VnaApiTarget,
    cleanup_on_exit,
    make_tempdir,
)


def make_pdf(size: int) -> bytes:
    head = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    return head + os.urandom(max(0, size - len(head) - 6)) + b"\n%%EOF"


@dataclass
class Normal:
    pairs: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


def normal_client(url: str, token: str, body: bytes, seconds: float) -> Normal:
    """Upload then download one document, as long as `seconds` lasts."""
    out = Normal()
    digest = hashlib.sha256(body).hexdigest()
    meta = json.dumps({"patientId": "191212121212", "classCode": "report",
                       "practiceSettingCode": "lung", "mimeType": "application/pdf"})
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                      timeout=60) as c:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r = c.post("/api/v1/documents", data={"metadata": meta},
                       files={"file": ("report.pdf", body, "application/pdf")})
            if r.status_code != 201:
                out.errors.append(f"upload {r.status_code}: {r.text[:200]}")
                continue
            uid = r.json()["uniqueId"]
            got = c.get(f"/api/v1/documents/{uid}/content")
            if got.status_code != 200 or hashlib.sha256(got.content).hexdigest() != digest:
                out.errors.append(f"download {got.status_code}")
                continue
            out.pairs += 1
            out.bytes += 2 * len(body)
    return out


@dataclass
class Abuse:
    slow_connections: int = 0  # opened
    slow_dropped: int = 0  # closed by the server
    flood_sent: int = 0
    flood_status: dict[int, int] = field(default_factory=dict)
    server_cpu: float = 0.0  # CPU seconds of `vna api` during the normal client's round
    attacker_cpu: float = 0.0  # CPU seconds of the abusers' own process (same machine)


def slowloris(port: int, n: int, stop: threading.Event, abuse: Abuse) -> None:
    """`n` connections, each one head byte a second; reopened when the server closes it."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
    sel = selectors.DefaultSelector()
    conns: dict[socket.socket, int] = {}

    def open_one() -> None:
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        conns[s] = 0
        sel.register(s, selectors.EVENT_READ)
        abuse.slow_connections += 1

    for _ in range(n):
        open_one()
    next_tick = time.monotonic()
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                conns.pop(s, None)
                s.close()
                abuse.slow_dropped += 1
                open_one()
        if time.monotonic() >= next_tick:
            next_tick += 1.0
            for s, i in list(conns.items()):
                try:
                    s.send(head[i % len(head):i % len(head) + 1])
                    conns[s] = i + 1
                except OSError:
                    pass
    for s in conns:
        s.close()


def flood(url: str, rate: float, stop: threading.Event, abuse: Abuse) -> None:
    """Random bearer tokens from 127.0.0.2, `rate` a second."""
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=url, transport=transport, timeout=30) as c:
        interval = 1.0 / rate
        next_at = time.monotonic()
        while not stop.is_set():
            r = c.get("/api/v1/documents", params={"patientId": "191212121212"},
                      headers={"Authorization": f"Bearer vna_{secrets.token_urlsafe(32)}"})
            abuse.flood_sent += 1
            abuse.flood_status[r.status_code] = abuse.flood_status.get(r.status_code, 0) + 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def abuser(port: int, url: str, slow: int, rate: float, stop: Any, results: Any) -> None:
    """The abusive clients, in a process of their own (not sharing the normal client's
    interpreter lock), until `stop` is set; what they saw goes into `results`."""
    abuse = Abuse()
    done = threading.Event()
    threads = []
    if slow:
        threads.append(threading.Thread(target=slowloris, args=(port, slow, done, abuse)))
    if rate:
        threads.append(threading.Thread(target=flood, args=(url, rate, done, abuse)))
    cpu = time.process_time()
    for t in threads:
        t.start()
    stop.wait()
    done.set()
    for t in threads:
        t.join(30)
    abuse.attacker_cpu = time.process_time() - cpu
    results.put(abuse.__dict__)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (the server), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(target: VnaApiTarget, body: bytes, args: argparse.Namespace,
            abused: bool) -> tuple[float, Normal, Abuse]:
    abuse = Abuse()
    ctx = multiprocessing.get_context("fork")
    stop, results = ctx.Event(), ctx.Queue()
    proc = None
    if abused:
        proc = ctx.Process(target=abuser, args=(target.http_port, target.url, args.slowloris,
                                                args.flood_rate, stop, results))
        proc.start()
        time.sleep(1.0)  # the abusers are in place before the normal client starts
    started, cpu = time.monotonic(), cpu_seconds(target.pid)
    normal = normal_client(target.url, target.token, body, args.seconds)
    elapsed = time.monotonic() - started
    abuse.server_cpu = cpu_seconds(target.pid) - cpu
    if proc is not None:
        stop.set()
        server_cpu = abuse.server_cpu
        abuse = Abuse(**results.get(timeout=60))
        abuse.server_cpu = server_cpu
        proc.join(30)
    return normal.pairs / elapsed, normal, abuse


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20, help="length of one round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each: alone, abused")
    ap.add_argument("--size", type=int, default=256 << 10, help="document size, bytes")
    ap.add_argument("--slowloris", type=int, default=200, help="slow-loris connections (0: none)")
    ap.add_argument("--flood-rate", type=float, default=200,
                    help="bad-token requests per second (0: none)")
    ap.add_argument("--header-timeout", type=float, default=10,
                    help="VNA_HTTP_HEADER_TIMEOUT_SECONDS of the server")
    ap.add_argument("--quick", action="store_true", help="1 round of 4 s, 30 slow clients")
    ap.add_argument("--workdir", type=Path, default=REPO / ".bench-work")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.slowloris, args.flood_rate = 4, 1, 30, 50
        args.header_timeout = 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    body = make_pdf(args.size)
    alone: list[float] = []
    abused: list[float] = []
    abuses: list[Abuse] = []
    errors: list[str] = []
    with cleanup_on_exit():
        tmp = make_tempdir(args.workdir, "http-abuse-")
        target = VnaApiTarget(tmp, data_dir=tmp / "vna-data", extra_env={
            "VNA_LOG_LEVEL": "WARNING", "VNA_HL7_PORT": "0",
            "VNA_HTTP_HEADER_TIMEOUT_SECONDS": str(args.header_timeout)})
        with target:
            normal_client(target.url, target.token, body, 0.5)  # warm up
            for i in range(args.rounds):
                for is_abused in ((False, True) if i % 2 == 0 else (True, False)):
                    rate, normal, abuse = measure(target, body, args, is_abused)
                    errors += normal.errors
                    (abused if is_abused else alone).append(rate)
                    if is_abused:
                        abuses.append(abuse)
                    print(f"  round {i + 1} {'abused' if is_abused else 'alone '}: "
                          f"{rate:6.1f} pairs/s ({rate * 2 * len(body) / 1e6:.1f} MB/s), "
                          f"server CPU {abuse.server_cpu / args.seconds:.2f} cores, "
                          f"{abuse.server_cpu * 1000 / max(1, normal.pairs):.1f} ms a pair"
                          + (f"; attacker CPU {abuse.attacker_cpu / args.seconds:.2f} cores"
                             f"; slow-loris {abuse.slow_connections} opened, "
                             f"{abuse.slow_dropped} dropped; flood {abuse.flood_sent} sent "
                             f"{dict(sorted(abuse.flood_status.items()))}"
                             if is_abused else ""), file=sys.stderr)
            if target.proc is not None and target.proc.poll() is not None:
                raise BenchError("vna api died under abuse")
    a, b = statistics.median(alone), statistics.median(abused)
    # Each abused round against the alone round next to it (A B, B A): on a shared machine
    # the load of others drifts between rounds more than abuse moves it.
    ratio = statistics.median(x / y for x, y in zip(abused, alone, strict=True) if y)
    print(f"normal client ({args.size >> 10} KiB upload + download): alone {a:.1f} pairs/s, "
          f"under abuse ({args.slowloris} slow-loris connections, {args.flood_rate:.0f} "
          f"bad tokens/s) {b:.1f} pairs/s: ratio {ratio:.2f} (median of the rounds' ratios; "
          f"target >= 0.8)")
    if errors:
        print(f"{len(errors)} errors of the normal client, e.g. {errors[0]}")
    if args.json:
        args.json.write_text(json.dumps({
            "alone": alone, "abused": abused, "ratio": ratio, "errors": errors,
            "abuse": [a.__dict__ for a in abuses]}, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
