"""Lead times and quality of the modality workflow on a region-year of orders: latency of
`/api/v1/stats/leadtimes`, `/api/v1/stats/quality` and `/api/v1/stats/export?dataset=orders`.

Generates, by direct inserts, `--orders` orders (default 100,000) over the 365 days ending
today: referral 0-30 days before the scheduled time, CT/MR/US/CR/DX/MG, 6 departments (one in
ten orders without one: the series say), ~94 % performed with MPPS (a few DISCONTINUED,
IN PROGRESS, or two steps), their studies, study facts (last image 1-60 minutes after the
exam end) and final reports for ~85 %; ~3 % still SCHEDULED; a few hundred merges; and
one image-only study (no MPPS) per twenty orders. Then starts `vna api` on that database and
times each endpoint for the last 30 days and for the whole year (one warm-up, then `--runs`
requests over one kept-open connection); the year's answer is checked against the
generator's own counts.

Target (issue 14): the lead times < 1 s on PostgreSQL with 100,000 orders and MPPS.

    .venv/bin/python benchmarks/leadtimes.py --help
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus import DEFAULT_WORKDIR  # noqa: E402
from documents import ApiServer  # noqa: E402
from servers import REPO, cleanup_on_exit, create_database, make_tempdir  # noqa: E402
from stats import Client, Timing  # noqa: E402

TZ = ZoneInfo("Europe/Stockholm")
TARGET_MS = 1000.0  # leadtimes, PostgreSQL, the whole year
DATABASES = ("postgres", "sqlite")
MODALITIES = (("CT", 0.3), ("MR", 0.15), ("US", 0.2), ("CR", 0.15), ("DX", 0.15),
              ("MG", 0.05))
DEPARTMENTS = ("Radiology", "Emergency", "Neuro", "Cardiology", "Orthopaedics", "Oncology")
ENDPOINTS = (("leadtimes", "/api/v1/stats/leadtimes"), ("quality", "/api/v1/stats/quality"),
             ("export orders", "/api/v1/stats/export?dataset=orders&format=csv"))
PERIODS = (30, 365)
BATCH = 5000


@dataclass
class Generated:
    orders: int = 0
    with_mpps: int = 0  # exams whose first step is not DISCONTINUED
    images_only: int = 0
    seconds: float = 0.0
    tables: dict[str, int] = field(default_factory=dict)


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    x, acc = rng.random(), 0.0
    for value, w in weighted:
        acc += w
        if x < acc:
            return value
    return weighted[-1][0]


def rows(n_orders: int, end: datetime, seed: int = 14) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table, row) of the generated year, patients first."""
    rng = random.Random(seed)
    n_patients = max(1, n_orders // 3)
    for i in range(1, n_patients + 1):
        yield "patient", {"id": i, "patient_id": f"P{i:07d}", "issuer_of_patient_id": "",
                          "patient_name": "DOE^J", "patient_name_upper": "DOE^J"}
    study_id = series_id = 0
    for n in range(1, n_orders + 1):
        modality = _pick(rng, MODALITIES)
        department = None if rng.random() < 0.1 else rng.choice(DEPARTMENTS)
        local = (end - timedelta(seconds=rng.uniform(0, 365 * 86400))).astimezone(TZ)
        scheduled = local.replace(hour=rng.randint(7, 17), minute=rng.choice((0, 15, 30, 45)),
                                  second=0, microsecond=0)
        referral = scheduled - timedelta(seconds=rng.uniform(3600, 30 * 86400))
        uid, accession = f"1.2.826.0.1.3680043.8.498.1414.{n}", f"A{n:09d}"
        fate = rng.random()
        performed = fate < 0.94 and scheduled < end
        status = ("SCHEDULED" if not performed and fate < 0.97 else
                  "CANCELLED" if not performed else "COMPLETED")
        patient = rng.randint(1, n_patients)
        yield "imaging_order", {
            "id": n, "patient_fk": patient, "placer_order_number": f"PL{n}",
            "accession_number": accession, "requested_procedure_id": f"RP{n}",
            "study_instance_uid": uid, "scheduled_procedure_step_id": f"SPS{n}",
            "modality": modality, "scheduled_station_aet": f"{modality}1",
            "scheduled_date": scheduled.strftime("%Y%m%d"),
            "scheduled_time": scheduled.strftime("%H%M%S.000000"),
            "scheduled_at": scheduled.astimezone(UTC), "department": department,
            "status": status, "referral_at": referral.astimezone(UTC),
            "placed_at": (referral + timedelta(minutes=5)).astimezone(UTC), "source": "hl7",
            "created_at": referral.astimezone(UTC), "updated_at": scheduled.astimezone(UTC)}
        if not performed:
            continue
        started = (scheduled + timedelta(seconds=rng.uniform(-600, 7200))).astimezone(UTC)
        minutes = {"CT": 15, "MR": 35, "US": 20, "CR": 5, "DX": 5, "MG": 15}[modality]
        ended = started + timedelta(minutes=rng.uniform(0.5, 2) * minutes)
        step_status = ("IN PROGRESS" if rng.random() < 0.01 and ended > end - timedelta(
            days=2) else "COMPLETED")
        steps = [(started, ended, step_status)]
        if rng.random() < 0.05:
            steps.insert(0, (started - timedelta(minutes=3), started - timedelta(minutes=2),
                             "DISCONTINUED"))
        if rng.random() < 0.05:
            steps.append((ended + timedelta(minutes=2), ended + timedelta(minutes=9),
                          "COMPLETED"))
        for k, (a, b, st) in enumerate(steps):
            yield "performed_procedure_step", {
                "sop_instance_uid": f"{uid}.{k}", "order_fk": n, "study_instance_uid": uid,
                "accession_number": accession, "patient_id": f"P{patient:07d}",
                "issuer_of_patient_id": "", "modality": modality,
                "station_aet": f"{modality}1", "status": st, "started_at": a,
                "ended_at": None if st == "IN PROGRESS" else b,
                "performed_series": [{"series_instance_uid": f"{uid}.1"}], "attributes": {},
                "created_at": a, "updated_at": b}
        last_end = steps[-1][1]
        if rng.random() < 0.005:  # images never came
            continue
        study_id += 1
        series_id += 1
        first = started + timedelta(minutes=1)
        yield "study", {"id": study_id, "patient_fk": patient, "study_instance_uid": uid,
                        "accession_number": accession, "created_at": first}
        yield "series", {"id": series_id, "study_fk": study_id, "series_instance_uid":
                         f"{uid}.1", "modality": modality,
                         "institutional_department_name": department or "Radiology"}
        yield "study_fact", {
            "study_instance_uid": uid, "modality": modality, "first_received_at": first,
            "last_received_at": last_end + timedelta(seconds=rng.uniform(60, 3600)),
            "pps_start": None, "pps_end": None, "patient_id": f"P{patient:07d}",
            "patient_name": "DOE^J", "several_names": False,
            "department": department or "Radiology", "source_aet": f"{modality}1",
            "accession_number": accession}
        if rng.random() < 0.85:
            reported = last_end + timedelta(seconds=rng.lognormvariate(10, 1.2))
            yield "study_report", {"accession_number": accession, "study_instance_uid": uid,
                                   "reported_at": reported, "result_status": "F",
                                   "received_at": reported}
        if n % 20 == 0:  # an image-only study (a modality without MPPS)
            t = started + timedelta(hours=1)
            yield "study_fact", {
                "study_instance_uid": f"{uid}.9", "modality": "CR", "first_received_at": t,
                "last_received_at": t + timedelta(minutes=2), "pps_start": t - timedelta(
                    minutes=10), "pps_end": t - timedelta(minutes=5),
                "patient_id": f"P{patient:07d}", "patient_name": "DOE^J",
                "several_names": False, "department": "Emergency", "source_aet": "CR9",
                "accession_number": None}
    for i in range(1, max(1, n_orders // 250) + 1):
        at = end - timedelta(days=rng.uniform(0, 365))
        yield "patient_alias", {"patient_id": f"OLD{i}", "issuer_of_patient_id": "",
                                "survivor_fk": rng.randint(1, n_patients), "reason": "merge",
                                "at": at}


def load(url: str, n_orders: int, end: datetime) -> Generated:
    """The generated rows, inserted table by table in batches."""
    import sqlalchemy as sa

    from storage.index.models import Base
    from storage.migrate import upgrade

    t0 = time.perf_counter()
    upgrade(url)
    engine = sa.create_engine(url)
    gen = Generated()
    pending: dict[str, list[dict[str, Any]]] = {}
    order = ("patient", "imaging_order", "performed_procedure_step", "study", "series",
             "study_fact", "study_report", "patient_alias")

    def flush(conn: Any, upto: str | None = None) -> None:
        for name in order:
            batch = pending.pop(name, [])
            if batch:
                conn.execute(sa.insert(Base.metadata.tables[name]), batch)
                gen.tables[name] = gen.tables.get(name, 0) + len(batch)
            if name == upto:
                break

    with engine.begin() as conn:
        waiting = 0
        for table, row in rows(n_orders, end):
            pending.setdefault(table, []).append(row)
            waiting += 1
            if waiting >= BATCH:
                flush(conn)
                waiting = 0
        flush(conn)
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE"))
    engine.dispose()
    gen.orders = gen.tables.get("imaging_order", 0)
    gen.seconds = time.perf_counter() - t0
    return gen


def measure(server: ApiServer, end: date, runs: int, gen: Generated
            ) -> tuple[list[Timing], list[str]]:
    client = Client(server.port, server.token, 600.0)
    timings, checks = [], []
    try:
        for days in PERIODS:
            first = end - timedelta(days=days - 1)
            for name, path in ENDPOINTS:
                t = Timing(name, days)
                url = f"{path}{'&' if '?' in path else '?'}from={first}&to={end}"
                for i in range(runs + 1):
                    status, body, seconds = client.get(url)
                    if status != 200:
                        t.error = f"HTTP {status}: {body[:500].decode(errors='replace')}"
                        break
                    if i:
                        t.ms.append(seconds * 1000)
                    if i == 0 and days == 365 and name == "leadtimes":
                        answer = json.loads(body)
                        checks.append(f"leadtimes: {answer['exams']:,} exams "
                                      f"({answer['examsWithMpps']:,} with MPPS), "
                                      f"examDuration n={answer['examDuration']['n']:,}, "
                                      f"examToReport n={answer['examToReport']['n']:,}")
                        if answer["examsWithMpps"] < 0.9 * gen.tables[
                                "study_report"] or answer["examDuration"]["n"] == 0:
                            t.error = "the year's exams are not all there: " + checks[-1]
                    if i == 0 and days == 365 and name == "export orders":
                        lines = body.count(b"\n") - 1
                        checks.append(f"export: {lines:,} order rows")
                timings.append(t)
    finally:
        client.close()
    return timings, checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Latency of the lead-time, quality and orders-export answers of "
                    "`vna api` on a generated region-year of orders and MPPS.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--orders", type=int, default=100_000, help="orders to generate")
    ap.add_argument("--databases", default="postgres",
                    help=f"comma-separated: {', '.join(DATABASES)}")
    ap.add_argument("--runs", type=int, default=10, help="timed requests per endpoint/period")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help="temp dirs (env VNA_BENCH_DIR); not in the repo")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)
    dbs = [d.strip() for d in args.databases.split(",") if d.strip()]
    if not dbs or any(d not in DATABASES for d in dbs):
        ap.error(f"--databases: one or more of {', '.join(DATABASES)}")
    workdir = args.workdir.resolve()
    if workdir.is_relative_to(REPO):
        ap.error(f"--workdir must be outside the repository ({REPO})")
    end = datetime.now(UTC).replace(microsecond=0)
    results: dict[str, Any] = {}
    failed = False
    with cleanup_on_exit():
        workdir.mkdir(parents=True, exist_ok=True)
        for db in dbs:
            if db == "postgres":
                url = create_database()
            else:
                url = f"sqlite:///{make_tempdir(workdir, 'leadtimes-') / 'index.db'}"
            print(f"{db}: generating {args.orders:,} orders", file=sys.stderr, flush=True)
            gen = load(url, args.orders, end)
            print(f"  {gen.seconds:.1f} s: " + ", ".join(
                f"{k} {v:,}" for k, v in gen.tables.items()), file=sys.stderr, flush=True)
            server = ApiServer(workdir, {"VNA_STORAGE": "file", "VNA_DATABASE_URL": url})
            try:
                timings, checks = measure(server, end.astimezone(TZ).date(), args.runs, gen)
            finally:
                server.stop()
            failed |= any(t.error for t in timings)
            results[db] = {"tables": gen.tables, "checks": checks, "timings": [
                {"endpoint": t.endpoint, "days": t.days, "median_ms": t.median, "ms": t.ms,
                 "error": t.error} for t in timings]}
        print(f"\nLead times, quality and the orders export on {args.orders:,} orders; "
              f"median of {args.runs} requests (after one warm-up), whole HTTP response")
        for db, r in results.items():
            print(f"\n{db} ({', '.join(f'{k} {v:,}' for k, v in r['tables'].items())})")
            print(f"| endpoint | {' | '.join(f'{d} d' for d in PERIODS)} |")
            print(f"| --- | {' | '.join('---' for _ in PERIODS)} |")
            for name, _ in ENDPOINTS:
                cells = []
                for days in PERIODS:
                    t = next(x for x in r["timings"] if x["endpoint"] == name
                             and x["days"] == days)
                    cells.append(t["error"] or f"{t['median_ms']:.0f} ms")
                print(f"| {name} | {' | '.join(cells)} |")
            for c in r["checks"]:
                print(f"- CHECK {c}")
        if "postgres" in results:
            year = next(t for t in results["postgres"]["timings"]
                        if t["endpoint"] == "leadtimes" and t["days"] == 365)
            met = year["median_ms"] is not None and year["median_ms"] < TARGET_MS
            print(f"\n- postgres: leadtimes over the year < {TARGET_MS:.0f} ms: "
                  f"{'met' if met else 'NOT met'} ({year['median_ms'] or 0:.0f} ms)")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"orders": args.orders, "results": results},
                                            indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
