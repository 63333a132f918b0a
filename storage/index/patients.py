"""Patient rows as the HIS maintains them (HL7 ADT): find one through its aliases, create or
update its demographics. The stored DICOM bytes are never rewritten; C-FIND, DICOMweb, the
timeline and the stats read the patient row.

Every function works in the caller's transaction (a Core `Connection`), so that an HL7
message's changes and its log entry commit together or not at all.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, literal, select, union_all, update
from sqlalchemy.engine import Connection

from storage.index.models import Patient, PatientAlias
from vna.dicom.identity import PatientIdentity
from vna.orders import PatientRecord

_patient = cast(Table, Patient.__table__)
_alias = cast(Table, PatientAlias.__table__)


def find(conn: Connection, identity: PatientIdentity) -> int | None:
    """The patient row of an identity: its own row, or the survivor it was merged into
    or renamed to. An empty issuer on either side matches any issuer (as at ingest).
    One query: HL7 orders and updates look a patient up in every message."""
    own = select(_patient.c.id, _patient.c.issuer_of_patient_id, literal(0).label("alias")) \
        .where(_patient.c.patient_id == identity.patient_id)
    aliased = select(_alias.c.survivor_fk, _alias.c.issuer_of_patient_id,
                     literal(1).label("alias")) \
        .where(_alias.c.patient_id == identity.patient_id)
    rows = conn.execute(union_all(own, aliased)).all()
    for row_id, issuer, _ in sorted(rows, key=lambda r: r[2]):  # own rows first
        if identity.matches(PatientIdentity(identity.patient_id, issuer or "")):
            return int(row_id)
    return None


def own_row(conn: Connection, identity: PatientIdentity,
            ) -> tuple[int, PatientIdentity] | None:
    """The patient row that carries this identity itself, not through an alias (an empty
    issuer matches any, as at ingest), with the identity the row has."""
    for row_id, issuer in conn.execute(
            select(_patient.c.id, _patient.c.issuer_of_patient_id)
            .where(_patient.c.patient_id == identity.patient_id)
            .order_by(_patient.c.id)).all():
        found = PatientIdentity(identity.patient_id, issuer or "")
        if identity.matches(found):
            return int(row_id), found
    return None


def ensure(conn: Connection, record: PatientRecord, *, update_demographics: bool = True,
           ) -> int:
    """The row of `record`'s patient, created if new; its name, birth date and sex set
    from the record where the record gives them (ADT A08 and orders keep them current)."""
    row_id = find(conn, record.identity)
    values: dict[str, str | None] = {}
    if record.name is not None:
        values.update(patient_name=record.name or None,
                      patient_name_upper=record.name.upper() or None)
    if record.birth_date is not None:
        values["patient_birth_date"] = record.birth_date or None
    if record.sex is not None:
        values["patient_sex"] = record.sex or None
    if row_id is None:
        return int(conn.execute(_patient.insert().values(
            patient_id=record.identity.patient_id,
            issuer_of_patient_id=record.identity.issuer, **values)).inserted_primary_key[0])  # type: ignore[index]
    if values and update_demographics:
        conn.execute(update(_patient).where(_patient.c.id == row_id).values(**values))
    return row_id
