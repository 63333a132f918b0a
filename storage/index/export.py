"""The fact tables for BI tools (Qlik, Power BI): one row per study, instance, document or
order.

Facts are what a controller counts and groups by: times, sizes, modality, department,
referrer, station, source AE, classes. They carry the archive's own identifiers (UIDs,
uniqueId) to join on, and nothing that names a patient (no Patient ID, name or birth date).
Rows are streamed from the database in batches: an export of millions of rows never sits
in memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import case, func, select

from storage.index.db import Index
from storage.index.models import (
    Document,
    ImagingOrder,
    Instance,
    PerformedProcedureStep,
    Series,
    Study,
    StudyFact,
    StudyReport,
)
from vna.stats import Period


class Dataset(StrEnum):
    STUDIES = "studies"
    INSTANCES = "instances"
    DOCUMENTS = "documents"
    ORDERS = "orders"


_MPPS_RANK = {"COMPLETED": 3, "IN PROGRESS": 2, "DISCONTINUED": 1}


def _orders(start: datetime, end: datetime) -> Any:
    """One row per order scheduled in the period: its times, its MPPS (first start, last
    end, the furthest status: COMPLETED, else IN PROGRESS, else DISCONTINUED; steps linked
    by order, else by Study Instance UID), its images' first and last arrival and its final
    report. The patient is the index's own row number (`patient_key`): orders of one
    patient can be told apart from others', without a patient's identity in the file."""
    pps = PerformedProcedureStep
    rank = func.max(case(*((pps.status == k, v) for k, v in _MPPS_RANK.items()), else_=0))

    def steps(key: Any, *where: Any) -> Any:
        return (select(key.label("key"), func.min(pps.started_at).label("started"),
                       func.max(pps.ended_at).label("ended"), rank.label("rank"))
                .where(key.isnot(None), *where).group_by(key).subquery())

    by_fk = steps(pps.order_fk)
    by_uid = steps(pps.study_instance_uid, pps.order_fk.is_(None))
    o = ImagingOrder
    best = func.coalesce(by_fk.c.rank, by_uid.c.rank)
    status = case(*((best == v, k) for k, v in _MPPS_RANK.items()), else_=None)
    return (select(
        o.id.label("order_id"), o.patient_fk.label("patient_key"), o.accession_number,
        o.placer_order_number, o.study_instance_uid, o.modality, o.department, o.status,
        o.source, o.scheduled_station_aet, o.referral_at, o.placed_at, o.scheduled_at,
        func.coalesce(by_fk.c.started, by_uid.c.started).label("mpps_started_at"),
        func.coalesce(by_fk.c.ended, by_uid.c.ended).label("mpps_ended_at"),
        status.label("mpps_status"),
        StudyFact.first_received_at.label("first_image_received_at"),
        StudyFact.last_received_at.label("last_image_received_at"),
        StudyReport.reported_at)
        .outerjoin(by_fk, by_fk.c.key == o.id)
        .outerjoin(by_uid, by_uid.c.key == o.study_instance_uid)
        .outerjoin(StudyFact, StudyFact.study_instance_uid == o.study_instance_uid)
        .outerjoin(StudyReport, StudyReport.accession_number == o.accession_number)
        .where(o.scheduled_at >= start, o.scheduled_at < end)
        .order_by(o.id))


def _query(dataset: Dataset, period: Period) -> Any:
    start, end = period.start.astimezone(UTC), period.end.astimezone(UTC)
    if dataset is Dataset.ORDERS:
        return _orders(start, end)
    if dataset is Dataset.INSTANCES:
        return (select(
            Instance.sop_instance_uid, Series.series_instance_uid, Study.study_instance_uid,
            Instance.sop_class_uid, Series.modality,
            Series.institutional_department_name.label("department"),
            Study.referring_physician_name.label("referrer"), Series.station_name,
            Series.body_part_examined, Instance.source_aet, Instance.received_at,
            Instance.acquisition_date, Instance.acquisition_time, Instance.size,
            Instance.transfer_syntax_uid)
            .join(Series, Instance.series_fk == Series.id)
            .join(Study, Series.study_fk == Study.id)
            .where(Instance.received_at >= start, Instance.received_at < end)
            .order_by(Instance.id))
    if dataset is Dataset.STUDIES:
        counts = (select(Series.study_fk, func.count(Instance.id).label("instances"),
                         func.sum(Instance.size).label("bytes"),
                         func.min(Instance.received_at).label("first_received"),
                         func.max(Instance.received_at).label("last_received"))
                  .join(Instance, Instance.series_fk == Series.id)
                  .group_by(Series.study_fk).subquery())
        return (select(
            Study.study_instance_uid, Study.study_date, Study.study_time,
            Study.accession_number.isnot(None).label("has_accession_number"),
            Study.referring_physician_name.label("referrer"), Study.institution_name,
            counts.c.instances, counts.c.bytes, counts.c.first_received,
            counts.c.last_received)
            .join(counts, counts.c.study_fk == Study.id)
            .where(Study.created_at >= start, Study.created_at < end)
            .order_by(Study.id))
    return (select(
        Document.unique_id, Document.class_code, Document.type_code,
        Document.practice_setting_code.label("department"),
        Document.healthcare_facility_type_code, Document.mime_type, Document.size,
        Document.source, Document.availability_status, Document.creation_time,
        Document.submission_time, Document.version)
        .where(Document.submission_time >= start, Document.submission_time < end)
        .order_by(Document.id))


def columns(dataset: Dataset) -> list[str]:
    now = datetime.now(UTC)
    return [c.name for c in _query(dataset, Period(now, now, UTC)).selected_columns]  # type: ignore[arg-type]


def rows(index: Index, dataset: Dataset, period: Period,
         batch: int = 5000) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of fact rows in the period, in a stable order."""
    with index.read_engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(
            _query(dataset, period))
        for part in result.partitions(batch):
            yield [tuple(r) for r in part]


def to_csv(index: Index, dataset: Dataset, period: Period) -> Iterator[bytes]:
    """The facts as CSV (UTF-8, a header row, ISO times), chunk by chunk."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns(dataset))
    for part in rows(index, dataset, period):
        writer.writerows([_csv_value(v) for v in row] for row in part)
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


def _csv_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    return v


def _arrow_type(column: Any) -> Any:
    import pyarrow as pa

    try:
        py = column.type.python_type
    except NotImplementedError:
        return pa.string()
    if py is bool:
        return pa.bool_()
    if py is int:
        return pa.int64()
    if py is datetime:
        return pa.timestamp("us", tz="UTC")
    return pa.string()


def to_parquet(index: Index, dataset: Dataset, period: Period) -> bytes:
    """The facts as one Parquet file, written batch by batch with a fixed schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    query = _query(dataset, period)
    schema = pa.schema([(c.name, _arrow_type(c)) for c in query.selected_columns])
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema) as writer:
        for part in rows(index, dataset, period):
            cols = list(zip(*part, strict=True))
            writer.write_batch(pa.record_batch(
                [pa.array(col, type=field.type)
                 for col, field in zip(cols, schema, strict=True)], schema=schema))
    return bytes(sink.getvalue().to_pybytes())
