"""Rows of the modality workflow (orders, MPPS, study facts, reports, merges) written
straight into the index through the models, with times the test chooses: what the HL7
listener, the worklist API, the MPPS service and the workers write in production, so that
the readers (lead times, quality rules, the orders export) can be checked against figures
known independently."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from storage.index.db import Index
from storage.index.models import (
    ImagingOrder,
    Patient,
    PatientAlias,
    PerformedProcedureStep,
    Series,
    Study,
    StudyFact,
    StudyReport,
)


@dataclass
class Workflow:
    """A session on the index and helpers that add one row each, filling what the test
    does not care about."""

    session: Session
    tz: ZoneInfo
    _n: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def patient(self, patient_id: str) -> Patient:
        p = Patient(patient_id=patient_id, issuer_of_patient_id="", patient_name="Doe^J",
                    patient_name_upper="DOE^J")
        self.session.add(p)
        self.session.flush()
        return p

    def order(self, patient: Patient, accession: str, study: str, *, modality: str,
              scheduled: datetime, referral: datetime | None = None,
              placed: datetime | None = None, department: str | None = None,
              status: str = "COMPLETED") -> ImagingOrder:
        local = scheduled.astimezone(self.tz)
        o = ImagingOrder(
            patient_fk=patient.id, placer_order_number=f"PL-{accession}",
            accession_number=accession, requested_procedure_id=f"RP{next(self._n)}",
            study_instance_uid=study, scheduled_procedure_step_id=f"SPS{next(self._n)}",
            modality=modality, scheduled_date=local.strftime("%Y%m%d"),
            scheduled_time=local.strftime("%H%M%S.000000"), scheduled_at=scheduled,
            department=department, status=status, referral_at=referral, placed_at=placed,
            source="hl7", created_at=referral or scheduled, updated_at=scheduled)
        self.session.add(o)
        self.session.flush()
        return o

    def mpps(self, study: str, *, status: str, started: datetime,
             ended: datetime | None = None, order: ImagingOrder | None = None,
             modality: str = "CT", station_aet: str = "CT1", accession: str | None = None,
             series: list[str] | None = None, created: datetime | None = None
             ) -> PerformedProcedureStep:
        step = PerformedProcedureStep(
            sop_instance_uid=f"{study}.pps{next(self._n)}",
            order_fk=order.id if order else None, study_instance_uid=study,
            accession_number=accession, patient_id="P1", issuer_of_patient_id="",
            modality=modality, station_aet=station_aet, status=status, started_at=started,
            ended_at=ended,
            performed_series=[{"series_instance_uid": s} for s in series or []],
            attributes={}, created_at=created or started, updated_at=ended or started)
        self.session.add(step)
        return step

    def study(self, patient: Patient, study: str, *, created: datetime,
              series: str | None = None) -> Study:
        """Study (and series) rows: what the archive holds when instances are stored."""
        s = Study(patient_fk=patient.id, study_instance_uid=study, created_at=created)
        self.session.add(s)
        self.session.flush()
        if series:
            self.session.add(Series(study_fk=s.id, series_instance_uid=series))
        return s

    def fact(self, study: str, *, modality: str, first: datetime, last: datetime,
             source_aet: str, department: str | None = None, accession: str | None = None,
             pps: tuple[datetime, datetime] | None = None) -> None:
        """The study's facts as the workers derive them from its instances."""
        self.session.add(StudyFact(
            study_instance_uid=study, modality=modality, first_received_at=first,
            last_received_at=last, pps_start=pps[0] if pps else None,
            pps_end=pps[1] if pps else None, patient_id="P1", patient_name="DOE^J",
            several_names=False, department=department, source_aet=source_aet,
            accession_number=accession))

    def report(self, accession: str, at: datetime, study: str | None = None) -> None:
        self.session.add(StudyReport(accession_number=accession, study_instance_uid=study,
                                     reported_at=at, result_status="F", received_at=at))

    def alias(self, old_id: str, survivor: Patient, *, reason: str, at: datetime) -> None:
        self.session.add(PatientAlias(patient_id=old_id, issuer_of_patient_id="",
                                      survivor_fk=survivor.id, reason=reason, at=at))


@contextmanager
def workflow(index: Index, tz: ZoneInfo) -> Iterator[Workflow]:
    """A Workflow whose rows are committed together at the end."""
    with index.begin() as conn:
        session = Session(bind=conn)
        yield Workflow(session, tz)
        session.flush()
