"""The one place statistics queries are built: the hourly rollup (`stats_hourly`) that the
workers add to, and what the stats API and /metrics read from it and from the index
(`StatsReader`: each answer from one read transaction)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, not_, or_, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from storage.index.db import Index, dialect_insert
from storage.index.models import (
    LATE_ARRIVAL_SQL,
    STATS_DIMENSIONS,
    Document,
    IngestConflict,
    Instance,
    InstanceFact,
    Series,
    StatsArrivalHourly,
    StatsHourly,
    Study,
    StudyFact,
)
from vna.leadtimes import arrival_bin
from vna.quality import QualityFacts
from vna.stats import Dimension, Filters, Period


def utc_hour(t: datetime) -> datetime:
    """The UTC hour a time falls in: the rollups' bucket."""
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class RollupKey:
    """One counted thing: its hour (UTC), kind, a field for each of `STATS_DIMENSIONS`
    (read by name; '' = unknown) and size."""

    hour: datetime
    kind: str
    modality: str
    department: str
    referrer: str
    source_ae: str
    station: str
    body_part: str
    document_class: str
    size: int

    @classmethod
    def of_instance(cls, row: Any) -> RollupKey:
        return cls(utc_hour(row.received_at), "instance", row.modality or "",
                   row.institutional_department_name or "",
                   row.referring_physician_name or "", row.source_aet or "",
                   row.station_name or "", row.body_part_examined or "", "", int(row.size))

    @classmethod
    def of_document(cls, row: Any) -> RollupKey:
        return cls(utc_hour(row.submission_time), "document", "", row.practice_setting_code,
                   "", "", "", "", row.class_code, int(row.size))


def instance_dimensions(sop_instance_uids: list[str]) -> Any:
    return (select(Instance.sop_instance_uid, Instance.storage_key, Instance.received_at,
                   Instance.size,
                   Instance.source_aet, Series.modality, Series.institutional_department_name,
                   Series.station_name, Series.body_part_examined,
                   Study.referring_physician_name)
            .join(Series, Instance.series_fk == Series.id)
            .join(Study, Series.study_fk == Study.id)
            .where(Instance.sop_instance_uid.in_(sop_instance_uids)))


def document_dimensions(unique_ids: list[str]) -> Any:
    return select(Document.unique_id, Document.storage_key, Document.mime_type,
                  Document.submission_time, Document.size, Document.practice_setting_code,
                  Document.class_code).where(
        Document.unique_id.in_(unique_ids))


_KEY_COLUMNS = ("hour", "kind", *STATS_DIMENSIONS)


def add_to_rollup(conn: Connection, keys: Iterable[RollupKey]) -> None:
    """Add counts and bytes to the rollup, in the caller's transaction."""
    totals: Counter[tuple[Any, ...]] = Counter()
    sizes: Counter[tuple[Any, ...]] = Counter()
    for k in keys:
        key = tuple(getattr(k, column) for column in _KEY_COLUMNS)
        totals[key] += 1
        sizes[key] += k.size
    if not totals:
        return
    for key, count in totals.items():
        values = dict(zip(_KEY_COLUMNS, key, strict=True))
        stmt = dialect_insert(conn)(StatsHourly).values(**values, count=count, bytes=sizes[key])
        conn.execute(stmt.on_conflict_do_update(
            index_elements=list(_KEY_COLUMNS),
            set_={"count": StatsHourly.count + stmt.excluded.count,
                  "bytes": StatsHourly.bytes + stmt.excluded.bytes}))


def add_arrivals_to_rollup(conn: Connection, facts: Iterable[dict[str, Any]]) -> None:
    """Count instances' arrival delays (`instance_fact` values) into the hourly histogram,
    in the caller's transaction."""
    counts: Counter[tuple[datetime, str, int]] = Counter()
    for fact in facts:
        if fact["arrival_seconds"] is not None:
            counts[(utc_hour(fact["received_at"]), fact["modality"] or "",
                    arrival_bin(fact["arrival_seconds"]))] += 1
    for (hour, modality, b), n in counts.items():
        stmt = dialect_insert(conn)(StatsArrivalHourly).values(
            hour=hour, modality=modality, bin=b, count=n)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["hour", "modality", "bin"],
            set_={"count": StatsArrivalHourly.count + stmt.excluded.count}))


def _merged(old: Any, new: Any, *, keep_earlier: bool) -> Any:
    """The earlier (or later) of two times, either of which may be NULL."""
    better = new < old if keep_earlier else new > old
    return case((old.is_(None), new), (new.is_(None), old), (better, new), else_=old)


def merge_study_facts(conn: Connection, facts: Iterable[dict[str, Any]]) -> None:
    """Merge instances' facts (`instance_fact` values) into their studies' `study_fact`:
    first arrival, earliest procedure step start, latest end, the patient's name and
    whether another one was seen; one upsert per instance, so the merge rule is written once,
    here. Merging an instance twice changes nothing."""
    for f in facts:
        stmt = dialect_insert(conn)(StudyFact).values(
            study_instance_uid=f["study_instance_uid"], modality=f["modality"],
            first_received_at=f["received_at"], pps_start=f["pps_start"],
            pps_end=f["pps_end"], patient_id=f["patient_id"],
            patient_name=f["patient_name"], several_names=False)
        new = stmt.excluded
        conn.execute(stmt.on_conflict_do_update(index_elements=["study_instance_uid"], set_={
            "modality": func.coalesce(StudyFact.modality, new.modality),
            "first_received_at": _merged(StudyFact.first_received_at,
                                         new.first_received_at, keep_earlier=True),
            "pps_start": _merged(StudyFact.pps_start, new.pps_start, keep_earlier=True),
            "pps_end": _merged(StudyFact.pps_end, new.pps_end, keep_earlier=False),
            "patient_name": func.coalesce(StudyFact.patient_name, new.patient_name),
            "several_names": or_(StudyFact.several_names, and_(
                StudyFact.patient_name.isnot(None), new.patient_name.isnot(None),
                StudyFact.patient_name != new.patient_name))}))


def _filtered(stmt: Any, period: Period, filters: Filters, kind: str | None) -> Any:
    stmt = stmt.where(StatsHourly.hour >= period.start.astimezone(UTC),
                      StatsHourly.hour < period.end.astimezone(UTC))
    if kind:
        stmt = stmt.where(StatsHourly.kind == kind)
    for dim, values in filters.include.items():
        stmt = stmt.where(getattr(StatsHourly, dim.value).in_(sorted(values)))
    for dim, values in filters.exclude.items():
        stmt = stmt.where(not_(getattr(StatsHourly, dim.value).in_(sorted(values))))
    return stmt


def volume_rows(session: Session, period: Period, filters: Filters, dimension: Dimension,
                kind: str | None) -> list[tuple[datetime, str, int, int]]:
    """(hour, dimension value, count, bytes) in the period."""
    col = getattr(StatsHourly, dimension.value)
    stmt = _filtered(select(StatsHourly.hour, col, func.sum(StatsHourly.count),
                            func.sum(StatsHourly.bytes)), period, filters, kind)
    stmt = stmt.group_by(StatsHourly.hour, col).order_by(StatsHourly.hour)
    return [(h, k, int(c), int(b)) for h, k, c, b in session.execute(stmt)]


def bytes_before(session: Session, period: Period, filters: Filters, dimension: Dimension,
                 kind: str | None) -> dict[str, int]:
    """Bytes stored before the period, by dimension value: where cumulated series start."""
    col = getattr(StatsHourly, dimension.value)
    early = Period(datetime(1900, 1, 1, tzinfo=UTC), period.start, period.tz)
    stmt = _filtered(select(col, func.sum(StatsHourly.bytes)), early, filters,
                     kind).group_by(col)
    return {k: int(b) for k, b in session.execute(stmt)}


def workload_rows(session: Session, period: Period, filters: Filters,
                  kind: str | None) -> list[tuple[datetime, int]]:
    stmt = _filtered(select(StatsHourly.hour, func.sum(StatsHourly.count)), period, filters,
                     kind).group_by(StatsHourly.hour)
    return [(h, int(c)) for h, c in session.execute(stmt)]


def totals_by(session: Session, period: Period, filters: Filters,
              dimension: Dimension | None) -> dict[tuple[str, str], tuple[int, int]]:
    """(kind, dimension value) -> (count, bytes); the value is '' without a dimension."""
    col = getattr(StatsHourly, dimension.value) if dimension else None
    cols: list[Any] = [StatsHourly.kind] + ([col] if col is not None else [])
    stmt = _filtered(select(*cols, func.sum(StatsHourly.count), func.sum(StatsHourly.bytes)),
                     period, filters, None).group_by(*cols)
    out = {}
    for row in session.execute(stmt):
        kind, value = row[0], (row[1] if col is not None else "")
        out[(kind, value)] = (int(row[-2]), int(row[-1]))
    return out


def study_counts(session: Session, period: Period) -> tuple[int, int, int]:
    """(patients, studies, series) whose studies first arrived in the period."""
    in_period = and_(Study.created_at >= period.start.astimezone(UTC),
                     Study.created_at < period.end.astimezone(UTC))
    studies, patients = session.execute(
        select(func.count(Study.id), func.count(func.distinct(Study.patient_fk)))
        .where(in_period)).one()
    series = session.scalar(select(func.count(Series.id)).join(
        Study, Series.study_fk == Study.id).where(in_period)) or 0
    return int(patients), int(studies), int(series)



# -- lead times and data quality (from instance_fact and the index) -----------------------

def _in_period(col: Any, period: Period) -> Any:
    return and_(col >= period.start.astimezone(UTC), col < period.end.astimezone(UTC))


def arrival_histograms(session: Session, period: Period) -> dict[str, Counter[int]]:
    """Modality -> arrival-delay histogram (bin -> count) of the instances received in the
    period, from the hourly rollup."""
    stmt = (select(StatsArrivalHourly.modality, StatsArrivalHourly.bin,
                   func.sum(StatsArrivalHourly.count))
            .where(_in_period(StatsArrivalHourly.hour, period))
            .group_by(StatsArrivalHourly.modality, StatsArrivalHourly.bin))
    out: dict[str, Counter[int]] = {}
    for modality, b, n in session.execute(stmt):
        out.setdefault(modality, Counter())[int(b)] += int(n)
    return out


def late_arrival_condition(period: Period) -> Any:
    """The condition of a late arrival (vna.quality.LATE_ARRIVAL) received in the period,
    in the words of its partial index."""
    return and_(text(LATE_ARRIVAL_SQL), _in_period(InstanceFact.received_at, period))


def late_arrivals(session: Session, period: Period) -> tuple[int, list[str]]:
    """Instances received in the period more than LATE_ARRIVAL after their acquisition: how
    many, and the first ten."""
    where = late_arrival_condition(period)
    count = session.scalar(select(func.count()).where(where)) or 0
    examples = session.scalars(select(InstanceFact.sop_instance_uid).where(where)
                               .order_by(InstanceFact.received_at).limit(10)).all()
    return int(count), list(examples)


def exam_durations(session: Session, period: Period) -> list[tuple[str, str | None, float]]:
    """(Study Instance UID, modality, seconds from the first performed procedure step start
    to the last end) of the studies first received in the period, where both are known."""
    rows = session.execute(select(StudyFact.study_instance_uid, StudyFact.modality,
                                  StudyFact.pps_start, StudyFact.pps_end)
                           .where(_in_period(StudyFact.first_received_at, period),
                                  StudyFact.pps_start.isnot(None),
                                  StudyFact.pps_end.isnot(None))
                           .order_by(StudyFact.first_received_at))
    return [(uid, modality, (end - start).total_seconds())
            for uid, modality, start, end in rows if start is not None and end is not None]


def studies_missing(session: Session, period: Period, column: str) -> tuple[int, list[str]]:
    """Studies first received in the period without a value in `column`."""
    col = getattr(Study, column)
    where = and_(_in_period(Study.created_at, period), (col.is_(None)) | (col == ""))
    count = session.scalar(select(func.count()).where(where)) or 0
    examples = session.scalars(select(Study.study_instance_uid).where(where)
                               .order_by(Study.id).limit(10)).all()
    return int(count), list(examples)


def patient_ids(session: Session, period: Period) -> list[str]:
    """Patient IDs of the studies first received in the period."""
    return list(session.scalars(select(StudyFact.patient_id).distinct().where(
        _in_period(StudyFact.first_received_at, period))))


def ids_with_several_names(session: Session, period: Period) -> tuple[int, list[str]]:
    """Patient IDs that the studies first received in the period give several names:
    within one study, or between studies."""
    within_a_study = func.max(case((StudyFact.several_names, 1), else_=0))
    stmt = (select(StudyFact.patient_id)
            .where(_in_period(StudyFact.first_received_at, period),
                   StudyFact.patient_name.isnot(None))
            .group_by(StudyFact.patient_id)
            .having(or_(func.count(func.distinct(StudyFact.patient_name)) > 1,
                        within_a_study == 1))
            .order_by(StudyFact.patient_id))
    found = list(session.scalars(stmt))
    return len(found), found[:10]


def ingest_conflicts(session: Session, period: Period, rule: str) -> tuple[int, list[str]]:
    """Instances of the period whose identity contradicted the archive under `rule`
    (refused, or filed under their own patient): how many, and the first ten studies."""
    where = and_(IngestConflict.rule == rule, _in_period(IngestConflict.at, period))
    count = session.scalar(select(func.count()).where(where)) or 0
    first = func.min(IngestConflict.at)
    examples = session.scalars(select(IngestConflict.study_instance_uid).where(where)
                               .group_by(IngestConflict.study_instance_uid)
                               .order_by(first).limit(10)).all()
    return int(count), list(examples)


def stored_by_source(session: Session) -> list[tuple[str, str, int, int]]:
    """(kind, source AE, count, bytes) of everything ever archived: what /metrics counts."""
    rows = session.execute(select(StatsHourly.kind, StatsHourly.source_ae,
                                  func.sum(StatsHourly.count), func.sum(StatsHourly.bytes))
                           .group_by(StatsHourly.kind, StatsHourly.source_ae))
    return [(kind, ae, int(count), int(size)) for kind, ae, count, size in rows]


# -- what each answer of the stats API reads ---------------------------------------------

Totals = dict[tuple[str, str], tuple[int, int]]  # (kind, dimension value) -> (count, bytes)


@dataclass(frozen=True)
class Summary:
    patients: int
    studies: int
    series: int
    totals: Totals  # dimension value ''
    by_modality: Totals
    by_department: Totals


class StatsReader:
    """The stats API's reads: one read transaction each, so that the numbers of one answer
    come from one snapshot of the index."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def summary(self, period: Period, filters: Filters) -> Summary:
        with self.index.read_session() as s:
            patients, studies, series = study_counts(s, period)
            return Summary(patients, studies, series, totals_by(s, period, filters, None),
                           totals_by(s, period, filters, Dimension.MODALITY),
                           totals_by(s, period, filters, Dimension.DEPARTMENT))

    def volumes(self, period: Period, filters: Filters, dimension: Dimension,
                kind: str | None) -> list[tuple[datetime, str, int, int]]:
        with self.index.read_session() as s:
            return volume_rows(s, period, filters, dimension, kind)

    def workload(self, period: Period, filters: Filters,
                 kind: str | None) -> list[tuple[datetime, int]]:
        with self.index.read_session() as s:
            return workload_rows(s, period, filters, kind)

    def growth(self, period: Period, filters: Filters, dimension: Dimension,
               kind: str | None) -> tuple[list[tuple[datetime, str, int, int]], dict[str, int]]:
        """The period's volume rows and the bytes stored before it, by dimension value."""
        with self.index.read_session() as s:
            return (volume_rows(s, period, filters, dimension, kind),
                    bytes_before(s, period, filters, dimension, kind))

    def leadtimes(self, period: Period) -> tuple[dict[str, Counter[int]],
                                                 list[tuple[str, str | None, float]]]:
        """Arrival-delay histograms by modality, and the exam durations of the period."""
        with self.index.read_session() as s:
            return arrival_histograms(s, period), exam_durations(s, period)

    def quality(self, period: Period) -> QualityFacts:
        with self.index.read_session() as s:
            return QualityFacts(
                exams=exam_durations(s, period), late_arrivals=late_arrivals(s, period),
                missing_referrer=studies_missing(s, period, "referring_physician_name"),
                missing_accession=studies_missing(s, period, "accession_number"),
                patient_ids=patient_ids(s, period),
                several_names=ids_with_several_names(s, period),
                patient_conflicts=ingest_conflicts(s, period, "patient_conflict"),
                uid_conflicts=ingest_conflicts(s, period, "uid_conflict"))

    def stored_by_source(self) -> list[tuple[str, str, int, int]]:
        with self.index.read_session() as s:
            return stored_by_source(s)
