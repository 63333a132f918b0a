"""MPPS (Modality Performed Procedure Step) against a running `vna scp`, pynetdicom as the
modality, on both index backends: a scheduled exam from IN PROGRESS to COMPLETED or
DISCONTINUED with its order following, an unscheduled one, and the bad input (a duplicate
N-CREATE, an N-SET on an unknown step or after COMPLETED, a status other than IN
PROGRESS, a final step without its end) each changing nothing. DCMTK has no N-CREATE or
N-SET tool (Debian's dcmtk 3.6.7), so pynetdicom is the only modality here."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from storage.archive import Archive
from storage.index import orders
from tests.conftest import RunningSCP
from tests.dicom_client import _cx, associate
from vna import mpps
from vna.dicom.identity import PatientIdentity
from vna.orders import PatientRecord, ScheduledStep, new_uid

ZONE = "Europe/Stockholm"  # the default VNA_TIMEZONE


def place_order(archive: Archive, accession: str) -> tuple[int, str]:
    study = new_uid()
    step = ScheduledStep(
        patient=PatientRecord(PatientIdentity("P-MPPS", ""), name="Doe^Jane"),
        accession_number=accession, modality="CT", study_instance_uid=study,
        scheduled_at=datetime(2026, 12, 5, 9, 0, tzinfo=UTC), scheduled_station_aet="CT01")
    with archive.index.begin() as conn:
        order_id = orders.place(conn, step, source="api", zone=ZONE, now=datetime.now(UTC))
    return order_id, study


def in_progress(accession: str | None, study: str | None, *, status: str = "IN PROGRESS",
                start: tuple[str, str] = ("20261205", "101500")) -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P-MPPS"
    item = Dataset()
    item.AccessionNumber = accession or ""
    item.StudyInstanceUID = study or new_uid()
    item.RequestedProcedureID = accession or ""
    item.ScheduledProcedureStepID = accession or ""
    ds.ScheduledStepAttributesSequence = [item]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = start
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.PerformedProcedureStepStatus = status
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def final(status: str, series_uid: str, sops: list[str]) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261205"
    ds.PerformedProcedureStepEndTime = "104500"
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.SeriesDescription = "Thorax"
    series.RetrieveAETitle = "VNA"
    refs = []
    for sop in sops:
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ref.ReferencedSOPInstanceUID = sop
        refs.append(ref)
    series.ReferencedImageSequence = refs
    ds.PerformedSeriesSequence = [series]
    return ds


@pytest.fixture
def modality(scp: RunningSCP) -> Iterator[Association]:
    assoc = associate(scp.port, [_cx(ModalityPerformedProcedureStep,
                                     ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])],
                      calling="CT01")
    assert assoc.is_established
    yield assoc
    assoc.release()


def rows(archive: Archive) -> dict[str, Any]:
    """Everything MPPS may change: the steps and the orders, as plain values."""
    with archive.index.read_session() as s:
        steps = [dict(r._mapping) for r in s.execute(sa.text(
            "SELECT * FROM performed_procedure_step ORDER BY sop_instance_uid"))]
        placed = [dict(r._mapping) for r in s.execute(sa.text(
            "SELECT id, status, updated_at FROM imaging_order ORDER BY id"))]
    return {"steps": steps, "orders": placed}


def step_row(archive: Archive, uid: str) -> dict[str, Any]:
    found = [s for s in rows(archive)["steps"] if s["sop_instance_uid"] == uid]
    assert len(found) == 1
    return found[0]


def order_status(archive: Archive, order_id: int) -> str:
    with archive.index.begin() as conn:
        status = orders.status_of(conn, order_id)
    assert status is not None
    return status.value


def utc(text: str) -> datetime:
    """A local time of the region as the index keeps it (UTC)."""
    naive = datetime.strptime(text, "%Y%m%d%H%M%S")
    return naive.replace(tzinfo=ZoneInfo(ZONE)).astimezone(UTC)


def as_utc(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite through a plain text query
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_scheduled_exam_in_progress_then_completed(archive: Archive, modality: Association
                                                    ) -> None:
    order_id, study = place_order(archive, "ACC-MPPS-1")
    uid = new_uid()
    status, _ = modality.send_n_create(in_progress("ACC-MPPS-1", study),
                                       ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000
    row = step_row(archive, uid)
    assert row["status"] == "IN PROGRESS" and row["order_fk"] == order_id
    assert row["station_aet"] == "CT01" and row["modality"] == "CT"
    assert row["study_instance_uid"] == study and row["accession_number"] == "ACC-MPPS-1"
    assert as_utc(row["started_at"]) == utc("20261205101500")  # 09:15 UTC in December
    assert row["ended_at"] is None
    assert order_status(archive, order_id) == "IN PROGRESS"

    # an N-SET while it runs changes what it says, not its start or who it is
    during = Dataset()
    during.PerformedProcedureStepDescription = "CT thorax"
    during.PatientID = "SOMEONE-ELSE"
    status, _ = modality.send_n_set(during, ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000
    row = step_row(archive, uid)
    assert row["status"] == "IN PROGRESS" and row["patient_id"] == "P-MPPS"
    attrs = mpps.from_json(_json(row["attributes"]))
    assert attrs.PerformedProcedureStepDescription == "CT thorax"
    assert attrs.PatientID == "P-MPPS"

    series = new_uid()
    sops = [new_uid() for _ in range(3)]
    status, _ = modality.send_n_set(final("COMPLETED", series, sops),
                                    ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000
    row = step_row(archive, uid)
    assert row["status"] == "COMPLETED"
    assert as_utc(row["ended_at"]) == utc("20261205104500")
    performed = _json(row["performed_series"])
    assert [s["series_instance_uid"] for s in performed] == [series]
    assert [i["sop_instance_uid"] for i in performed[0]["instances"]] == sops
    assert order_status(archive, order_id) == "COMPLETED"

    # a final step cannot change: 0x0110 with Error ID 0xA710; nothing changes
    before = rows(archive)
    again = Dataset()
    again.PerformedProcedureStepStatus = "DISCONTINUED"
    again.PerformedProcedureStepEndDate = "20261205"
    again.PerformedProcedureStepEndTime = "110000"
    status, _ = modality.send_n_set(again, ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0110 and status.ErrorID == 0xA710
    assert "may no longer be updated" in status.ErrorComment
    assert rows(archive) == before

    # the same SOP Instance UID again: 0x0111, the first stays as it was
    status, _ = modality.send_n_create(in_progress("ACC-MPPS-1", study),
                                       ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0111
    assert rows(archive) == before


def test_discontinued_and_unscheduled(archive: Archive, modality: Association) -> None:
    order_id, study = place_order(archive, "ACC-MPPS-2")
    uid = new_uid()
    status, _ = modality.send_n_create(in_progress("ACC-MPPS-2", study),
                                       ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000
    status, _ = modality.send_n_set(final("DISCONTINUED", new_uid(), []),
                                    ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000
    assert step_row(archive, uid)["status"] == "DISCONTINUED"
    assert order_status(archive, order_id) == "DISCONTINUED"

    # no worklist item: kept all the same, linked to nothing; the SCP makes the UID
    known = {s["sop_instance_uid"] for s in rows(archive)["steps"]}
    status, _ = modality.send_n_create(in_progress(None, None),
                                       ModalityPerformedProcedureStep)
    assert status.Status == 0x0000
    (made,) = [s for s in rows(archive)["steps"] if s["sop_instance_uid"] not in known]
    assert made["sop_instance_uid"].startswith("2.25.")
    assert made["order_fk"] is None and made["status"] == "IN PROGRESS"


def test_bad_requests_change_nothing(archive: Archive, modality: Association) -> None:
    order_id, study = place_order(archive, "ACC-MPPS-3")
    before = rows(archive)

    # an N-SET on a step nobody created: 0x0112
    status, _ = modality.send_n_set(final("COMPLETED", new_uid(), []),
                                    ModalityPerformedProcedureStep, new_uid())
    assert status.Status == 0x0112
    # an N-CREATE that is not IN PROGRESS: 0x0106
    for wrong in ("COMPLETED", "STARTED"):
        status, _ = modality.send_n_create(in_progress("ACC-MPPS-3", study, status=wrong),
                                           ModalityPerformedProcedureStep, new_uid())
        assert status.Status == 0x0106, wrong
    # without its start: 0x0120; with a start that is not a date: 0x0106
    no_start = in_progress("ACC-MPPS-3", study)
    del no_start.PerformedProcedureStepStartDate
    status, _ = modality.send_n_create(no_start, ModalityPerformedProcedureStep, new_uid())
    assert status.Status == 0x0120
    status, _ = modality.send_n_create(
        in_progress("ACC-MPPS-3", study, start=("2026-13-45", "1015")),
        ModalityPerformedProcedureStep, new_uid())
    assert status.Status == 0x0106
    assert rows(archive) == before
    assert order_status(archive, order_id) == "SCHEDULED"

    # COMPLETED without an end, or with a status that is none: refused, the step as it was
    uid = new_uid()
    status, _ = modality.send_n_create(in_progress("ACC-MPPS-3", study),
                                       ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000
    before = rows(archive)
    no_end = Dataset()
    no_end.PerformedProcedureStepStatus = "COMPLETED"
    status, _ = modality.send_n_set(no_end, ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0120
    odd = Dataset()
    odd.PerformedProcedureStepStatus = "FINISHED"
    status, _ = modality.send_n_set(odd, ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0106
    assert rows(archive) == before
    assert order_status(archive, order_id) == "IN PROGRESS"


def _json(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value


# -- the rules alone (vna/mpps.py) ---------------------------------------------------------

def test_times_in_the_datasets_offset_else_the_regions_zone() -> None:
    ds = in_progress("A", new_uid(), start=("20260705", "101500"))
    assert mpps.created("1.2.3", ds, ZONE).started_at == datetime(2026, 7, 5, 8, 15, tzinfo=UTC)
    ds.TimezoneOffsetFromUTC = "-0500"
    assert mpps.created("1.2.3", ds, ZONE).started_at == datetime(2026, 7, 5, 15, 15,
                                                                  tzinfo=UTC)
    ds.PerformedProcedureStepStartTime = "1015"  # minutes only: seconds are zero
    assert mpps.created("1.2.3", ds, ZONE).started_at.minute == 15


def test_an_end_before_the_start_is_refused() -> None:
    step = mpps.created("1.2.3", in_progress("A", new_uid()), ZONE)
    end = final("COMPLETED", new_uid(), [])
    end.PerformedProcedureStepEndTime = "090000"  # started 10:15
    with pytest.raises(mpps.MppsRefused) as refused:
        mpps.updated("1.2.3", step.dataset, end, ZONE)
    assert refused.value.status == 0x0106
