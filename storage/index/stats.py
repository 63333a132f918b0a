"""The one place statistics queries are built: the hourly rollup (`stats_hourly`) that the
workers add to, and what the stats API and /metrics read from it and from the index
(`StatsReader`: each answer from one read transaction)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Float, and_, case, cast, exists, func, not_, null, or_, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, aliased

from storage.index.db import Index, batches, dialect_insert
from storage.index.models import (
    LATE_ARRIVAL_SQL,
    STATS_DIMENSIONS,
    Document,
    ImagingOrder,
    IngestConflict,
    Instance,
    InstanceFact,
    Patient,
    PatientAlias,
    PerformedProcedureStep,
    Series,
    StatsArrivalHourly,
    StatsHourly,
    Study,
    StudyFact,
    StudyReport,
)
from vna.leadtimes import Exams, arrival_bin
from vna.orders import OrderStatus
from vna.quality import MPPS_IMAGES_GRACE_SECONDS, QualityFacts
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
                   Study.referring_physician_name, Study.accession_number)
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


def merge_study_facts(conn: Connection, facts: Iterable[tuple[dict[str, Any], Any]]) -> None:
    """Merge instances' facts (`instance_fact` values, each with its `instance_dimensions`
    row) into their studies' `study_fact`: first and last arrival, earliest procedure step
    start, latest end, the patient's name and whether another one was seen, and the first
    department, source AE and accession number seen; one upsert per instance, so the merge
    rule is written once, here. Merging an instance twice changes nothing."""
    for f, row in facts:
        stmt = dialect_insert(conn)(StudyFact).values(
            study_instance_uid=f["study_instance_uid"], modality=f["modality"],
            first_received_at=f["received_at"], last_received_at=f["received_at"],
            pps_start=f["pps_start"], pps_end=f["pps_end"], patient_id=f["patient_id"],
            patient_name=f["patient_name"], several_names=False,
            department=row.institutional_department_name or None,
            source_aet=row.source_aet or None, accession_number=row.accession_number or None)
        new = stmt.excluded
        conn.execute(stmt.on_conflict_do_update(index_elements=["study_instance_uid"], set_={
            "modality": func.coalesce(StudyFact.modality, new.modality),
            "first_received_at": _merged(StudyFact.first_received_at,
                                         new.first_received_at, keep_earlier=True),
            "last_received_at": _merged(StudyFact.last_received_at, new.last_received_at,
                                        keep_earlier=False),
            "pps_start": _merged(StudyFact.pps_start, new.pps_start, keep_earlier=True),
            "pps_end": _merged(StudyFact.pps_end, new.pps_end, keep_earlier=False),
            "patient_name": func.coalesce(StudyFact.patient_name, new.patient_name),
            "several_names": or_(StudyFact.several_names, and_(
                StudyFact.patient_name.isnot(None), new.patient_name.isnot(None),
                StudyFact.patient_name != new.patient_name)),
            "department": func.coalesce(StudyFact.department, new.department),
            "source_aet": func.coalesce(StudyFact.source_aet, new.source_aet),
            "accession_number": func.coalesce(StudyFact.accession_number,
                                              new.accession_number)}))


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


def _epoch(session: Session, col: Any) -> Any:
    """A time column as seconds since the epoch (a float): lead times over a year of exams
    are differences of many times, cheaper read as numbers than as datetimes."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.extract("epoch", col), Float)
    return (func.julianday(col) - 2440587.5) * 86400.0  # SQLite keeps them as UTC text


# MPPS statuses are DICOM's defined terms (PerformedProcedureStepStatus): IN PROGRESS,
# COMPLETED, DISCONTINUED; a DISCONTINUED step did not perform its exam.
_LIVE = PerformedProcedureStep.status != "DISCONTINUED"


def exams(session: Session, period: Period, *, identified: bool = True) -> Exams:
    """The period's exams (`vna.leadtimes.Exams`): those with MPPS whose first step (not
    DISCONTINUED) started in the period, and those without, whose study was first received
    in it; each with its order, study facts and report. Not `identified`: without their
    UIDs and accession numbers (NULL), which percentiles do not need and a year of which
    takes a while to read."""
    pps, fact, report, order = PerformedProcedureStep, StudyFact, StudyReport, ImagingOrder
    completed = pps.status == "COMPLETED"
    # studies with a step started in the period and none before it (a condition the planner
    # can count: with a HAVING on min(started_at) it expected a few rows, not a year's)
    earlier = aliased(PerformedProcedureStep)
    started_here = select(pps.study_instance_uid).where(
        _LIVE, _in_period(pps.started_at, period), ~exists().where(
            earlier.study_instance_uid == pps.study_instance_uid,
            earlier.status != "DISCONTINUED",
            earlier.started_at < period.start.astimezone(UTC)))
    # the order: the one the steps name, else the one of the study (looked up only then)
    by_study = (select(order.id).where(order.study_instance_uid == pps.study_instance_uid)
                .scalar_subquery())
    steps = (select(pps.study_instance_uid.label("uid"),
                    func.min(pps.started_at).label("started"),
                    func.min(case((completed, pps.started_at))).label("completed_from"),
                    func.max(case((completed, pps.ended_at))).label("ended"),
                    func.coalesce(func.max(pps.order_fk), by_study).label("order_fk"),
                    func.max(pps.modality).label("modality"),
                    func.max(pps.accession_number).label("accession_number"))
             .where(_LIVE, pps.study_instance_uid.in_(started_here))
             .group_by(pps.study_instance_uid)).subquery()
    accession = func.coalesce(order.accession_number, steps.c.accession_number,
                              fact.accession_number)

    def ids(uid: Any, accession: Any) -> tuple[Any, Any]:
        return (uid, accession) if identified else (null(), null())

    with_mpps = (
        select(*ids(steps.c.uid, accession),
               func.coalesce(steps.c.modality, order.modality, fact.modality),
               func.coalesce(func.nullif(order.department, ""), fact.department),
               order.id.isnot(None),
               *(_epoch(session, c) for c in (
                   order.referral_at, order.scheduled_at, steps.c.started,
                   steps.c.completed_from, steps.c.ended, fact.last_received_at,
                   report.reported_at)))
        .select_from(steps)
        .outerjoin(order, order.id == steps.c.order_fk)
        .outerjoin(fact, fact.study_instance_uid == steps.c.uid)
        .outerjoin(report, report.accession_number == accession))
    accession = func.coalesce(order.accession_number, fact.accession_number)
    no_mpps = ~exists().where(pps.study_instance_uid == fact.study_instance_uid, _LIVE)
    images_only = (
        select(*ids(fact.study_instance_uid, accession),
               func.coalesce(fact.modality, order.modality),
               func.coalesce(func.nullif(order.department, ""), fact.department),
               order.id.isnot(None),
               *(_epoch(session, c) for c in (
                   order.referral_at, order.scheduled_at, fact.pps_start, fact.pps_start,
                   fact.pps_end, fact.last_received_at, report.reported_at)))
        .select_from(fact)
        .outerjoin(order, order.study_instance_uid == fact.study_instance_uid)
        .outerjoin(report, report.accession_number == accession)
        .where(_in_period(fact.first_received_at, period), no_mpps))
    if session.get_bind().dialect.name == "postgresql":
        # A year of exams is grouped and joined in memory, not in temporary files; and
        # without JIT, which the order's look-up (costed as if run per study, run for none
        # in practice) would trigger: compiling took longer (0.4 s) than the query itself.
        session.execute(text("SET LOCAL work_mem = '64MB'"))
        session.execute(text("SET LOCAL jit = off"))
    conn = session.connection()
    # the driver's own tuples: a year of exams is too many to wrap each in a Row
    return Exams.of(conn.execute(with_mpps).cursor.fetchall(),
                    conn.execute(images_only).cursor.fetchall())


def orders_not_performed(session: Session, period: Period, today: str) -> tuple[int, list[str]]:
    """Orders scheduled on a day of the period before `today` (local YYYYMMDD) that are
    still SCHEDULED: how many, and the first ten accession numbers."""
    last = min(period.end.strftime("%Y%m%d"), today)
    where = and_(ImagingOrder.status == OrderStatus.SCHEDULED.value,
                 ImagingOrder.scheduled_date >= period.start.strftime("%Y%m%d"),
                 ImagingOrder.scheduled_date < last)
    count = session.scalar(select(func.count()).select_from(ImagingOrder).where(where)) or 0
    examples = session.scalars(select(ImagingOrder.accession_number).where(where).order_by(
        ImagingOrder.scheduled_date, ImagingOrder.scheduled_time, ImagingOrder.id).limit(10))
    return int(count), list(examples)


def completed_without_images(session: Session, period: Period,
                             before: datetime) -> tuple[int, list[str]]:
    """COMPLETED MPPS started in the period and ended before `before` of whose study and
    performed series the archive holds nothing: how many, and the first ten."""
    pps = PerformedProcedureStep
    no_study = ~exists().where(Study.study_instance_uid == pps.study_instance_uid)
    candidates = session.execute(
        select(pps.sop_instance_uid, pps.performed_series)
        .where(pps.status == "COMPLETED", _in_period(pps.started_at, period),
               pps.ended_at < before, no_study)
        .order_by(pps.started_at, pps.sop_instance_uid)).all()
    wanted = {str(s.get("series_instance_uid")) for _, series in candidates
              for s in series or [] if s.get("series_instance_uid")}
    held: set[str] = set()
    for chunk in batches(sorted(wanted), 500):
        held.update(session.scalars(select(Series.series_instance_uid).where(
            Series.series_instance_uid.in_(chunk))))
    found = [uid for uid, series in candidates
             if not any(s.get("series_instance_uid") in held for s in series or [])]
    return len(found), found[:10]


def images_without_mpps(session: Session, period: Period) -> tuple[int, list[str]]:
    """Studies first received in the period from an AE that had sent an MPPS by then, with
    no MPPS of their own: how many, and the first ten."""
    pps, fact = PerformedProcedureStep, StudyFact
    senders = session.execute(select(pps.station_aet, func.min(pps.created_at))
                              .where(pps.station_aet.isnot(None))
                              .group_by(pps.station_aet)).all()
    if not senders:
        return 0, []
    found = list(session.scalars(
        select(fact.study_instance_uid)
        .where(_in_period(fact.first_received_at, period),
               or_(*(and_(fact.source_aet == aet, fact.first_received_at >= since)
                     for aet, since in senders)),
               ~exists().where(pps.study_instance_uid == fact.study_instance_uid))
        .order_by(fact.first_received_at, fact.study_instance_uid)))
    return len(found), found[:10]


def patient_merges(session: Session, period: Period) -> tuple[int, list[str]]:
    """Patients merged into another in the period (HL7 A40): how many, and the first ten
    as "merged ID -> surviving ID"."""
    where = and_(PatientAlias.reason == "merge", _in_period(PatientAlias.at, period))
    count = session.scalar(select(func.count()).select_from(PatientAlias).where(where)) or 0
    rows = session.execute(select(PatientAlias.patient_id, Patient.patient_id)
                           .join(Patient, Patient.id == PatientAlias.survivor_fk)
                           .where(where).order_by(PatientAlias.at, PatientAlias.id).limit(10))
    return int(count), [f"{old} -> {survivor}" for old, survivor in rows]


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

    def leadtimes(self, period: Period) -> tuple[dict[str, Counter[int]], Exams]:
        """Arrival-delay histograms by modality, and the exams of the period."""
        with self.index.read_session() as s:
            return arrival_histograms(s, period), exams(s, period, identified=False)

    def quality(self, period: Period, report_missing_days: int) -> QualityFacts:
        now = datetime.now(UTC)
        with self.index.read_session() as s:
            return QualityFacts(
                exams=exams(s, period), late_arrivals=late_arrivals(s, period),
                missing_referrer=studies_missing(s, period, "referring_physician_name"),
                missing_accession=studies_missing(s, period, "accession_number"),
                patient_ids=patient_ids(s, period),
                several_names=ids_with_several_names(s, period),
                patient_conflicts=ingest_conflicts(s, period, "patient_conflict"),
                uid_conflicts=ingest_conflicts(s, period, "uid_conflict"),
                not_performed=orders_not_performed(
                    s, period, now.astimezone(period.tz).strftime("%Y%m%d")),
                completed_without_images=completed_without_images(
                    s, period, now - timedelta(seconds=MPPS_IMAGES_GRACE_SECONDS)),
                images_without_mpps=images_without_mpps(s, period),
                merges=patient_merges(s, period),
                now=now.timestamp(), report_missing_days=report_missing_days)

    def stored_by_source(self) -> list[tuple[str, str, int, int]]:
        with self.index.read_session() as s:
            return stored_by_source(s)
