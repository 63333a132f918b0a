"""Imaging orders in the index: placed from HL7 or the REST API, changed by HL7 order
control codes and by MPPS, and read by the Modality Worklist. One module writes them, so
that every source obeys the same rules (`vna.orders`)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Table, select, update
from sqlalchemy.engine import Connection

from storage.index import patients
from storage.index.models import ImagingOrder
from vna.orders import InvalidOrder, OrderStatus, ScheduledStep

_order = cast(Table, ImagingOrder.__table__)


class OrderExists(InvalidOrder):
    """An accession number or Study Instance UID the archive has an order for already."""


def place(conn: Connection, step: ScheduledStep, *, source: str, zone: str,
          now: datetime) -> int:
    """A new SCHEDULED order of `step` (its patient created or updated): its row id."""
    taken = conn.execute(select(_order.c.accession_number).where(
        (_order.c.accession_number == step.accession_number)
        | (_order.c.study_instance_uid == step.study_instance_uid)).limit(1)).first()
    if taken is not None:  # one query for both unique keys: HL7 places orders in bulk
        if taken[0] == step.accession_number:
            raise OrderExists("AccessionNumber",
                              f"an order with {step.accession_number!r} exists already")
        raise OrderExists("StudyInstanceUID",
                          f"an order with {step.study_instance_uid!r} exists already")
    patient_fk = patients.ensure(conn, step.patient)
    date, time = step.local_date_time(zone)
    return int(conn.execute(_order.insert().values(
        patient_fk=patient_fk,
        placer_order_number=step.placer_order_number,
        filler_order_number=step.filler_order_number,
        accession_number=step.accession_number,
        requested_procedure_id=step.requested_procedure_id,
        requested_procedure_description=step.requested_procedure_description,
        study_instance_uid=step.study_instance_uid,
        scheduled_procedure_step_id=step.scheduled_procedure_step_id,
        scheduled_procedure_step_description=step.scheduled_procedure_step_description,
        scheduled_station_aet=step.scheduled_station_aet,
        scheduled_station_name=step.scheduled_station_name,
        modality=step.modality,
        scheduled_date=date, scheduled_time=time, scheduled_at=step.scheduled_at,
        scheduled_performing_physician_name=step.scheduled_performing_physician_name,
        referring_physician_name=step.referring_physician_name,
        requesting_physician_name=step.requesting_physician_name,
        department=step.department, priority=step.priority,
        status=OrderStatus.SCHEDULED.value,
        referral_at=step.referral_at, placed_at=step.placed_at,
        source=source, created_at=now, updated_at=now)).inserted_primary_key[0])  # type: ignore[index]


def find_id(conn: Connection, *, accession_number: str | None = None,
            placer_order_number: str | None = None,
            study_instance_uid: str | None = None) -> int | None:
    """The order with this accession number, placer order number or Study Instance UID."""
    for column, value in ((_order.c.accession_number, accession_number),
                          (_order.c.placer_order_number, placer_order_number),
                          (_order.c.study_instance_uid, study_instance_uid)):
        if value:
            found = conn.execute(select(_order.c.id).where(column == value)
                                 .order_by(_order.c.id.desc())).scalar()
            if found is not None:
                return int(found)
    return None


def status_of(conn: Connection, order_id: int) -> OrderStatus | None:
    value = conn.execute(select(_order.c.status).where(_order.c.id == order_id)).scalar()
    return None if value is None else OrderStatus(value)


def set_status(conn: Connection, order_id: int, status: OrderStatus, *,
               now: datetime) -> None:
    """Move an order to `status`; a final order (completed, discontinued, cancelled) does
    not change again."""
    current = status_of(conn, order_id)
    if current is None:
        raise InvalidOrder("order", f"no order {order_id}")
    if current.is_final and current is not status:
        raise InvalidOrder("status", f"the order is {current.value} already")
    conn.execute(update(_order).where(_order.c.id == order_id)
                 .values(status=status.value, updated_at=now))


def cancel(conn: Connection, order_id: int, *, now: datetime) -> OrderStatus | None:
    """Cancel a SCHEDULED order (`DELETE /api/v1/worklist/{id}`); the row is kept for the
    lead times. Returns the status it had (None: no such order); only a SCHEDULED one
    changes, in one conditional UPDATE, so an exam that starts meanwhile is not cancelled."""
    changed = conn.execute(update(_order).where(
        _order.c.id == order_id, _order.c.status == OrderStatus.SCHEDULED.value)
        .values(status=OrderStatus.CANCELLED.value, updated_at=now)).rowcount
    return OrderStatus.SCHEDULED if changed else status_of(conn, order_id)
