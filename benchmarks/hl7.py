"""HL7 v2 messages per second through `vna hl7` (MLLP), with the ACK only after the commit.

For each index (`sqlite`: the embedded default, `postgres`: PostgreSQL on 127.0.0.1), a
fresh `vna hl7` with VNA_FSYNC=true receives N messages of each kind over one MLLP
connection and over four, each connection sending its next message only once the ACK of
the last has come (original-mode acknowledgement, as a RIS sends). Kinds:

- `adt`: ADT^A04, a new patient each (an INSERT of the patient and of the message log)
- `orm`: ORM^O01 NW, a new order each (patient, worklist item, message log)

Every ACK must be MSA|AA and the index must hold one `hl7_message` row per message sent;
otherwise the run fails. The figure is messages/s over the wall clock of the whole batch.
Target (issue 14): >= 300 messages/s on one connection.

    .venv/bin/python benchmarks/hl7.py                  # 2,000 of each, both indexes
    .venv/bin/python benchmarks/hl7.py --count 200 --backends sqlite --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

# The repository instead of this script's folder, where this file would hide the `hl7`
# package (python-hl7) that it uses.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.servers import (  # noqa: E402
    VNA,
    BenchError,
    cleanup_on_exit,
    create_database,
    free_port,
    make_tempdir,
    start_process,
    stop_process,
    tail,
    vna_env,
    wait_port,
)

TARGET = 300.0  # messages/s on one connection


def _msh(message_type: str) -> str:
    return (f"MSH|^~\\&|BENCH|HOSP|VNA|REGION|20261205101010||{message_type}|"
            f"{uuid.uuid4().hex[:20]}|P|2.5")


def adt(n: int) -> str:
    return "\r".join([_msh("ADT^A04^ADT_A01"), "EVN|A04|20261205101010",
                      f"PID|||B{n:08d}^^^HOSP&1.2.752.1&ISO||Bench^Patient{n}||19700101|F",
                      "PV1||O|RAD"]) + "\r"


def orm(n: int) -> str:
    return "\r".join([
        _msh("ORM^O01^ORM_O01"),
        f"PID|||O{n:08d}^^^HOSP&1.2.752.1&ISO||Order^Patient{n}||19800101|M",
        "PV1||O|RAD^^^HOSP|||||123^Referrer^Rita",
        f"ORC|NW|PL{n:08d}|FI{n:08d}||SC||^^^20261210093000^^R||20261201080000|||555^Orderer^O",
        f"OBR|1|PL{n:08d}|FI{n:08d}|CTTHX^CT thorax^L||20261130120000||||||||||||"
        f"A{n:08d}||||||CT|||^^^20261210093000^^R",
    ]) + "\r"


KINDS = {"adt": adt, "orm": orm}


def send_all(port: int, messages: list[str], connections: int) -> float:
    """Send over `connections` MLLP connections at once; seconds until the last ACK."""
    from hl7.client import MLLPClient

    shares = [messages[i::connections] for i in range(connections)]
    errors: list[str] = []
    ready = threading.Barrier(connections + 1)

    def run(share: list[str]) -> None:
        with MLLPClient("127.0.0.1", port) as client:
            ready.wait()
            for text in share:
                answer = client.send_message(text)
                if b"MSA|AA|" not in answer:
                    errors.append(answer.decode(errors="replace"))
                    return

    threads = [threading.Thread(target=run, args=(s,)) for s in shares]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise BenchError(f"a message was not accepted: {errors[0]!r}")
    return elapsed


def logged(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return int(c.execute(sa.text("SELECT count(*) FROM hl7_message")).scalar_one())
    finally:
        engine.dispose()


def run_backend(backend: str, workdir: Path, count: int, connections: list[int],
                runs: int) -> dict[str, dict[str, float]]:
    """{kind: {"1": msg/s, "4": msg/s}} (median of `runs`) for one index backend."""
    data = make_tempdir(workdir, f"hl7-{backend}-")
    env = {"VNA_DATA_DIR": str(data / "vna-data"), "VNA_FSYNC": "true",
           "VNA_LOG_LEVEL": "WARNING", "VNA_HL7_HOST": "127.0.0.1"}
    if backend == "postgres":
        env["VNA_DATABASE_URL"] = create_database()
    url = env.get("VNA_DATABASE_URL") or f"sqlite:///{data / 'vna-data' / 'index.sqlite3'}"
    port = free_port()
    env["VNA_HL7_PORT"] = str(port)
    log = data / "hl7.log"
    proc = start_process([*VNA, "hl7"], env=vna_env(env), log=log, cwd=data)
    try:
        wait_port(port, 90, proc)
        send_all(port, [adt(10**7 + i) for i in range(20)], 1)  # warm up
        sent = 20
        out: dict[str, dict[str, float]] = {}
        serial = 0
        for kind, make in KINDS.items():
            out[kind] = {}
            for c in connections:
                rates = []
                for _ in range(runs):
                    batch = [make(serial + i) for i in range(count)]
                    serial += count
                    rates.append(count / send_all(port, batch, c))
                    sent += count
                out[kind][str(c)] = round(statistics.median(rates), 1)
        if logged(url) != sent:
            raise BenchError(f"{sent} messages acknowledged, {logged(url)} in the index")
        return out
    except BenchError as exc:
        raise BenchError(f"{exc}\n{tail(log)}") from None
    finally:
        stop_process(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000, help="messages per kind and run")
    ap.add_argument("--connections", default="1,4", help="concurrent MLLP connections")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/vna-bench"))
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    connections = [int(c) for c in args.connections.split(",")]
    figures: dict[str, dict[str, dict[str, float]]] = {}
    with cleanup_on_exit():
        for backend in args.backends.split(","):
            figures[backend] = run_backend(backend, args.workdir, args.count, connections,
                                           args.runs)
    print(f"HL7 v2 over MLLP, ACK after commit, VNA_FSYNC=true, {args.count} messages "
          f"per run, median of {args.runs} (messages/s)")
    print(f"{'index':10} {'kind':5} " + " ".join(f"{c:>6} conn" for c in connections))
    for backend, kinds in figures.items():
        for kind, rates in kinds.items():
            cells = " ".join(f"{rates[str(c)]:>11.1f}" for c in connections)
            mark = "" if rates.get("1", TARGET) >= TARGET else f"  (below {TARGET:.0f})"
            print(f"{backend:10} {kind:5} {cells}{mark}")
    if args.json:
        args.json.write_text(json.dumps({"target": TARGET, "count": args.count,
                                         "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
