"""Routes of the statistics API (SPEC "Statistics"): summary, volumes, workload, throughput,
storage, lead times, data quality, and the fact tables' export.

Read from the hourly rollup the workers keep (`storage/index/stats.py`, one read
transaction per answer); definitions, periods, bucketing and the quality rules in
`vna/stats.py`, `vna/leadtimes.py` and `vna/quality.py`; the answers' shapes in
`schemas.py`. For admins: these are the controllers' numbers.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query
from starlette.responses import Response, StreamingResponse

from services.xds_api.deps import IndexDep, SettingsDep, StatsDep
from services.xds_api.schemas import (
    ArrivalsOut,
    Counted,
    DepartmentCounts,
    FindingOut,
    Freshness,
    LeadTime,
    LeadTimes,
    Quality,
    StatsSummary,
    StorageOut,
    ThroughputOut,
    VolumePoint,
    Volumes,
    VolumeSeries,
    Workload,
)
from services.xds_api.security import authorize
from storage.index.db import Index
from storage.index.export import Dataset, to_csv, to_parquet
from storage.index.stats import Totals
from storage.outbox import lag
from vna.access import Action, Principal
from vna.leadtimes import (
    arrival_summary,
    chain,
    check_exam_filters,
    filter_arrivals,
    filter_exams,
)
from vna.quality import findings
from vna.settings import Settings
from vna.stats import (
    Dimension,
    Filters,
    Interval,
    InvalidStatsQuery,
    Period,
    storage_growth,
    throughput,
    volume_series,
    workload_matrix,
)

router = APIRouter(prefix="/api/v1/stats", tags=["statistics"])

From = Annotated[date | None, Query(alias="from", description="first day (local), inclusive")]
To = Annotated[date | None, Query(alias="to", description="last day (local), inclusive")]
Include = Annotated[list[str], Query(description="dimension:value, repeatable")]
Kind = Annotated[Literal["instance", "document"] | None,
                 Query(description="instances or documents only")]


View = Annotated[Literal["live", "nightly"], Query(
    description="live: today so far included; nightly: the snapshot up to last midnight")]


# Who may read statistics: every route here declares it first (it opens the audit record).
StatsActor = Annotated[Principal, authorize(Action.STATS_READ)]


def _query(settings: Settings, first: date | None, last: date | None, view: str,
           include: list[str], exclude: list[str]) -> tuple[Period, Filters, ZoneInfo]:
    tz = ZoneInfo(settings.timezone)
    try:
        return (Period.of(first, last, tz, nightly=view == "nightly"),
                Filters.parse(include, exclude), tz)
    except InvalidStatsQuery as exc:
        raise HTTPException(422, str(exc)) from None


def _freshness(index: Index) -> Freshness:
    pending, age = lag(index)
    return Freshness(pendingEvents=pending, lagSeconds=round(age, 1))


@router.get("/summary", response_model=StatsSummary)
def summary(_: StatsActor, settings: SettingsDep, index: IndexDep, stats: StatsDep,
            first: From = None, last: To = None, view: View = "live",
            include: Include = [], exclude: Include = []) -> StatsSummary:  # noqa: B006
    """Patients, studies, series, instances, documents and bytes in the period, and the
    same by modality and by department."""
    period, filters, _tz = _query(settings, first, last, view, include, exclude)
    s = stats.summary(period, filters)
    instances, instance_bytes = s.totals.get(("instance", ""), (0, 0))
    documents, document_bytes = s.totals.get(("document", ""), (0, 0))
    return StatsSummary(
        from_=period.start.date(),
        to=date.fromordinal(period.end.date().toordinal() - 1),
        patients=s.patients, studies=s.studies, series=s.series,
        instances=instances, documents=documents,
        bytes=instance_bytes + document_bytes,
        byModality={k: Counted(instances=c, bytes=b)
                    for (kind, k), (c, b) in sorted(s.by_modality.items())
                    if kind == "instance"},
        byDepartment=_by_department(s.by_department),
        freshness=_freshness(index),
    )


def _by_department(rows: Totals) -> dict[str, DepartmentCounts]:
    out: dict[str, DepartmentCounts] = {}
    for (kind, dept), (count, size) in sorted(rows.items()):
        d = out.setdefault(dept, DepartmentCounts())
        if kind == "instance":
            d.instances += count
        else:
            d.documents += count
        d.bytes += size
    return out


@router.get("/volumes", response_model=Volumes)
def volumes(_: StatsActor, settings: SettingsDep, index: IndexDep, stats: StatsDep,
            first: From = None, last: To = None, view: View = "live",
            interval: Interval = Interval.DAY,
            dimension: Dimension = Dimension.MODALITY, kind: Kind = None,
            include: Include = [], exclude: Include = []) -> Volumes:  # noqa: B006
    """Counts and bytes per interval (local time) for each value of a dimension."""
    period, filters, tz = _query(settings, first, last, view, include, exclude)
    series = volume_series(stats.volumes(period, filters, dimension, kind), interval, tz)
    iso = {t: t.isoformat() for points in series.values() for t in points}  # once per start
    out: list[VolumeSeries] = []
    for key, points in sorted(series.items()):
        # A year by the hour is tens of thousands of points: typed here (mypy), they need no
        # second check one by one at run time (model_construct).
        typed: list[VolumePoint] = [{"start": iso[t], "count": p.count, "bytes": p.bytes}
                                    for t, p in sorted(points.items())]
        out.append(VolumeSeries.model_construct(
            key=key, total=sum(p.count for p in points.values()), points=typed))
    return Volumes(interval=interval, dimension=dimension, timezone=str(tz), series=out,
                   freshness=_freshness(index))


WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


@router.get("/workload", response_model=Workload)
def workload(_: StatsActor, settings: SettingsDep, index: IndexDep, stats: StatsDep,
             first: From = None, last: To = None, view: View = "live", kind: Kind = None,
             include: Include = [], exclude: Include = []) -> Workload:  # noqa: B006
    """Weekday x hour of day (local time): when the archive receives the most."""
    period, filters, tz = _query(settings, first, last, view, include, exclude)
    rows = stats.workload(period, filters, kind)
    return Workload(timezone=str(tz), weekdays=WEEKDAYS, matrix=workload_matrix(rows, tz),
                    freshness=_freshness(index))


@router.get("/throughput", response_model=ThroughputOut)
def ingest_throughput(_: StatsActor, settings: SettingsDep, index: IndexDep,
                      stats: StatsDep, first: From = None, last: To = None,
                      view: View = "live", kind: Kind = "instance",
                      include: Include = [], exclude: Include = []  # noqa: B006
                      ) -> ThroughputOut:
    """Ingest rates (per second, over the hours with ingest), the peak hour, per source AE,
    and the workers' backlog (outbox lag)."""
    period, filters, _tz = _query(settings, first, last, view, include, exclude)
    rows = stats.volumes(period, filters, Dimension.SOURCE_AE, kind)
    return ThroughputOut.of(throughput(rows), outbox=_freshness(index))


@router.get("/storage", response_model=StorageOut)
def storage(_: StatsActor, settings: SettingsDep, stats: StatsDep,
            first: From = None, last: To = None, view: View = "live",
            interval: Interval = Interval.MONTH,
            dimension: Dimension = Dimension.DEPARTMENT, kind: Kind = None,
            include: Include = [], exclude: Include = []) -> StorageOut:  # noqa: B006
    """Bytes added and stored in all, per interval and dimension value, and a linear
    forecast of the total for the next six intervals."""
    period, filters, tz = _query(settings, first, last, view, include, exclude)
    rows, before = stats.growth(period, filters, dimension, kind)
    return StorageOut.of(storage_growth(rows, interval, tz, before), interval=interval,
                         dimension=dimension, timezone=str(tz))


@router.get("/export", response_class=Response,
            responses={200: {"content": {"text/csv": {},
                                         "application/vnd.apache.parquet": {}}}})
def export(_: StatsActor, settings: SettingsDep, index: IndexDep,
           dataset: Dataset = Dataset.INSTANCES, format: Literal["csv", "parquet"] = "csv",
           first: From = None, last: To = None, view: View = "live") -> Response:
    """The fact table of studies, instances, documents or orders in the period, one row per
    fact, as CSV (streamed) or Parquet; no patient identity in it."""
    period, _filters, _tz = _query(settings, first, last, view, [], [])
    name = f"vna-{dataset}-{period.start.date()}-{(period.end.date())}"
    if format == "parquet":
        body = to_parquet(index, dataset, period)
        return Response(body, media_type="application/vnd.apache.parquet", headers={
            "Content-Disposition": f'attachment; filename="{name}.parquet"'})
    return StreamingResponse(to_csv(index, dataset, period), media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{name}.csv"'})


@router.get("/leadtimes", response_model=LeadTimes)
def leadtimes(_: StatsActor, settings: SettingsDep, index: IndexDep, stats: StatsDep,
              first: From = None, last: To = None, view: View = "live",
              include: Include = [], exclude: Include = []) -> LeadTimes:  # noqa: B006
    """p50/p90 in seconds, overall, by modality and by department: acquisition to archive
    (per instance, from the delay histogram: exact to the second below two minutes, within
    0.55 % above; by modality only) and the chain of each exam from referral to report
    (orders, MPPS, the images' procedure step where there is no MPPS, reports)."""
    period, filters, _tz = _query(settings, first, last, view, include, exclude)
    try:
        check_exam_filters(filters)
    except InvalidStatsQuery as exc:
        raise HTTPException(422, str(exc)) from None
    histograms, all_exams = stats.leadtimes(period)
    arrivals = filter_arrivals(histograms, filters)
    exams = filter_exams(all_exams, filters)
    steps = {name: LeadTime.of(d) for name, d in chain(exams).items()}
    return LeadTimes(
        acquisitionToArchive=None if arrivals is None else ArrivalsOut.of(
            arrival_summary(arrivals)),
        **steps, exams=len(exams), examsWithMpps=int(exams.by_mpps.sum()),
        freshness=_freshness(index))


@router.get("/quality", response_model=Quality)
def quality(_: StatsActor, settings: SettingsDep, index: IndexDep, stats: StatsDep,
            first: From = None, last: To = None, view: View = "live") -> Quality:
    """Data-quality findings of the period, by rule: how many, and up to ten examples."""
    period, _filters, _tz = _query(settings, first, last, view, [], [])
    facts = stats.quality(period, settings.report_missing_days)
    return Quality(rules=[FindingOut.of(f) for f in findings(facts)],
                   freshness=_freshness(index))
