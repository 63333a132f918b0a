"""The worklist's queries: Modality Worklist C-FIND and `GET /api/v1/worklist` read orders
with their patients here. Matchers (`vna.worklist`) become bound parameters through the
Q/R's `apply_matcher`; no value is ever formatted into SQL text. Orders are written by
`storage.index.orders` only."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, false, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from storage.index.models import ImagingOrder, Patient
from storage.index.query import apply_matcher, upper_matcher
from vna.dicom.matching import Matcher
from vna.worklist import ITEM_KEYS, SPS_KEYS, DateTimeRange, WorklistEntry, WorklistQuery

_order = cast(Table, ImagingOrder.__table__)
_patient = cast(Table, Patient.__table__)
_PATIENT_COLUMNS = ("patient_id", "issuer_of_patient_id", "patient_name",
                    "patient_birth_date", "patient_sex")
_COLUMNS = [_patient.c[name] for name in _PATIENT_COLUMNS] + [
    _order.c[name] for name in WorklistEntry.__dataclass_fields__
    if name not in _PATIENT_COLUMNS]
_ORDER = (_order.c.scheduled_date, _order.c.scheduled_time, _order.c.id)

Reader = Connection | Session


def _predicate(keyword: str, m: Matcher | DateTimeRange) -> ColumnElement[bool]:
    if isinstance(m, DateTimeRange):
        return _date_time(m)
    attr = ITEM_KEYS.get(keyword) or SPS_KEYS[keyword]
    if attr.column == "patient_name":  # kept upper-cased too, as the Q/R matches it
        return apply_matcher(_patient.c.patient_name_upper, upper_matcher(m))
    if attr.column in _PATIENT_COLUMNS:
        return apply_matcher(_patient.c[attr.column], m)
    col = _order.c[attr.column]
    if attr.case_insensitive:  # physicians' names: as sent, or upper-cased by the database
        return or_(apply_matcher(col, m), apply_matcher(func.upper(col), upper_matcher(m)))
    return apply_matcher(col, m)


def _date_time(m: DateTimeRange) -> ColumnElement[bool]:
    date, time = _order.c.scheduled_date, _order.c.scheduled_time
    parts = []
    if m.low is not None:
        parts.append(or_(date > m.low[0], and_(date == m.low[0], time >= m.low[1])))
    if m.high is not None:
        parts.append(or_(date < m.high[0], and_(date == m.high[0], time <= m.high[1])))
    return and_(*parts)


def _is_patients(keyword: str) -> bool:
    attr = ITEM_KEYS.get(keyword)
    return attr is not None and attr.column in _PATIENT_COLUMNS


def _select(q: WorklistQuery, *columns: Any) -> Any:
    stmt = select(*columns).select_from(
        _order.join(_patient, _patient.c.id == _order.c.patient_fk))
    by_patient = [_predicate(k, m) for k, m in q.matchers.items() if _is_patients(k)]
    status: Any = _order.c.status
    if by_patient:
        # The patient's orders by its index: SQLite (without ANALYZE's statistics) would
        # rather walk every scheduled order by the status index, 4x slower at 10,000 items;
        # `status || ''` is not indexable, which leaves it the patient_fk index.
        stmt = stmt.where(_order.c.patient_fk.in_(select(_patient.c.id).where(*by_patient)))
        status = status.concat("")
    for keyword, m in q.matchers.items():
        if not _is_patients(keyword):
            stmt = stmt.where(_predicate(keyword, m))
    if q.statuses is not None:
        stmt = stmt.where(status.in_(sorted(s.value for s in q.statuses))
                          if q.statuses else false())
    if q.departments:
        stmt = stmt.where(_order.c.department.in_(sorted(q.departments)))
    return stmt


def find(conn: Reader, q: WorklistQuery, *, limit: int | None = None,
         offset: int = 0) -> list[WorklistEntry]:
    """The items `q` matches, by scheduled date and time."""
    stmt = _select(q, *_COLUMNS).order_by(*_ORDER)
    if limit:
        stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    return [WorklistEntry(**row._mapping) for row in conn.execute(stmt)]


def count(conn: Reader, q: WorklistQuery) -> int:
    return int(conn.execute(_select(q, func.count(_order.c.id))).scalar_one())


def get(conn: Reader, order_id: int) -> WorklistEntry | None:
    row = conn.execute(select(*_COLUMNS).select_from(
        _order.join(_patient, _patient.c.id == _order.c.patient_fk))
        .where(_order.c.id == order_id)).first()
    return None if row is None else WorklistEntry(**row._mapping)
