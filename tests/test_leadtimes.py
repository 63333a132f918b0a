"""Lead times: the arrival-delay histogram (bins and the percentiles read back from them,
against the exact nearest-rank percentiles of the delays themselves), and the chain from
referral to report with its quality rules and the orders export, over HTTP on a running
`vna api` on both backends, from orders, MPPS, study facts and reports of known times."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from storage.index.db import Index
from storage.migrate import upgrade
from tests.api_client import RunningAPI, start_api, stop_api
from tests.conftest import Backend
from tests.workflow_factory import workflow
from vna.leadtimes import (
    CHAIN,
    LINEAR_SECONDS,
    RELATIVE_RESOLUTION,
    TIMES,
    Exams,
    arrival_bin,
    bin_value,
    chain,
    check_exam_filters,
    filter_arrivals,
    filter_exams,
    histogram_percentiles,
)
from vna.quality import percentiles
from vna.stats import Filters, InvalidStatsQuery


@pytest.mark.parametrize("seconds", [0, 0.4, 1, 59.9, 127.99, 128, 129, 3600, 86_400,
                                     86_401, 3 * 365 * 86_400, -5, -7200])
def test_a_bin_stands_for_the_delays_in_it(seconds: float) -> None:
    value = bin_value(arrival_bin(seconds))
    if abs(seconds) < LINEAR_SECONDS:
        assert abs(value - seconds) <= 0.5
    else:
        assert abs(value - seconds) <= abs(seconds) * RELATIVE_RESOLUTION


def test_bins_are_ordered_like_the_delays() -> None:
    rng = random.Random(7)
    delays = sorted(rng.uniform(-1e5, 1e7) for _ in range(5000))
    bins = [arrival_bin(d) for d in delays]
    assert bins == sorted(bins)


def test_histogram_percentiles_match_the_exact_ones() -> None:
    rng = random.Random(11)
    for _ in range(50):
        delays = [rng.lognormvariate(rng.uniform(2, 10), rng.uniform(0.2, 2))
                  for _ in range(rng.randint(1, 3000))]
        histogram = Counter(arrival_bin(d) for d in delays)
        exact, binned = percentiles(delays), histogram_percentiles(histogram)
        for point, value in exact.items():
            allowed = 0.6 if value < LINEAR_SECONDS else value * RELATIVE_RESOLUTION + 0.1
            assert abs(binned[point] - value) <= allowed, (point, value, binned)


def test_no_delays_no_percentiles() -> None:
    assert histogram_percentiles({}) == {}
    assert histogram_percentiles({3: 0}) == {}


def test_chain_percentiles_are_the_nearest_rank_ones() -> None:
    """The columnar chain gives, for every step and group, `percentiles` of the exams where
    both ends are known; filters keep what they name."""
    rng = random.Random(5)
    rows = []
    for i in range(2000):
        t = [rng.uniform(0, 1e6) if rng.random() < 0.8 else None for _ in TIMES]
        rows.append((f"1.2.{i}", None, rng.choice(["CT", "MR", None]),
                     rng.choice(["A", "B", ""]), rng.random() < 0.5, *t))
    exams = Exams.of(rows[:1500], rows[1500:])
    assert len(exams) == 2000 and int(exams.by_mpps.sum()) == 1500
    got = chain(exams)
    for name, start, end in CHAIN:
        a, b = TIMES.index(start) + 5, TIMES.index(end) + 5
        values = [(r[2] or "", r[3], round(r[b] - r[a], 3)) for r in rows
                  if r[a] is not None and r[b] is not None]
        assert got[name].n == len(values)
        assert got[name].percentiles == percentiles([v for _, _, v in values])
        for m in ("CT", "MR", ""):
            mine = [v for modality, _, v in values if modality == m]
            assert got[name].by_modality[m].percentiles == percentiles(mine), (name, m)
        assert got[name].by_department["B"].n == sum(d == "B" for _, d, _ in values)
    kept = filter_exams(exams, Filters.parse(["modality:CT", "modality:"],
                                             ["department:A"]))
    assert len(kept) == sum(r[2] != "MR" and r[3] != "A" for r in rows)
    arrivals = {"CT": Counter({1: 2}), "MR": Counter({3: 1})}
    assert filter_arrivals(arrivals, Filters.parse(["modality:MR"], [])) == {
        "MR": Counter({3: 1})}
    assert filter_arrivals(arrivals, Filters.parse([], ["department:A"])) is None
    with pytest.raises(InvalidStatsQuery):
        check_exam_filters(Filters.parse(["source_ae:CT1"], []))
    empty = chain(Exams.of([], []))
    assert all(d.n == 0 and d.percentiles == {} for d in empty.values())


# -- the chain from referral to report, over HTTP on a running `vna api` -------------------
#
# Orders, MPPS, study facts and reports written through the models with chosen times, in
# March 2026 (t0 = 10 March 08:00 UTC); every figure below is worked out by hand from them.

TZ = ZoneInfo("Europe/Stockholm")
T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
MIN, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
MARCH = {"from": "2026-03-01", "to": "2026-03-31"}
S = "1.2.826.0.1.3680043.8.498.14"  # S.1 ... S.9: the exams' studies


def plant_workflow(index: Index) -> None:
    with workflow(index, TZ) as w:
        p1 = w.patient("P1")
        # E1: CT, ordered (Radiology), one COMPLETED step, images, a report.
        o1 = w.order(p1, "ACC1", f"{S}.1", modality="CT", department="Radiology",
                     referral=T0 - 3 * DAY, placed=T0 - 3 * DAY + HOUR, scheduled=T0)
        w.mpps(f"{S}.1", status="COMPLETED", started=T0 + 10 * MIN, ended=T0 + 30 * MIN,
               order=o1, accession="ACC1", series=[f"{S}.1.1"])
        w.study(p1, f"{S}.1", created=T0 + 35 * MIN, series=f"{S}.1.1")
        w.fact(f"{S}.1", modality="CT", first=T0 + 35 * MIN, last=T0 + 40 * MIN,
               source_aet="CT1", department="Radiology", accession="ACC1")
        w.report("ACC1", T0 + DAY)
        # E2: MR, the order names no department (the series say Neuro); two COMPLETED
        # steps and a DISCONTINUED one before them; no report (missing after 7 days).
        o2 = w.order(p1, "ACC2", f"{S}.2", modality="MR", referral=T0 - DAY,
                     scheduled=T0 + 55 * MIN)
        w.mpps(f"{S}.2", status="DISCONTINUED", started=T0 + 50 * MIN,
               ended=T0 + 52 * MIN, order=o2, modality="MR", station_aet="MR1")
        w.mpps(f"{S}.2", status="COMPLETED", started=T0 + HOUR, ended=T0 + 80 * MIN,
               order=o2, modality="MR", station_aet="MR1")
        w.mpps(f"{S}.2", status="COMPLETED", started=T0 + 85 * MIN, ended=T0 + 110 * MIN,
               order=o2, modality="MR", station_aet="MR1")
        w.study(p1, f"{S}.2", created=T0 + 115 * MIN)
        w.fact(f"{S}.2", modality="MR", first=T0 + 115 * MIN, last=T0 + 2 * HOUR,
               source_aet="MR1", department="Neuro", accession="ACC2")
        # E3: CT of 40 s by MPPS, linked to its order by Study Instance UID only; no
        # image ever arrived; reported.
        w.order(p1, "ACC3", f"{S}.3", modality="CT", department="Radiology",
                referral=T0 - 2 * DAY, scheduled=T0 + 2 * HOUR)
        w.mpps(f"{S}.3", status="COMPLETED", started=T0 + 2 * HOUR,
               ended=T0 + 2 * HOUR + timedelta(seconds=40), series=[f"{S}.3.1"])
        w.report("ACC3", T0 + 3 * HOUR, study=f"{S}.3")
        # E4: US without order; the modality filed its images under a study UID of its own
        # (so no study S.4), but its performed series is archived.
        w.mpps(f"{S}.4", status="COMPLETED", started=T0 + 3 * HOUR,
               ended=T0 + 3 * HOUR + 10 * MIN, modality="US", station_aet="US1",
               series=[f"{S}.40.1"])
        w.study(p1, f"{S}.40", created=T0 + 4 * HOUR, series=f"{S}.40.1")
        # E5: CT still IN PROGRESS.
        o5 = w.order(p1, "ACC5", f"{S}.5", modality="CT", department="Radiology",
                     referral=T0 - DAY, scheduled=T0 + 230 * MIN, status="IN PROGRESS")
        w.mpps(f"{S}.5", status="IN PROGRESS", started=T0 + 4 * HOUR, order=o5)
        # E6: images only (no MPPS) from CT1, which sends MPPS: a 30 s CT by its images'
        # procedure step; the order's department (Emergency) wins over the series'.
        w.order(p1, "ACC6", f"{S}.6", modality="CT", department="Emergency",
                referral=T0 - DAY, scheduled=T0 + 5 * HOUR)
        w.fact(f"{S}.6", modality="CT", first=T0 + 5 * HOUR + MIN,
               last=T0 + 5 * HOUR + 2 * MIN, source_aet="CT1", department="Radiology",
               pps=(T0 + 5 * HOUR, T0 + 5 * HOUR + timedelta(seconds=30)))
        w.report("ACC6", T0 + 6 * HOUR)
        # E7: images only from MR9, which never sent MPPS; no order; reported by the
        # accession number its images carry.
        w.fact(f"{S}.7", modality="MR", first=T0 + 6 * HOUR, last=T0 + 6 * HOUR + 5 * MIN,
               source_aet="MR9", department="Neuro", accession="ACC7",
               pps=(T0 + 330 * MIN, T0 + 350 * MIN))
        w.report("ACC7", T0 + DAY)
        # E8: from CT1 before its first MPPS, no procedure step times.
        w.fact(f"{S}.8", modality="CT", first=T0 - HOUR, last=T0 - HOUR, source_aet="CT1",
               department="Radiology")
        # E9: its first step started in February: not an exam of March.
        w.mpps(f"{S}.9", status="COMPLETED", started=datetime(2026, 2, 27, 9, tzinfo=UTC),
               ended=datetime(2026, 2, 27, 9, 30, tzinfo=UTC), created=T0 + 11 * MIN)
        w.mpps(f"{S}.9", status="COMPLETED", started=T0, ended=T0 + 20 * MIN)
        w.study(p1, f"{S}.9", created=T0)
        w.fact(f"{S}.9", modality="CT", first=T0 + 21 * MIN, last=T0 + 22 * MIN,
               source_aet="CT1")
        # Orders not performed: one past its day; one in April; one cancelled.
        w.order(p1, "ACC10", f"{S}.10", modality="CT", scheduled=T0 + 2 * DAY,
                status="SCHEDULED")
        w.order(p1, "ACC11", f"{S}.11", modality="CT",
                scheduled=datetime(2026, 4, 2, 8, tzinfo=UTC), status="SCHEDULED")
        w.order(p1, "ACC12", f"{S}.12", modality="CT", scheduled=T0 + 2 * DAY,
                status="CANCELLED")
        # Patient merges: one in March; an ID change and an April merge do not count.
        for old, reason, at in (("OLD1", "merge", T0), ("OLD2", "change_id", T0),
                                ("OLD3", "merge", datetime(2026, 4, 1, 12, tzinfo=UTC))):
            w.alias(old, p1, reason=reason, at=at)


@pytest.fixture(scope="module")
def chain_api(module_backend: Backend) -> Iterator[RunningAPI]:
    settings: Any = module_backend.settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    index = Index(settings.resolved_database_url)
    plant_workflow(index)
    index.dispose()
    api = start_api(module_backend)
    try:
        yield api
    finally:
        stop_api(api)


def _stats(api: RunningAPI, path: str, **params: Any) -> dict[str, Any]:
    r = api.client().get(f"/api/v1/stats/{path}", params={**MARCH, **params})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _figure(n: int, p50: float | None = None, p90: float | None = None) -> dict[str, Any]:
    return {"n": n} if p50 is None else {"n": n, "p50": p50, "p90": p90}


def test_chain_figures(chain_api: RunningAPI) -> None:
    body = _stats(chain_api, "leadtimes")
    assert (body["exams"], body["examsWithMpps"]) == (8, 5)  # E1-E8; E9 began in February
    want = {
        "referralToScheduled": _figure(5, 104_400, 259_200),  # E2 E5 E6 E3 E1
        "referralToExam": _figure(5, 104_400, 259_800),
        "scheduledToPerformed": _figure(5, 300, 600),  # 0 0 300 600 600
        "examDuration": _figure(6, 600, 3000),  # 30 40 600 1200 1200 3000
        "examEndToArchive": _figure(4, 600, 900),  # 90 600 600 900
        "archiveToReport": _figure(3, 64_500, 84_000),
        "examToReport": _figure(4, 3570, 84_600),  # 3560 3570 65400 84600
    }
    for name, figure in want.items():
        got = {k: body[name][k] for k in ("n", "p50", "p90") if k in body[name]}
        assert got == figure, name
    duration = body["examDuration"]
    assert duration["byModality"] == {"CT": _figure(3, 40, 1200), "MR": _figure(2, 1200, 3000),
                                      "US": _figure(1, 600, 600)}
    assert duration["byDepartment"] == {
        "": _figure(1, 600, 600), "Emergency": _figure(1, 30, 30),
        "Neuro": _figure(2, 1200, 3000), "Radiology": _figure(2, 40, 1200)}
    assert body["scheduledToPerformed"]["byDepartment"]["Radiology"] == _figure(3, 600, 600)
    assert body["acquisitionToArchive"]["n"] == 0  # no instance went through the workers


def test_chain_filters(chain_api: RunningAPI) -> None:
    neuro = _stats(chain_api, "leadtimes", include="department:Neuro")
    assert neuro["exams"] == 2 and neuro["examDuration"]["n"] == 2
    assert (neuro["examDuration"]["p50"], neuro["examDuration"]["p90"]) == (1200, 3000)
    assert neuro["acquisitionToArchive"] is None  # kept by modality only
    ct = _stats(chain_api, "leadtimes", include=["modality:CT"],
                exclude=["department:Emergency"])
    assert ct["exams"] == 4  # E1 E3 E5 E8
    assert ct["examDuration"] == {**_figure(2, 40, 1200), "byModality": {
        "CT": _figure(2, 40, 1200)}, "byDepartment": {"Radiology": _figure(2, 40, 1200)}}
    assert ct["acquisitionToArchive"] is None  # a department filter
    only_ct = _stats(chain_api, "leadtimes", include="modality:CT")
    assert only_ct["exams"] == 5  # and E6
    assert only_ct["acquisitionToArchive"] == {"n": 0, "byModality": {},
                                               "relativeResolution": 0.0054}
    unknown = _stats(chain_api, "leadtimes", include="department:")  # E4: no department
    assert unknown["exams"] == 1 and unknown["examDuration"]["p50"] == 600
    for bad, says in (({"include": "station:CT1"}, "filtered by modality and department"),
                      ({"exclude": "colour:red"}, "dimension one of")):
        r = chain_api.client().get("/api/v1/stats/leadtimes", params={**MARCH, **bad})
        assert r.status_code == 422 and says in r.json()["detail"], r.text
    april = _stats(chain_api, "leadtimes", **{"from": "2026-04-01", "to": "2026-04-30"})
    assert april["exams"] == 0 and april["examDuration"] == {
        "n": 0, "byModality": {}, "byDepartment": {}}


def test_workflow_quality_rules(chain_api: RunningAPI) -> None:
    rules = {r["rule"]: r for r in _stats(chain_api, "quality")["rules"]}
    found = {name: (rules[name]["count"], rules[name]["examples"]) for name in (
        "order_not_performed", "mpps_completed_without_images", "images_without_mpps",
        "short_mpps_exam", "report_missing", "patient_merge", "short_ct_mr_exam")}
    e3_step = rules["mpps_completed_without_images"]["examples"][0]
    assert e3_step.startswith(f"{S}.3.pps")
    assert found == {
        "order_not_performed": (1, ["ACC10"]),
        "mpps_completed_without_images": (1, [e3_step]),  # E4's series is archived
        "images_without_mpps": (1, [f"{S}.6"]),  # not E7 (MR9), not E8 (before)
        "short_mpps_exam": (1, [f"{S}.3"]),
        "report_missing": (1, ["ACC2"]),  # E5 has not ended
        "patient_merge": (1, ["OLD1 -> P1"]),
        "short_ct_mr_exam": (1, [f"{S}.6"]),
    }


def test_report_missing_days_is_a_setting(module_backend: Backend,
                                          chain_api: RunningAPI) -> None:
    """With VNA_REPORT_MISSING_DAYS longer than E2 is old, its report is not missing yet."""
    days = (datetime.now(UTC) - T0).days + 2
    api = start_api(module_backend, VNA_REPORT_MISSING_DAYS=str(days))
    try:
        rules = {r["rule"]: r for r in _stats(api, "quality")["rules"]}
        assert rules["report_missing"]["count"] == 0
        assert f"{days} days" in rules["report_missing"]["description"]
    finally:
        stop_api(api)


def test_orders_export(chain_api: RunningAPI) -> None:
    import csv
    import io

    import pyarrow.parquet as pq

    r = chain_api.client().get("/api/v1/stats/export", params={**MARCH, "dataset": "orders"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = {row["accession_number"]: row for row in csv.DictReader(io.StringIO(r.text))}
    assert sorted(rows) == ["ACC1", "ACC10", "ACC12", "ACC2", "ACC3", "ACC5", "ACC6"]
    iso = lambda t: t.isoformat()  # noqa: E731
    assert {k: rows["ACC1"][k] for k in (
        "modality", "department", "status", "referral_at", "placed_at", "scheduled_at",
        "mpps_started_at", "mpps_ended_at", "mpps_status", "first_image_received_at",
        "last_image_received_at", "reported_at")} == {
        "modality": "CT", "department": "Radiology", "status": "COMPLETED",
        "referral_at": iso(T0 - 3 * DAY), "placed_at": iso(T0 - 3 * DAY + HOUR),
        "scheduled_at": iso(T0), "mpps_started_at": iso(T0 + 10 * MIN),
        "mpps_ended_at": iso(T0 + 30 * MIN), "mpps_status": "COMPLETED",
        "first_image_received_at": iso(T0 + 35 * MIN),
        "last_image_received_at": iso(T0 + 40 * MIN), "reported_at": iso(T0 + DAY)}
    assert (rows["ACC2"]["mpps_status"], rows["ACC2"]["mpps_started_at"]) == (
        "COMPLETED", iso(T0 + 50 * MIN))  # the DISCONTINUED step came first
    assert rows["ACC3"]["mpps_ended_at"] == iso(T0 + 2 * HOUR + timedelta(seconds=40))
    assert rows["ACC5"]["mpps_status"] == "IN PROGRESS"
    assert rows["ACC10"]["mpps_status"] == rows["ACC10"]["reported_at"] == ""
    assert len({row["patient_key"] for row in rows.values()}) == 1
    assert not any("patient_id" in k or "name" in k for k in next(iter(rows.values())))
    r = chain_api.client().get("/api/v1/stats/export", params={
        **MARCH, "dataset": "orders", "format": "parquet"})
    assert r.status_code == 200
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == 7
    assert str(table.schema.field("mpps_started_at").type) == "timestamp[us, tz=UTC]"


def test_stats_refused_without_the_role(chain_api: RunningAPI) -> None:
    for role in ("viewer", "scheduler"):
        client = chain_api.client(chain_api.token(role))
        for path in ("leadtimes", "quality", "export?dataset=orders"):
            assert client.get(f"/api/v1/stats/{path}").status_code == 403, (role, path)
    assert chain_api.client(None).get("/api/v1/stats/leadtimes").status_code == 401


def test_dashboard_draws_the_chain(chain_api: RunningAPI, tmp_path: Path) -> None:
    """Headless Chromium draws the chain as one chart: median and p90 of each step."""
    import json
    import re
    import shutil
    import subprocess

    from tests.api_client import ADMIN_TOKEN

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is not installed (apt-get install chromium)")
    rendered = {}
    for fragment in ("", "&include=modality:MR", "&include=station:X"):
        url = (f"{chain_api.url}/dashboard#token={ADMIN_TOKEN}&from=2026-03-01"
               f"&to=2026-03-31{fragment}")
        out = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=20000",
             "--dump-dom", url], capture_output=True, text=True, timeout=120)
        m = re.search(r'data-rendered="([^"]+)"', out.stdout)
        assert m, ("dashboard did not render", out.stderr[-2000:])
        rendered[fragment] = json.loads(m.group(1).replace("&quot;", '"'))
    assert rendered[""]["chain"] == [
        ["referral → scheduled", 5, 104_400, 259_200],
        ["scheduled → exam start", 5, 300, 600], ["exam start → end", 6, 600, 3000],
        ["exam end → archived", 4, 600, 900], ["archived → report", 3, 64_500, 84_000]]
    assert rendered["&include=modality:MR"]["chain"][2] == ["exam start → end", 2, 1200, 3000]
    # a filter lead times do not take leaves the chain empty, the other charts drawn
    assert [n for _, n, _, _ in rendered["&include=station:X"]["chain"]] == [0] * 5
    assert rendered["&include=station:X"]["charts"] == 5
