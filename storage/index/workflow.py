"""The modality workflow in the index: performed procedure steps (MPPS) and Storage
Commitment requests with the N-EVENT-REPORT that answers them.

Every function takes a Core `Connection` in the caller's transaction (`Index.begin()`):
an MPPS, the order it moves and nothing else commit together before the DIMSE response;
a commitment request commits with its due time, from which a worker sends the report.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, delete, select, update
from sqlalchemy.engine import Connection

from storage.index import orders
from storage.index.db import batches
from storage.index.models import Instance, PerformedProcedureStep, StorageCommitment
from vna.commitment import CommitmentResult, Reference
from vna.mpps import PerformedStep, PpsStatus, duplicate
from vna.orders import InvalidOrder, OrderStatus

log = logging.getLogger("vna.workflow")

_pps = cast(Table, PerformedProcedureStep.__table__)
_commitment = cast(Table, StorageCommitment.__table__)
_instance = cast(Table, Instance.__table__)

ORDER_STATUS = {PpsStatus.IN_PROGRESS: OrderStatus.IN_PROGRESS,
                PpsStatus.COMPLETED: OrderStatus.COMPLETED,
                PpsStatus.DISCONTINUED: OrderStatus.DISCONTINUED}


# -- MPPS ---------------------------------------------------------------------------------

def _order_of(conn: Connection, step: PerformedStep) -> int | None:
    """The worklist item the step performs, by its accession number or Study Instance UID;
    None for an unscheduled step (kept all the same)."""
    return orders.find_id(conn, accession_number=step.scheduled.accession_number,
                          study_instance_uid=step.scheduled.study_instance_uid)


def _move_order(conn: Connection, order_id: int | None, step: PerformedStep,
                now: datetime) -> None:
    """The order follows its step: IN PROGRESS, then COMPLETED or DISCONTINUED. An order
    that is final already (cancelled by the RIS meanwhile) stays as it is: the step is
    what the modality did, and is kept whatever the order says."""
    if order_id is None:
        return
    try:
        orders.set_status(conn, order_id, ORDER_STATUS[step.status], now=now)
    except InvalidOrder as exc:
        log.warning("MPPS %s: order %d left as it is: %s", step.sop_instance_uid, order_id,
                    exc.reason)


def _values(step: PerformedStep) -> dict[str, Any]:
    return {"status": step.status.value, "patient_id": step.patient_id,
            "issuer_of_patient_id": step.issuer_of_patient_id, "modality": step.modality,
            "study_instance_uid": step.scheduled.study_instance_uid,
            "accession_number": step.scheduled.accession_number,
            "started_at": step.started_at, "ended_at": step.ended_at,
            "performed_series": step.performed_series, "attributes": step.attributes}


def create_step(conn: Connection, step: PerformedStep, *, station_aet: str,
                now: datetime) -> int | None:
    """Insert a new step (N-CREATE) and set its order IN PROGRESS; the order's id.
    Raises `vna.mpps.MppsRefused` (0x0111) if the SOP Instance UID is known."""
    exists = conn.execute(select(_pps.c.sop_instance_uid).where(
        _pps.c.sop_instance_uid == step.sop_instance_uid)).first()
    if exists is not None:
        raise duplicate(step.sop_instance_uid)
    order_id = _order_of(conn, step)
    values = _values(step)
    if order_id is not None:
        # the order knows the study the modality was told to use
        values["study_instance_uid"] = values["study_instance_uid"] or conn.execute(
            select(orders._order.c.study_instance_uid)
            .where(orders._order.c.id == order_id)).scalar()
    conn.execute(_pps.insert().values(sop_instance_uid=step.sop_instance_uid,
                                      order_fk=order_id, station_aet=station_aet,
                                      created_at=now, updated_at=now, **values))
    _move_order(conn, order_id, step, now)
    return order_id


def step_attributes(conn: Connection, uid: str) -> dict[str, Any] | None:
    """The DICOM JSON of a step as it stands, locked for the caller's update (PostgreSQL;
    SQLite's write transactions are serial already); None if there is no such step."""
    query = select(_pps.c.attributes).where(_pps.c.sop_instance_uid == uid)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    value = conn.execute(query).scalar()
    return None if value is None else cast(dict[str, Any], value)


def update_step(conn: Connection, step: PerformedStep, *, now: datetime) -> int | None:
    """Write a step after an N-SET; at COMPLETED or DISCONTINUED its order follows."""
    order_id = conn.execute(select(_pps.c.order_fk).where(
        _pps.c.sop_instance_uid == step.sop_instance_uid)).scalar()
    values = _values(step)
    for kept in ("study_instance_uid", "accession_number", "patient_id",
                 "issuer_of_patient_id"):
        values.pop(kept)  # fixed at N-CREATE (vna.mpps.FIXED_AT_CREATE)
    conn.execute(update(_pps).where(_pps.c.sop_instance_uid == step.sop_instance_uid)
                 .values(updated_at=now, **values))
    if step.status.is_final:
        _move_order(conn, order_id, step, now)
    return cast(int | None, order_id)


# -- Storage Commitment ---------------------------------------------------------------------

LOOKUP_CHUNK = 500  # UIDs per IN list: well under SQLite's and PostgreSQL's bind limits


def stored_classes(conn: Connection, uids: Iterable[str]) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of the instances the index holds. A row is only
    ever committed after its object was written (and fsynced under VNA_FSYNC), so what is
    found here is on stable storage."""
    found: dict[str, str] = {}
    for chunk in batches(sorted(set(uids)), LOOKUP_CHUNK):
        for uid, sop_class in conn.execute(
                select(_instance.c.sop_instance_uid, _instance.c.sop_class_uid)
                .where(_instance.c.sop_instance_uid.in_(chunk))):
            found[uid] = sop_class
    return found


def record_commitment(conn: Connection, *, transaction_uid: str, requester_aet: str,
                      referenced: Sequence[Reference], result: CommitmentResult,
                      now: datetime) -> None:
    """Keep a request with what the archive found, due for its report at once. A request
    sent again under its Transaction UID (a modality that lost our answer) replaces the
    first: it is checked again and reported again."""
    conn.execute(delete(_commitment).where(_commitment.c.transaction_uid == transaction_uid))
    conn.execute(_commitment.insert().values(
        transaction_uid=transaction_uid, requester_aet=requester_aet, requested_at=now,
        referenced=[r.as_json() for r in referenced],
        committed=[r.as_json() for r in result.committed],
        failed=[f.as_json() for f in result.failed],
        attempts=0, next_attempt_at=now))


@dataclass(frozen=True)
class DueReport:
    """A commitment whose N-EVENT-REPORT a worker has claimed to send."""

    transaction_uid: str
    requester_aet: str
    result: CommitmentResult
    attempts: int  # including this one


def claim_due(conn: Connection, *, now: datetime, lease: timedelta,
              limit: int = 20) -> list[DueReport]:
    """Claim the reports due now: each row's next attempt is moved a lease ahead by a
    conditional update, so that two workers never send one report at once, and a worker
    killed mid-send leaves it due again when the lease ends."""
    rows = conn.execute(
        select(_commitment.c.transaction_uid, _commitment.c.next_attempt_at)
        .where(_commitment.c.reported_at.is_(None), _commitment.c.next_attempt_at <= now)
        .order_by(_commitment.c.next_attempt_at).limit(limit)).all()
    claimed = []
    for uid, due in rows:
        got = conn.execute(
            update(_commitment)
            .where(and_(_commitment.c.transaction_uid == uid,
                        _commitment.c.reported_at.is_(None),
                        _commitment.c.next_attempt_at == due))
            .values(next_attempt_at=now + lease, attempts=_commitment.c.attempts + 1)
            .returning(_commitment.c.requester_aet, _commitment.c.committed,
                       _commitment.c.failed, _commitment.c.attempts)).first()
        if got is not None:
            aet, committed, failed, attempts = got
            claimed.append(DueReport(uid, aet, CommitmentResult.from_json(committed, failed),
                                     int(attempts)))
    return claimed


def next_due(conn: Connection) -> datetime | None:
    """When the next unreported commitment is due (None: nothing to report)."""
    return cast(datetime | None, conn.execute(
        select(_commitment.c.next_attempt_at).where(_commitment.c.reported_at.is_(None))
        .order_by(_commitment.c.next_attempt_at).limit(1)).scalar())


def mark_reported(conn: Connection, transaction_uid: str, *, now: datetime,
                  note: str | None = None) -> None:
    """The requester answered the N-EVENT-REPORT: done (`note`: a status it answered that
    was not Success, kept for an operator)."""
    conn.execute(update(_commitment).where(_commitment.c.transaction_uid == transaction_uid)
                 .values(reported_at=now, next_attempt_at=None, last_error=note))


def mark_unreported(conn: Connection, transaction_uid: str, *, error: str,
                    retry_at: datetime) -> None:
    """The report could not be delivered: try again at `retry_at`."""
    conn.execute(update(_commitment).where(_commitment.c.transaction_uid == transaction_uid,
                                           _commitment.c.reported_at.is_(None))
                 .values(next_attempt_at=retry_at, last_error=error[:2000]))
