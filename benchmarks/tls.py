"""C-STORE ingest over DICOM TLS next to plain TCP, for vna and for DCMTK's storescp.

Every run starts the target fresh on empty storage and sends the whole corpus with DCMTK
storescu (1 or N parallel associations), plain or `+tls` with a client certificate
(mutual TLS: vna with VNA_DICOM_TLS_CA, storescp with `+cf` and its default
`--require-peer-cert`), BCP 195 non-downgrading profile on both sides; then checks that
the target holds every instance. Runs are interleaved (A B C D, D C B A...) and the table
reports medians and the TLS/plain ratio (target: >= 0.8), and the CPU time the target's
own processes spent per instance (robust when the machine is shared: wall rates are not).

    .venv/bin/python benchmarks/tls.py --corpus tiny --count 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus import DEFAULT_WORKDIR, generate, warm  # noqa: E402
from servers import (  # noqa: E402
    REGISTRY,
    BenchError,
    Endpoint,
    StorescpTarget,
    Target,
    VnaTarget,
    cleanup_on_exit,
    dcmtk,
    dcmtk_env,
    make_tempdir,
    remove_tempdir,
    split,
    start_process,
    sync_disk,
    wait_port,
)

from tests.tls_pki import PKI, make_pki  # noqa: E402

TARGETS = ("vna", "vna-tls", "storescp", "storescp-tls")


class VnaTlsTarget(VnaTarget):
    """`vna scp` with mutual TLS; senders go to its TLS port."""

    def __init__(self, workdir: Path, pki: PKI) -> None:
        self.pki = pki
        super().__init__(workdir, extra_env={
            "VNA_DICOM_TLS_CERT": str(pki.server.cert), "VNA_DICOM_TLS_KEY": str(pki.server.key),
            "VNA_DICOM_TLS_CA": str(pki.ca)})
        self.name = "vna-tls"

    def start(self) -> Endpoint:
        from servers import free_port

        self.tls_port = free_port()
        self.extra_env["VNA_DICOM_TLS_PORT"] = str(self.tls_port)
        super().start()
        wait_port(self.tls_port, 30, self.proc)
        self.endpoint = Endpoint(self.aet, self.tls_port)
        return self.endpoint


class StorescpTlsTarget(StorescpTarget):
    """storescp `+tls` (one process per association, `--fork`), writing objects as received."""

    def __init__(self, workdir: Path, pki: PKI) -> None:
        super().__init__(workdir)
        self.pki = pki
        self.name = "storescp-tls"

    def start(self) -> Endpoint:
        from servers import free_port

        self.dir = make_tempdir(self.workdir, "storescp-tls-")
        out = self.dir / "out"
        out.mkdir()
        port = free_port()
        self.log = self.dir / "storescp.log"
        self.proc = start_process(
            [dcmtk("storescp"), "--fork", "-aet", self.aet, "-dhl", "-od", str(out), "+B",
             "+tls", str(self.pki.server.key), str(self.pki.server.cert),
             "+cf", str(self.pki.ca), str(port)],
            env=dcmtk_env(), log=self.log, cwd=self.dir, group=True)
        wait_port(port, 30, self.proc)
        self.endpoint = Endpoint(self.aet, port)
        return self.endpoint


def make(name: str, workdir: Path, pki: PKI) -> Target:
    return {"vna": lambda: VnaTarget(workdir), "vna-tls": lambda: VnaTlsTarget(workdir, pki),
            "storescp": lambda: StorescpTarget(workdir),
            "storescp-tls": lambda: StorescpTlsTarget(workdir, pki)}[name]()


def send(files: Sequence[Path], endpoint: Endpoint, associations: int, tls: list[str], *,
         tmp: Path, timeout: float) -> float:
    """storescu over `associations` parallel processes (with `tls` options); wall seconds."""
    procs = []
    t0 = time.perf_counter()
    for i, chunk in enumerate(split(list(files), associations)):
        lst = tmp / f"storescu-{i}.args"
        lst.write_text("\n".join(str(p) for p in chunk) + "\n")
        procs.append(subprocess.Popen(
            [dcmtk("storescu"), "-aet", "BENCHSCU", "-aec", endpoint.aet, *tls,
             endpoint.host, str(endpoint.port), f"@{lst}"],
            env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True))
        REGISTRY.procs.append(procs[-1])
    for p in procs:
        out, _ = p.communicate(timeout=max(1.0, t0 + timeout - time.perf_counter()))
        if p.returncode != 0:
            raise BenchError(f"storescu exited {p.returncode}: {out.decode()[-2000:]}")
    return time.perf_counter() - t0


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of `pid`, its live children, and the children they
    reaped (storescp --fork's per-association processes): the target alone, not whatever
    else runs on the machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(entry) == pid or int(fields[1]) == pid:
            total += sum(int(f) for f in fields[11:15]) / ticks
    return total


def measure(name: str, files: Sequence[Path], associations: int, workdir: Path, pki: PKI,
            timeout: float) -> tuple[float, float]:
    """(inst/s, the target's CPU ms per instance) of one run."""
    target = make(name, workdir, pki)
    client = pki.clients[next(iter(pki.clients))]
    tls = ["+tls", str(client.key), str(client.cert), "+cf", str(pki.ca)] \
        if name.endswith("-tls") else []
    with target as endpoint:
        tmp = make_tempdir(workdir, "send-")
        pid = target.proc.pid  # type: ignore[attr-defined]
        try:
            sync_disk()
            cpu0 = tree_cpu(pid)
            seconds = send(files, endpoint, associations, tls, tmp=tmp, timeout=timeout)
            cpu = tree_cpu(pid) - cpu0
        finally:
            remove_tempdir(tmp)
        held = target.count()
        if held is not None and held != len(files):
            raise BenchError(f"{name} holds {held} of {len(files)} instances")
    return len(files) / seconds, cpu * 1000 / len(files)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="tiny")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--associations", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with cleanup_on_exit():
        return run(args)


def run(args: argparse.Namespace) -> int:
    targets = [t for t in args.targets.split(",") if t]
    corpus = generate(args.corpus, args.count, args.workdir)
    warm(corpus)
    pki_dir = make_tempdir(args.workdir, "pki-")
    rates: dict[str, list[float]] = {t: [] for t in targets}
    cpu: dict[str, list[float]] = {t: [] for t in targets}
    try:
        pki = make_pki(pki_dir)
        for r in range(args.rounds):
            # the order alternates, so that no target always follows another's teardown
            for t in targets if r % 2 == 0 else targets[::-1]:
                rate, ms = measure(t, corpus.files, args.associations, args.workdir, pki,
                                   args.timeout)
                rates[t].append(rate)
                cpu[t].append(ms)
                print(f"round {r + 1} {t:13s} {rate:8.1f} inst/s {ms:6.2f} CPU ms/inst",
                      flush=True)
    finally:
        remove_tempdir(pki_dir)
    med = {t: statistics.median(v) for t, v in rates.items()}
    med_cpu = {t: statistics.median(v) for t, v in cpu.items()}
    print(f"\n{corpus.name}, {args.associations} association(s), median of {args.rounds}")
    print(f"{'target':13s} {'inst/s':>8s}  TLS/plain  {'CPU ms/inst':>11s}  TLS/plain")
    for t in targets:
        base = t.removesuffix("-tls")
        tls_pair = t != base and base in med
        ratio = f"{med[t] / med[base]:.2f}" if tls_pair else ""
        cpu_ratio = f"{med_cpu[t] / med_cpu[base]:.2f}" if tls_pair and med_cpu[base] else ""
        print(f"{t:13s} {med[t]:8.1f}  {ratio:9s}  {med_cpu[t]:11.2f}  {cpu_ratio}")
    if args.json:
        args.json.write_text(json.dumps({"corpus": corpus.name, "associations":
                                         args.associations, "rates": rates, "median": med,
                                         "cpu_ms": cpu, "median_cpu_ms": med_cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
