"""Statistics: the rollup the workers keep, and the stats API over real HTTP, checked against
counts computed here from the planted data, on both backends."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from services.runtime import open_archive
from storage.archive import Archive
from storage.derive import Deriver
from storage.migrate import upgrade
from storage.outbox import pending
from tests.api_client import ADMIN_TOKEN, RunningAPI, start_api, stop_api
from tests.conftest import Backend
from tests.factory import make_instance, store_document, write
from vna.stats import Filters, Interval, InvalidStatsQuery, Period, bucket, workload_matrix

TZ = ZoneInfo("Europe/Stockholm")


def test_buckets_are_local_time() -> None:
    t = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # 01:30 CET, the night clocks go forward
    assert bucket(t, Interval.DAY, TZ) == datetime(2026, 3, 29, tzinfo=TZ)
    assert bucket(t, Interval.WEEK, TZ).date() == date(2026, 3, 23)  # Monday
    assert bucket(t, Interval.MONTH, TZ).date() == date(2026, 3, 1)
    late = datetime(2026, 6, 30, 22, 30, tzinfo=UTC)  # already July 1st in Sweden
    assert bucket(late, Interval.MONTH, TZ).date() == date(2026, 7, 1)
    m = workload_matrix([(datetime(2026, 11, 23, 7, tzinfo=UTC), 5)], TZ)  # Mon 08:00 CET
    assert m[0][8] == 5 and sum(map(sum, m)) == 5


def test_filters_and_periods_refuse_nonsense() -> None:
    f = Filters.parse(["modality:CT", "modality:MR"], ["source_ae:TEST"])
    assert f.include and f.exclude
    for bad in (["modality"], ["colour:red"]):
        with pytest.raises(InvalidStatsQuery):
            Filters.parse(bad, [])
    with pytest.raises(InvalidStatsQuery):
        Period.of(date(2026, 2, 1), date(2026, 1, 1), TZ)


# -- planted data ------------------------------------------------------------------------

BASE = datetime(2026, 5, 4, 6, tzinfo=UTC)  # a Monday, 08:00 in Sweden


def plant(archive: Archive, tmp: Path, n: int = 60) -> list[dict[str, object]]:
    """Instances with known dimensions and received times; returns what was planted."""
    rng = random.Random(7)
    planted = []
    for i in range(n):
        modality = rng.choice(["CT", "MR", "US"])
        dept = ["Radiology", "Emergency"][(i // 3) % 2]  # a series attribute: one per study
        aet = rng.choice(["CT1", "MR1", "US3"])
        at = BASE + timedelta(days=rng.randint(0, 9), hours=rng.randint(0, 12),
                              minutes=rng.randint(0, 59))
        study = f"1.2.826.0.1.3680043.8.498.9{i // 3}"
        uid = f"{study}.{i}"
        series = f"{study}.{1 + ['CT', 'MR', 'US'].index(modality)}000"
        ds = make_instance(study_uid=study, series_uid=series, sop_uid=uid, modality=modality)
        ds.InstitutionalDepartmentName = dept
        res = archive.store_file(write(ds, tmp / f"{i}.dcm"), source_aet=aet)
        assert res.ok
        planted.append({"uid": uid, "modality": modality, "dept": dept, "aet": aet,
                        "at": at, "size": res.size, "study": study,
                        "series": series})
    first: dict[object, datetime] = {}
    for p in planted:
        first[p["study"]] = min(first.get(p["study"], p["at"]), p["at"])  # type: ignore[type-var]
    with archive.index.begin() as conn:  # the received times the test wants
        for p in planted:
            conn.execute(sa.text("UPDATE instance SET received_at = :t WHERE "
                                 "sop_instance_uid = :u"), {"t": p["at"], "u": p["uid"]})
        for study, at in first.items():
            conn.execute(sa.text("UPDATE study SET created_at = :t WHERE "
                                 "study_instance_uid = :u"), {"t": at, "u": study})
    return planted


@pytest.fixture(scope="module")
def planted(module_backend: Backend, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[tuple[RunningAPI, list[dict[str, object]], Archive]]:
    from tests.media import make_pdf

    settings = module_backend.settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[attr-defined]
    upgrade(settings.resolved_database_url)  # type: ignore[attr-defined]
    archive = open_archive(settings)  # type: ignore[arg-type]
    data = plant(archive, tmp_path_factory.mktemp("planted"))
    store_document(archive, make_pdf(), "application/pdf")
    deriver = Deriver(archive.index, archive.store)
    events = pending(archive.index)
    deriver.process(events)
    deriver.process(events)  # a redelivery: must not count twice
    api = start_api(module_backend)
    try:
        yield api, data, archive
    finally:
        stop_api(api)
        archive.index.dispose()


def stats(api: RunningAPI, path: str, **params: object) -> dict[str, object]:
    r = api.client().get(f"/api/v1/stats/{path}", params={"from": "2026-05-01",
                                                          "to": "2026-05-31", **params})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_volumes_by_day_and_modality(planted: tuple[RunningAPI, list[dict[str, object]],
                                                    Archive]) -> None:
    api, data, _ = planted
    body = stats(api, "volumes", interval="day", dimension="modality", kind="instance")
    got = {(s["key"], pt["start"][:10]): pt["count"]
           for s in body["series"] for pt in s["points"]}  # type: ignore[attr-defined,index]
    want = Counter((p["modality"], p["at"].astimezone(TZ).date().isoformat())  # type: ignore[attr-defined]
                   for p in data)
    assert got == dict(want)


def test_volumes_filters(planted: tuple[RunningAPI, list[dict[str, object]],
                                        Archive]) -> None:
    api, data, _ = planted
    body = stats(api, "volumes", interval="month", dimension="source_ae",
                 include=["modality:CT", "modality:MR"], exclude=["department:Emergency"])
    got = {s["key"]: s["total"] for s in body["series"]}  # type: ignore[attr-defined,index]
    want = Counter(p["aet"] for p in data
                   if p["modality"] in ("CT", "MR") and p["dept"] != "Emergency")
    assert got == dict(want)
    r = api.client().get("/api/v1/stats/volumes", params={"dimension": "colour"})
    assert r.status_code == 422
    r = api.client().get("/api/v1/stats/volumes", params={"include": "colour:red"})
    assert r.status_code == 422 and "dimension" in r.json()["detail"]


def test_workload_matrix(planted: tuple[RunningAPI, list[dict[str, object]],
                                        Archive]) -> None:
    api, data, _ = planted
    body = stats(api, "workload", kind="instance")
    want = [[0] * 24 for _ in range(7)]
    for p in data:
        local = p["at"].astimezone(TZ)  # type: ignore[attr-defined]
        want[local.weekday()][local.hour] += 1
    assert body["matrix"] == want


def test_summary(planted: tuple[RunningAPI, list[dict[str, object]], Archive]) -> None:
    api, data, _ = planted
    body = stats(api, "summary", to=datetime.now(TZ).date().isoformat())  # + today's document
    assert body["instances"] == len(data) and body["documents"] == 1
    assert body["studies"] == len({p["study"] for p in data})
    assert body["series"] == len({p["series"] for p in data})
    assert body["patients"] == 1
    by_modality = Counter(p["modality"] for p in data)
    assert {k: v["instances"] for k, v in body["byModality"].items()} == dict(by_modality)  # type: ignore[attr-defined]
    assert body["byDepartment"]["d"]["documents"] == 1  # type: ignore[index]
    assert body["bytes"] >= sum(p["size"] for p in data)  # type: ignore[misc,operator]
    assert body["freshness"]["pendingEvents"] == 0  # type: ignore[index]
    viewer = api.client(api.token("viewer"))
    assert viewer.get("/api/v1/stats/summary").status_code == 403


def test_throughput(planted: tuple[RunningAPI, list[dict[str, object]], Archive]) -> None:
    api, data, _ = planted
    body = stats(api, "throughput")
    hours = Counter(p["at"].replace(minute=0, second=0, microsecond=0)  # type: ignore[attr-defined]
                    for p in data)
    assert body["activeHours"] == len(hours)
    assert body["instancesPerSecond"] == round(len(data) / (3600 * len(hours)), 4)
    peak_hour, peak = hours.most_common(1)[0]
    assert body["peak"]["instancesPerSecond"] == round(peak / 3600, 4)  # type: ignore[index]
    per_ae = Counter(p["aet"] for p in data)
    for ae, n in per_ae.items():
        ae_hours = {p["at"].replace(minute=0, second=0, microsecond=0)  # type: ignore[attr-defined]
                    for p in data if p["aet"] == ae}
        got = body["bySourceAe"][ae]["instancesPerSecond"]  # type: ignore[index]
        assert got == round(n / (3600 * len(ae_hours)), 4)
    assert body["outbox"]["pendingEvents"] == 0  # type: ignore[index]


def test_storage_growth_and_forecast(planted: tuple[RunningAPI, list[dict[str, object]],
                                                    Archive]) -> None:
    api, data, _ = planted
    body = stats(api, "storage", interval="day", dimension="modality", kind="instance")
    by_day: Counter[str] = Counter()
    for p in data:
        by_day[p["at"].astimezone(TZ).date().isoformat()] += p["size"]  # type: ignore[attr-defined]
    totals = [(pt["start"][:10], pt["total"]) for pt in body["total"]]  # type: ignore[attr-defined,index]
    running = 0
    for day, total in totals:
        running += by_day[day]
        assert total == running
    assert running == sum(p["size"] for p in data)  # type: ignore[misc]
    assert body["forecast"]["growthPerInterval"] > 0  # type: ignore[index]
    assert len(body["forecast"]["next"]) == 6  # type: ignore[index]
    later = stats(api, "storage", interval="day", dimension="modality", kind="instance",
                  **{"from": "2026-05-10"})
    first_total = later["total"][0]  # type: ignore[index]
    assert first_total["total"] > by_day.get(first_total["start"][:10], 0)  # starts from before


def test_prometheus_metrics(planted: tuple[RunningAPI, list[dict[str, object]],
                                           Archive]) -> None:
    api, data, _ = planted
    stats(api, "summary")
    r = api.client().get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    for ae, n in Counter(p["aet"] for p in data).items():
        assert f'vna_stored_total{{kind="instance",source_ae="{ae}"}} {float(n)}' in lines
    assert 'vna_stored_total{kind="document",source_ae=""} 1.0' in lines
    assert "vna_outbox_pending 0.0" in lines
    assert any(line.startswith('vna_http_requests_total{method="GET",'
                               'route="/api/v1/stats/summary",status="200"}') for line in lines)
    assert api.client(None).get("/metrics").status_code == 401
    assert api.client(api.token("viewer")).get("/metrics").status_code == 403


@pytest.mark.parametrize("dataset", ["instances", "studies", "documents", "orders"])
def test_export_csv_and_parquet(planted: tuple[RunningAPI, list[dict[str, object]], Archive],
                                dataset: str) -> None:
    import csv
    import io

    import pyarrow.parquet as pq

    api, data, _ = planted
    period = {"from": "2026-05-01", "to": datetime.now(TZ).date().isoformat()}
    r = api.client().get("/api/v1/stats/export", params={"dataset": dataset, **period})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    r = api.client().get("/api/v1/stats/export", params={"dataset": dataset,
                                                          "format": "parquet", **period})
    assert r.status_code == 200
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == len(rows)
    if dataset == "instances":
        assert len(rows) == len(data)
        assert Counter(row["modality"] for row in rows) == Counter(p["modality"] for p in data)
        assert sum(table.column("size").to_pylist()) == sum(p["size"] for p in data)  # type: ignore[misc]
        assert str(table.schema.field("received_at").type) == "timestamp[us, tz=UTC]"
    elif dataset == "studies":
        assert len(rows) == len({p["study"] for p in data})
        assert sum(int(row["instances"]) for row in rows) == len(data)
    elif dataset == "documents":
        assert len(rows) == 1 and rows[0]["mime_type"] == "application/pdf"
    else:  # no orders here: tests/test_leadtimes.py plants them
        assert rows == [] and table.num_rows == 0 and "mpps_status" in table.schema.names
    header = ",".join(rows[0]) if rows else ""
    for private in ("patient_id", "patient_name", "birth"):
        assert private not in header


def test_dashboard_renders_charts_in_chromium(
        planted: tuple[RunningAPI, list[dict[str, object]], Archive], tmp_path: Path) -> None:
    """Headless Chromium opens /dashboard (token in the URL fragment, never sent to the
    server), and the page draws its charts from the stats API with the planted data."""
    import json
    import re
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is not installed (apt-get install chromium)")
    api, data, _ = planted
    r = api.client(None).get("/dashboard")
    assert r.status_code == 200 and "<canvas" in r.text  # the page itself holds no data
    assert api.client(None).get("/dashboard/chart.umd.min.js").status_code == 200
    url = f"{api.url}/dashboard#token={ADMIN_TOKEN}&from=2026-05-01&to=2026-05-31"
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
         "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    m = re.search(r'data-rendered="([^"]+)"', out.stdout)
    assert m, ("dashboard did not render", re.search(r'data-failed="([^"]*)"', out.stdout),
               out.stderr[-2000:])
    rendered = json.loads(m.group(1).replace("&quot;", '"'))
    assert rendered["charts"] == 5 and rendered["points"] > len(data) // 10
    assert "CT/MR exam under" in out.stdout  # the quality table


def test_nightly_snapshot_leaves_today_out(
        planted: tuple[RunningAPI, list[dict[str, object]], Archive]) -> None:
    api, data, _ = planted
    today = datetime.now(TZ).date().isoformat()
    live = stats(api, "summary", to=today)
    nightly = stats(api, "summary", to=today, view="nightly")
    assert live["documents"] == 1 and nightly["documents"] == 0  # stored today
    assert live["instances"] == nightly["instances"] == len(data)  # stored "in May"
    only_today = stats(api, "summary", **{"from": today, "to": today, "view": "nightly"})
    assert only_today["instances"] == only_today["documents"] == 0
    r = api.client().get("/api/v1/stats/summary", params={"view": "weekly"})
    assert r.status_code == 422
