"""Routes of the statistics API (SPEC "Statistics"): summary, volumes, workload, throughput,
storage, lead times, data quality, and the fact tables' export.

Read from the hourly rollup the workers keep (`storage/index/stats.py`); definitions,
periods and bucketing in `vna/stats.py`. For admins: these are the controllers' numbers.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.responses import Response, StreamingResponse

from services.xds_api.security import authorize
from storage.index import stats as queries
from storage.index.export import Dataset, to_csv, to_parquet
from storage.outbox import lag
from vna.access import Action, Principal
from vna.leadtimes import arrival_summary
from vna.quality import (
    SHORT_EXAM_MODALITIES,
    SHORT_EXAM_SECONDS,
    looks_like_personnummer,
    percentiles,
    valid_personnummer,
)
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


def _query(request: Request, first: date | None, last: date | None, view: str,
           include: list[str], exclude: list[str]) -> tuple[Period, Filters, ZoneInfo]:
    tz = ZoneInfo(request.app.state.settings.timezone)
    try:
        return (Period.of(first, last, tz, nightly=view == "nightly"),
                Filters.parse(include, exclude), tz)
    except InvalidStatsQuery as exc:
        raise HTTPException(422, str(exc)) from None


def _freshness(request: Request) -> dict[str, Any]:
    pending, age = lag(request.app.state.index)
    return {"pendingEvents": pending, "lagSeconds": round(age, 1)}


@router.get("/summary")
def summary(request: Request, _: Principal = authorize(Action.STATS_READ),
            first: From = None, last: To = None, view: View = "live",
            include: Include = [], exclude: Include = []) -> Any:  # noqa: B006
    """Patients, studies, series, instances, documents and bytes in the period, and the
    same by modality and by department."""
    period, filters, _tz = _query(request, first, last, view, include, exclude)
    with request.app.state.index.read_session() as s:
        patients, studies, series = queries.study_counts(s, period)
        totals = queries.totals_by(s, period, filters, None)
        by_modality = queries.totals_by(s, period, filters, Dimension.MODALITY)
        by_department = queries.totals_by(s, period, filters, Dimension.DEPARTMENT)
    instances, instance_bytes = totals.get(("instance", ""), (0, 0))
    documents, document_bytes = totals.get(("document", ""), (0, 0))
    return {
        "from": period.start.date(),
        "to": date.fromordinal(period.end.date().toordinal() - 1),
        "patients": patients, "studies": studies, "series": series,
        "instances": instances, "documents": documents,
        "bytes": instance_bytes + document_bytes,
        "byModality": {k: {"instances": c, "bytes": b}
                       for (kind, k), (c, b) in sorted(by_modality.items())
                       if kind == "instance"},
        "byDepartment": _by_department(by_department),
        "freshness": _freshness(request),
    }


def _by_department(rows: dict[tuple[str, str], tuple[int, int]]) -> dict[str, Any]:
    out: dict[str, dict[str, int]] = {}
    for (kind, dept), (count, size) in sorted(rows.items()):
        d = out.setdefault(dept, {"instances": 0, "documents": 0, "bytes": 0})
        d["instances" if kind == "instance" else "documents"] += count
        d["bytes"] += size
    return out


@router.get("/volumes")
def volumes(request: Request, _: Principal = authorize(Action.STATS_READ),
            first: From = None, last: To = None, view: View = "live",
            interval: Interval = Interval.DAY,
            dimension: Dimension = Dimension.MODALITY, kind: Kind = None,
            include: Include = [], exclude: Include = []) -> Any:  # noqa: B006
    """Counts and bytes per interval (local time) for each value of a dimension."""
    period, filters, tz = _query(request, first, last, view, include, exclude)
    with request.app.state.index.read_session() as s:
        rows = queries.volume_rows(s, period, filters, dimension, kind)
    series = volume_series(rows, interval, tz)
    return {
        "interval": interval, "dimension": dimension, "timezone": str(tz),
        "series": [{"key": key, "total": sum(p.count for p in points.values()),
                    "points": [{"start": t.isoformat(), "count": p.count, "bytes": p.bytes}
                               for t, p in sorted(points.items())]}
                   for key, points in sorted(series.items())],
        "freshness": _freshness(request),
    }


@router.get("/workload")
def workload(request: Request, _: Principal = authorize(Action.STATS_READ),
             first: From = None, last: To = None, view: View = "live", kind: Kind = None,
             include: Include = [], exclude: Include = []) -> Any:  # noqa: B006
    """Weekday x hour of day (local time): when the archive receives the most."""
    period, filters, tz = _query(request, first, last, view, include, exclude)
    with request.app.state.index.read_session() as s:
        rows = queries.workload_rows(s, period, filters, kind)
    return {"timezone": str(tz),
            "weekdays": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
            "matrix": workload_matrix(rows, tz), "freshness": _freshness(request)}


@router.get("/throughput")
def ingest_throughput(request: Request, _: Principal = authorize(Action.STATS_READ),
                      first: From = None, last: To = None, view: View = "live",
                      kind: Kind = "instance",
                      include: Include = [], exclude: Include = []) -> Any:  # noqa: B006
    """Ingest rates (per second, over the hours with ingest), the peak hour, per source AE,
    and the workers' backlog (outbox lag)."""
    period, filters, _tz = _query(request, first, last, view, include, exclude)
    with request.app.state.index.read_session() as s:
        rows = queries.volume_rows(s, period, filters, Dimension.SOURCE_AE, kind)
    return {**throughput(rows), "outbox": _freshness(request)}


@router.get("/storage")
def storage(request: Request, _: Principal = authorize(Action.STATS_READ),
            first: From = None, last: To = None, view: View = "live",
            interval: Interval = Interval.MONTH,
            dimension: Dimension = Dimension.DEPARTMENT, kind: Kind = None,
            include: Include = [], exclude: Include = []) -> Any:  # noqa: B006
    """Bytes added and stored in all, per interval and dimension value, and a linear
    forecast of the total for the next six intervals."""
    period, filters, tz = _query(request, first, last, view, include, exclude)
    with request.app.state.index.read_session() as s:
        rows = queries.volume_rows(s, period, filters, dimension, kind)
        before = queries.bytes_before(s, period, filters, dimension, kind)
    return {"interval": interval, "dimension": dimension, "timezone": str(tz),
            **storage_growth(rows, interval, tz, before)}


@router.get("/export", response_class=Response,
            responses={200: {"content": {"text/csv": {},
                                         "application/vnd.apache.parquet": {}}}})
def export(request: Request, _: Principal = authorize(Action.STATS_READ),
           dataset: Dataset = Dataset.INSTANCES, format: Literal["csv", "parquet"] = "csv",
           first: From = None, last: To = None, view: View = "live") -> Response:
    """The fact table of studies, instances or documents in the period, one row per fact,
    as CSV (streamed) or Parquet; no patient identity in it."""
    period, _filters, _tz = _query(request, first, last, view, [], [])
    index = request.app.state.index
    name = f"vna-{dataset}-{period.start.date()}-{(period.end.date())}"
    if format == "parquet":
        body = to_parquet(index, dataset, period)
        return Response(body, media_type="application/vnd.apache.parquet", headers={
            "Content-Disposition": f'attachment; filename="{name}.parquet"'})
    return StreamingResponse(to_csv(index, dataset, period), media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{name}.csv"'})


@router.get("/leadtimes")
def leadtimes(request: Request, _: Principal = authorize(Action.STATS_READ),
              first: From = None, last: To = None, view: View = "live") -> Any:
    """p50/p90 in seconds: acquisition to archive (per instance, from the delay histogram:
    exact to the second below two minutes, within 0.55 % above), exam duration (first
    performed procedure step start to last end, per study); overall and by modality."""
    period, _filters, _tz = _query(request, first, last, view, [], [])
    with request.app.state.index.read_session() as s:
        arrivals = queries.arrival_histograms(s, period)
        exams = queries.exam_durations(s, period)
    return {
        "acquisitionToArchive": arrival_summary(arrivals),
        "examDuration": _distribution(exams),
        # Needs the scheduled time, which comes with Modality Worklist (on the roadmap).
        "scheduledToPerformed": None,
        "freshness": _freshness(request),
    }


def _distribution(rows: list[tuple[str, str | None, float]]) -> dict[str, Any]:
    by_modality: dict[str, list[float]] = {}
    for _uid, modality, seconds in rows:
        by_modality.setdefault(modality or "", []).append(seconds)
    return {"n": len(rows), **percentiles([r[2] for r in rows]),
            "byModality": {m: {"n": len(v), **percentiles(v)}
                           for m, v in sorted(by_modality.items())}}


@router.get("/quality")
def quality(request: Request, _: Principal = authorize(Action.STATS_READ),
            first: From = None, last: To = None, view: View = "live") -> Any:
    """Data-quality findings of the period, by rule: how many, and up to ten examples."""
    period, _filters, _tz = _query(request, first, last, view, [], [])
    with request.app.state.index.read_session() as s:
        exams = queries.exam_durations(s, period)
        late = queries.late_arrivals(s, period)
        no_referrer = queries.studies_missing(s, period, "referring_physician_name")
        no_accession = queries.studies_missing(s, period, "accession_number")
        ids = queries.patient_ids(s, period)
        several_names = queries.ids_with_several_names(s, period)
        patient_conflicts = queries.ingest_conflicts(s, period, "patient_conflict")
        uid_conflicts = queries.ingest_conflicts(s, period, "uid_conflict")
    short = [uid for uid, modality, seconds in exams
             if modality in SHORT_EXAM_MODALITIES and seconds < SHORT_EXAM_SECONDS]
    invalid = [pid for pid in ids if looks_like_personnummer(pid)
               and not valid_personnummer(pid)]
    rules = [
        ("short_ct_mr_exam", f"CT/MR exam under {SHORT_EXAM_SECONDS} s from performed "
                             f"procedure step start to end", len(short), short[:10]),
        ("missing_referrer", "study without ReferringPhysicianName", *no_referrer),
        ("missing_accession_number", "study without AccessionNumber", *no_accession),
        ("invalid_personnummer", "patient ID shaped like a Swedish personnummer or "
                                 "samordningsnummer whose check digit or date is wrong",
         len(invalid), invalid[:10]),
        ("several_names", "one patient ID with several patient names", *several_names),
        ("late_arrival", "instance archived more than 24 h after it was acquired", *late),
        ("patient_conflict", "instance of a study (or SOP Instance) the archive holds for "
                             "another patient: refused, or filed under its own patient "
                             "(VNA_PATIENT_CONFLICT); examples are the studies",
         *patient_conflicts),
        ("uid_conflict", "SOP Instance UID archived with other content or in another "
                         "series or study, or a series archived in another study: refused; "
                         "examples are the studies sent", *uid_conflicts),
    ]
    return {"rules": [{"rule": r, "description": d, "count": n, "examples": ex}
                      for r, d, n, ex in rules], "freshness": _freshness(request)}
