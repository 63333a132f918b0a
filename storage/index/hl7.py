"""HL7 v2 messages applied to the index, each in ONE transaction with its `hl7_message` row:
what a message changed and the record that it came are committed together or not at all,
and the ACK goes out only after the commit. A message that cannot be applied changes
nothing: its transaction is rolled back, and its `hl7_message` row (AE/AR, the reason) is
written in a transaction of its own.

A40 merge and A47 change of ID keep the old identity in `patient_alias`, so that ingest
(`storage/index/ingest.py`) files an instance that still names it under the survivor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, func, or_, select, update
from sqlalchemy.engine import Connection

from storage.index import orders, patients
from storage.index.db import Index
from storage.index.models import (
    Document,
    Hl7Message,
    ImagingOrder,
    Instance,
    Patient,
    PatientAlias,
    PerformedProcedureStep,
    Series,
    Study,
    StudyReport,
)
from vna.dicom.identity import PatientIdentity
from vna.hl7 import (
    Control,
    ErrorCode,
    Hl7Error,
    Merge,
    OrderControl,
    Parsed,
    PatientUpdate,
    Report,
    error_of,
)
from vna.orders import InvalidOrder

_msg, _patient, _alias, _study, _series, _instance, _document, _order, _pps, _report = (
    cast(Table, m.__table__) for m in (
        Hl7Message, Patient, PatientAlias, Study, Series, Instance, Document, ImagingOrder,
        PerformedProcedureStep, StudyReport))


@dataclass(frozen=True)
class Received:
    """What the log keeps of a message: who sent it, when, which one."""

    received_at: datetime
    peer: str | None
    message: str
    sending_application: str | None = None
    sending_facility: str | None = None
    message_type: str | None = None
    control_id: str | None = None
    patient_id: str | None = None


class Hl7Inbox:
    """Applies parsed messages to the index and keeps the log of every message."""

    def __init__(self, index: Index, zone: str) -> None:
        self.index = index
        self.zone = zone  # the region's (VNA_TIMEZONE): worklist dates are local

    def apply(self, parsed: Parsed, received: Received, *, code: str) -> int:
        """Apply a message and log it as AA, in one transaction (the ACK may go out when
        this returns). `Hl7Error` if it cannot be applied: then nothing was written."""
        with self.index.begin() as conn:
            message_fk = _log(conn, received, "AA", None)
            try:
                _apply(conn, parsed, message_fk, received.received_at, code, self.zone)
            except InvalidOrder as exc:
                raise error_of(exc, code, error=ErrorCode.DATA_TYPE) from None
            return message_fk

    def refused(self, received: Received, error: Hl7Error) -> int:
        """Log a message that was not applied, with its AE/AR and the reason."""
        with self.index.begin() as conn:
            return _log(conn, received, error.ack_code, str(error))


def list_messages(index: Index, *, since: datetime | None = None,
                  until: datetime | None = None, patient_id: str | None = None,
                  message_type: str | None = None, ack_code: str | None = None,
                  limit: int = 100, offset: int = 0) -> list[Hl7Message]:
    """The message log, newest first. A message type without a trigger (`ADT`) matches
    all of its events."""
    stmt = select(Hl7Message)
    if since:
        stmt = stmt.where(Hl7Message.received_at >= since)
    if until:
        stmt = stmt.where(Hl7Message.received_at <= until)
    if patient_id:
        stmt = stmt.where(Hl7Message.patient_id == patient_id)
    if message_type:
        stmt = stmt.where(Hl7Message.message_type == message_type if "^" in message_type
                          else Hl7Message.message_type.startswith(message_type + "^",
                                                                  autoescape=True))
    if ack_code:
        stmt = stmt.where(Hl7Message.ack_code == ack_code)
    stmt = stmt.order_by(Hl7Message.id.desc()).limit(limit).offset(offset)
    with index.read_session() as s:
        return list(s.scalars(stmt))


def _fit(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else value


_LOG = _msg.insert()  # one statement, its compiled form cached by SQLAlchemy


def _log(conn: Connection, r: Received, ack_code: str, error: str | None) -> int:
    return int(conn.execute(_LOG, {
        "received_at": r.received_at, "peer": _fit(r.peer, 64),
        "sending_application": _fit(r.sending_application, 64),
        "sending_facility": _fit(r.sending_facility, 64),
        "message_type": _fit(r.message_type, 16), "control_id": _fit(r.control_id, 64),
        "patient_id": _fit(r.patient_id, 64), "ack_code": ack_code, "error": error,
        "message": r.message}).inserted_primary_key[0])  # type: ignore[index]


def _apply(conn: Connection, parsed: Parsed, message_fk: int, now: datetime,
           code: str, zone: str) -> None:
    if isinstance(parsed, PatientUpdate):
        patients.ensure(conn, parsed.patient)
    elif isinstance(parsed, Merge):
        if parsed.change_id:
            _change_id(conn, parsed, message_fk, now)
        else:
            _merge(conn, parsed, message_fk, now)
    elif isinstance(parsed, OrderControl):
        _order_control(conn, parsed, now, code, zone)
    elif isinstance(parsed, Report):
        _record_report(conn, parsed, message_fk, now)


# -- patients --------------------------------------------------------------------------------

def _identity_of(conn: Connection, row_id: int) -> PatientIdentity:
    pid, issuer = conn.execute(select(_patient.c.patient_id, _patient.c.issuer_of_patient_id)
                               .where(_patient.c.id == row_id)).one()
    return PatientIdentity(pid, issuer or "")


def _merge(conn: Connection, merge: Merge, message_fk: int, now: datetime) -> None:
    """A40: everything of the prior patient moves to the survivor; the prior identity
    stays as an alias of the survivor; the prior row goes."""
    prior = patients.own_row(conn, merge.prior)
    if prior is None:
        survivor_fk = patients.find(conn, merge.survivor.identity)
        if survivor_fk is not None and patients.find(conn, merge.prior) == survivor_fk:
            patients.ensure(conn, merge.survivor)  # merged before: a re-sent A40
            return
        raise Hl7Error("MRG-1", ErrorCode.UNKNOWN_KEY, "the prior patient is not known")
    prior_fk, prior_identity = prior
    survivor_fk = patients.ensure(conn, merge.survivor)
    if survivor_fk == prior_fk:
        raise Hl7Error("MRG-1", ErrorCode.DATA_TYPE, "the prior patient is the patient itself")
    survivor = _identity_of(conn, survivor_fk)
    _move_studies(conn, prior_fk, survivor_fk)
    conn.execute(update(_order).where(_order.c.patient_fk == prior_fk)
                 .values(patient_fk=survivor_fk, updated_at=now))
    _rename_elsewhere(conn, prior_identity, survivor)
    conn.execute(update(_alias).where(_alias.c.survivor_fk == prior_fk)
                 .values(survivor_fk=survivor_fk))
    conn.execute(_alias.insert().values(
        patient_id=prior_identity.patient_id,
        issuer_of_patient_id=prior_identity.issuer, survivor_fk=survivor_fk,
        reason="merge", at=now, hl7_message_fk=message_fk))
    conn.execute(delete(_patient).where(_patient.c.id == prior_fk))


def _move_studies(conn: Connection, prior_fk: int, survivor_fk: int) -> None:
    """The prior patient's studies become the survivor's; a study both have (one Study
    Instance UID filed under each) becomes one, and so does a series both have."""
    theirs = dict(conn.execute(select(_study.c.study_instance_uid, _study.c.id)
                               .where(_study.c.patient_fk == survivor_fk)).all())
    for study_fk, uid in conn.execute(select(_study.c.id, _study.c.study_instance_uid)
                                      .where(_study.c.patient_fk == prior_fk)).all():
        target = theirs.get(uid)
        if target is None:
            conn.execute(update(_study).where(_study.c.id == study_fk)
                         .values(patient_fk=survivor_fk))
            continue
        kept = dict(conn.execute(select(_series.c.series_instance_uid, _series.c.id)
                                 .where(_series.c.study_fk == target)).all())
        for series_fk, series_uid in conn.execute(
                select(_series.c.id, _series.c.series_instance_uid)
                .where(_series.c.study_fk == study_fk)).all():
            if series_uid in kept:
                conn.execute(update(_instance).where(_instance.c.series_fk == series_fk)
                             .values(series_fk=kept[series_uid]))
                conn.execute(delete(_series).where(_series.c.id == series_fk))
            else:
                conn.execute(update(_series).where(_series.c.id == series_fk)
                             .values(study_fk=target))
        conn.execute(delete(_study).where(_study.c.id == study_fk))


def _rename_elsewhere(conn: Connection, old: PatientIdentity, new: PatientIdentity) -> None:
    """Where the patient is named by a string, not a row: documents (`ID` or the CX form
    `ID^^^&authority&ISO`) and performed procedure steps."""
    conn.execute(update(_document).where(_document.c.patient_id == old.patient_id)
                 .values(patient_id=new.patient_id))
    cx = old.patient_id + "^"
    rows = conn.execute(select(_document.c.id, _document.c.patient_id).where(
        _document.c.patient_id.startswith(cx, autoescape=True))).all()
    for doc_id, value in rows:
        authority = value[len(cx):]
        if old.issuer and old.issuer not in authority:
            continue  # another issuer's patient with the same ID
        keep = authority if new.issuer == old.issuer else ""
        conn.execute(update(_document).where(_document.c.id == doc_id).values(
            patient_id=f"{new.patient_id}^{keep}" if keep else new.patient_id))
    stmt = update(_pps).where(_pps.c.patient_id == old.patient_id)
    if old.issuer:
        stmt = stmt.where(or_(_pps.c.issuer_of_patient_id == old.issuer,
                              _pps.c.issuer_of_patient_id == ""))
    conn.execute(stmt.values(patient_id=new.patient_id, issuer_of_patient_id=new.issuer))


def _change_id(conn: Connection, change: Merge, message_fk: int, now: datetime) -> None:
    """A47: the prior identity's row takes the new identity (its studies stay with it);
    the old identity becomes an alias of the row."""
    prior = patients.own_row(conn, change.prior)
    new = change.survivor.identity
    if prior is None:
        aliased_to = patients.find(conn, change.prior)
        now_row = patients.own_row(conn, new)
        if aliased_to is not None and now_row is not None and aliased_to == now_row[0]:
            patients.ensure(conn, change.survivor)  # changed before: a re-sent A47
            return
        raise Hl7Error("MRG-1", ErrorCode.UNKNOWN_KEY, "the prior patient is not known")
    row_fk, old = prior
    taken = patients.own_row(conn, new)
    if taken is not None and taken[0] != row_fk:
        raise Hl7Error("PID-3", ErrorCode.DUPLICATE_KEY,
                       "another patient has the new identifier (merge it with A40)")
    conn.execute(delete(_alias).where(_alias.c.patient_id == new.patient_id,
                                      _alias.c.issuer_of_patient_id == new.issuer))
    conn.execute(update(_patient).where(_patient.c.id == row_fk).values(
        patient_id=new.patient_id, issuer_of_patient_id=new.issuer))
    patients.ensure(conn, change.survivor)
    _rename_elsewhere(conn, old, new)
    conn.execute(_alias.insert().values(
        patient_id=old.patient_id, issuer_of_patient_id=old.issuer, survivor_fk=row_fk,
        reason="change_id", at=now, hl7_message_fk=message_fk))


# -- orders and reports ------------------------------------------------------------------------

def _order_control(conn: Connection, oc: OrderControl, now: datetime, code: str,
                   zone: str) -> None:
    if oc.control is Control.NEW:
        assert oc.step is not None
        try:
            orders.place(conn, oc.step, source="hl7", zone=zone, now=now)
        except orders.OrderExists as exc:
            raise error_of(exc, code, error=ErrorCode.DUPLICATE_KEY) from None
        return
    order_id = orders.find_id(conn, accession_number=oc.accession_number,
                              placer_order_number=oc.placer_order_number)
    if order_id is None:
        raise Hl7Error("ORC-2", ErrorCode.UNKNOWN_KEY, "no order with this placer order "
                       "number or accession number")
    assert oc.status is not None
    try:
        orders.set_status(conn, order_id, oc.status, now=now)
    except InvalidOrder as exc:
        raise Hl7Error("ORC-1", ErrorCode.INTERNAL, exc.reason) from None


def _record_report(conn: Connection, report: Report, message_fk: int, now: datetime) -> None:
    """A final report's time, by accession number; a corrected one (C) keeps the time of
    the first final report (the exam-to-report lead time ends at the first signature)."""
    if report.result_status not in ("F", "C"):
        return  # preliminary and other results: logged, nothing recorded
    study_uid = conn.execute(select(_order.c.study_instance_uid).where(
        _order.c.accession_number == report.accession_number)).scalar()
    if study_uid is None:
        study_uid = conn.execute(select(func.min(_study.c.study_instance_uid)).where(
            _study.c.accession_number == report.accession_number)).scalar()
    known = conn.execute(select(_report.c.reported_at).where(
        _report.c.accession_number == report.accession_number)).first()
    values: dict[str, Any] = {"result_status": report.result_status, "received_at": now,
                              "hl7_message_fk": message_fk}
    if study_uid:
        values["study_instance_uid"] = study_uid
    if known is None:
        conn.execute(_report.insert().values(accession_number=report.accession_number,
                                             reported_at=report.reported_at, **values))
    else:
        if report.result_status == "F" and report.reported_at < known[0]:
            values["reported_at"] = report.reported_at
        conn.execute(update(_report).where(
            _report.c.accession_number == report.accession_number).values(**values))
