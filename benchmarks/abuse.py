"""A normal sender's C-STORE rate under an abusive client, next to its rate alone (DICOM).

Each run starts `vna scp` fresh; in the abused runs, before the sender starts, an abusive
client opens `--idle` TCP connections that never send an A-ASSOCIATE-RQ, requests
`--idle` associations as one calling AE title (accepted up to
VNA_DICOM_MAX_ASSOCIATIONS_PER_AET per SCP process, the rest rejected) and holds them
silent, and a slow sender writes an A-ASSOCIATE-RQ one byte a second. The sender is DCMTK
storescu (its own AE title). Runs are interleaved (alone, abused, abused, alone...); the
table reports medians and the abused/alone ratio (target: >= 0.8), and the CPU time vna's
own processes spent per instance (robust when the machine is shared: wall rates are not).

    .venv/bin/python benchmarks/abuse.py --count 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus import DEFAULT_WORKDIR, generate, warm  # noqa: E402
from servers import (  # noqa: E402
    BenchError,
    VnaTarget,
    cleanup_on_exit,
    make_tempdir,
    remove_tempdir,
    sync_disk,
)
from tls import send, tree_cpu  # noqa: E402

from tests.abuse_client import Crowd, SlowSender  # noqa: E402


def measure(files: list[Path], workdir: Path, *, abused: bool, idle: int,
            associations: int, timeout: float) -> tuple[float, float, dict[str, int]]:
    """(inst/s, vna's CPU ms per instance, what the abusive client got) of one run."""
    target = VnaTarget(workdir)
    seen: dict[str, int] = {}
    with target as endpoint:
        crowd = hogs = slow = None
        tmp = make_tempdir(workdir, "send-")
        try:
            if abused:
                slow = SlowSender(endpoint.port)
                slow.start()
                crowd = Crowd(endpoint.port, idle)
                hogs = Crowd(endpoint.port, idle, associate=True, calling="HOG")
                seen = {"idle_connections": len(crowd.socks),
                        "idle_associations": hogs.accepted, "rejected": hogs.refused}
            sync_disk()
            assert target.proc is not None
            cpu0 = tree_cpu(target.proc.pid)
            seconds = send(files, endpoint, associations, [], tmp=tmp, timeout=timeout)
            cpu = tree_cpu(target.proc.pid) - cpu0
        finally:
            remove_tempdir(tmp)
            for c in (crowd, hogs):
                if c is not None:
                    c.close()
            if slow is not None:
                slow.stop()
                seen["slow_bytes"] = slow.bytes_sent
        held = target.count()
        if held is not None and held != len(files):
            raise BenchError(f"vna holds {held} of {len(files)} instances")
    return len(files) / seconds, cpu * 1000 / len(files), seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="tiny")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--associations", type=int, default=1, help="of the normal sender")
    ap.add_argument("--idle", type=int, default=500,
                    help="idle connections, and idle associations requested")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with cleanup_on_exit():
        corpus = generate(args.corpus, args.count, args.workdir)
        warm(corpus)
        rates: dict[str, list[float]] = {"alone": [], "abused": []}
        cpu: dict[str, list[float]] = {"alone": [], "abused": []}
        seen: dict[str, int] = {}
        for r in range(args.rounds):
            # the order alternates, so that neither always follows the other's teardown
            for mode in ("alone", "abused") if r % 2 == 0 else ("abused", "alone"):
                rate, ms, got = measure(corpus.files, args.workdir, abused=mode == "abused",
                                    idle=args.idle, associations=args.associations,
                                    timeout=args.timeout)
                rates[mode].append(rate)
                cpu[mode].append(ms)
                seen = got or seen
                print(f"round {r + 1} {mode:7s} {rate:8.1f} inst/s {ms:6.2f} CPU ms/inst "
                      f"{got or ''}", flush=True)
        med = {m: statistics.median(v) for m, v in rates.items()}
        med_cpu = {m: statistics.median(v) for m, v in cpu.items()}
        print(f"\n{corpus.name}, {args.associations} association(s), median of {args.rounds}; "
              f"abusive client: {seen}")
        print(f"alone   {med['alone']:8.1f} inst/s  {med_cpu['alone']:6.2f} CPU ms/inst")
        print(f"abused  {med['abused']:8.1f} inst/s  {med_cpu['abused']:6.2f} CPU ms/inst  "
              f"ratio {med['abused'] / med['alone']:.2f}")
        if args.json:
            args.json.write_text(json.dumps({"corpus": corpus.name, "rates": rates,
                                             "median": med, "cpu_ms": cpu,
                                             "median_cpu_ms": med_cpu, "abusive_client": seen}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
