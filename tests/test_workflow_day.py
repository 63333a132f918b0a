"""A radiology exam's whole day through `vna up`, every step on its real entry point:

the RIS orders it over HL7 (OMI^O23 over MLLP, naming the station), the modality finds it
on the Modality Worklist (C-FIND), reports the exam started (MPPS N-CREATE), sends its
images (C-STORE), reports the exam ended (MPPS N-SET COMPLETED), asks the archive to commit
to them (Storage Commitment N-ACTION, answered by an N-EVENT-REPORT on the modality's own
SCP), and the reporting system signs the report (ORU^R01 final). The lead times the stats
API then gives are checked against the timestamps the messages carried, known
independently of vna.
"""

from __future__ import annotations

import queue
import random
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hl7
import httpx
import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    StorageCommitmentPushModel,
)

from tests.api_client import ADMIN_TOKEN, wait_for
from tests.conftest import VNA, Backend, free_port, stop_process, vna_env, wait_port
from tests.factory import make_instance
from vna.commitment import PUSH_MODEL_INSTANCE

pytestmark = pytest.mark.timeout(300)

STATION = "CTDAY1"
SECONDS = 1.0  # lead times come back in seconds


@dataclass
class Day:
    """`vna up` with every listener on a port of its own, and the modality's SCP."""

    dicom: int
    http: int
    hl7: int
    reports: queue.Queue[tuple[int, Dataset]]

    def send_hl7(self, text: str) -> str:
        with MLLPClient("127.0.0.1", self.hl7) as client:
            ack = hl7.parse(client.send_message(text).decode())
        return str(ack.segment("MSA")[1])

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.http}", timeout=30,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


@pytest.fixture
def day(backend: Backend, tmp_path: Path) -> Iterator[Day]:
    dicom, http, listener, modality_port = (free_port() for _ in range(4))
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()

    ae = AE(ae_title=STATION)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)

    def on_report(event: Any) -> tuple[int, None]:
        reports.put((event.event_type, event.event_information))
        return 0x0000, None

    server = ae.start_server(("127.0.0.1", modality_port), block=False,
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    env = {**backend.env, "VNA_DICOM_PORT": str(dicom), "VNA_DICOM_HOST": "127.0.0.1",
           "VNA_DICOM_PROCESSES": "1", "VNA_HTTP_PORT": str(http),
           "VNA_HL7_PORT": str(listener), "VNA_HL7_HOST": "127.0.0.1",
           "VNA_ADMIN_TOKEN": ADMIN_TOKEN, "VNA_TIMEZONE": "UTC",
           "VNA_DICOM_PEERS": f"{STATION}@127.0.0.1:{modality_port}",
           "VNA_OUTBOX_POLL_SECONDS": "0.5", "VNA_COMMITMENT_RETRY_SECONDS": "1"}
    if backend.name == "s3-postgres":  # production's shape: a real broker
        env["VNA_BROKER_URL"] = f"redis://127.0.0.1:6379/{random.randint(1, 15)}"
    backend.data_dir.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "up.log"
    proc = subprocess.Popen([*VNA, "up"], env=vna_env(env), stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        for port in (dicom, http, listener):
            wait_port(port, 120)
        yield Day(dicom, http, listener, reports)
    finally:
        stop_process(proc, signal.SIGINT)
        server.shutdown()


# -- what the RIS, the modality and the reporting system send -----------------------------------

def hl7_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000"


def hl7_message(message_type: str, *segments: str) -> str:
    msh = (f"MSH|^~\\&|RIS|HOSP|VNA|REGION|{hl7_time(datetime.now(UTC))}||{message_type}|"
           f"{uuid.uuid4().hex[:20]}|P|2.5")
    return "\r".join([msh, *segments]) + "\r"


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields (1-based) and empty ones between."""
    return name + "|" + "|".join(fields.get(i, "") for i in range(1, max(fields) + 1))


def order_message(patient: str, accession: str, *, referral: datetime, placed: datetime,
                  scheduled: datetime) -> str:
    return hl7_message(
        "OMI^O23",
        seg("PID", {1: "1", 3: f"{patient}^^^HOSP&1.2.752.1&ISO", 5: "Day^Dora",
                    7: "19600101", 8: "F"}),
        seg("PV1", {1: "1", 2: "O", 3: "RAD^^^HOSP", 8: "123^Referrer^Rita"}),
        seg("ORC", {1: "NW", 2: f"PL{accession}", 3: f"FI{accession}",
                    9: hl7_time(placed)}),
        seg("TQ1", {1: "1", 7: hl7_time(scheduled)}),
        seg("OBR", {1: "1", 2: f"PL{accession}", 3: f"FI{accession}",
                    4: "CTTHX^CT thorax^L", 6: hl7_time(referral), 18: accession,
                    24: "CT"}),
        seg("IPC", {1: accession, 5: "CT", 7: "CTDAY", 9: STATION}))


def report_message(patient: str, accession: str, signed: datetime) -> str:
    return hl7_message(
        "ORU^R01",
        seg("PID", {1: "1", 3: f"{patient}^^^HOSP&1.2.752.1&ISO", 5: "Day^Dora"}),
        seg("OBR", {1: "1", 2: f"PL{accession}", 3: f"FI{accession}",
                    4: "CTTHX^CT thorax^L", 18: accession, 22: hl7_time(signed), 25: "F"}))


def dicom_dt(t: datetime) -> tuple[str, str]:
    u = t.astimezone(UTC)
    return u.strftime("%Y%m%d"), u.strftime("%H%M%S")


def mpps_in_progress(item: Dataset, started: datetime) -> Dataset:
    ds = Dataset()
    ds.PatientName = item.PatientName
    ds.PatientID = item.PatientID
    step = Dataset()
    step.AccessionNumber = item.AccessionNumber
    step.StudyInstanceUID = item.StudyInstanceUID
    step.RequestedProcedureID = item.RequestedProcedureID
    step.ScheduledProcedureStepID = item.ScheduledProcedureStepSequence[0] \
        .ScheduledProcedureStepID
    ds.ScheduledStepAttributesSequence = [step]
    ds.PerformedProcedureStepID = "PPS-DAY"
    ds.PerformedStationAETitle = STATION
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = \
        dicom_dt(started)
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    ds.TimezoneOffsetFromUTC = "+0000"
    ds.PerformedSeriesSequence = []
    return ds


def references(sops: list[str]) -> list[Dataset]:
    """Referenced SOP Class and Instance UID items of CT images."""
    refs = []
    for sop in sops:
        ref = Dataset()
        ref.ReferencedSOPClassUID = CTImageStorage
        ref.ReferencedSOPInstanceUID = sop
        refs.append(ref)
    return refs


def mpps_completed(ended: datetime, series_uid: str, sops: list[str]) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = dicom_dt(ended)
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.SeriesDescription = "Thorax"
    series.RetrieveAETitle = "VNA"
    series.ReferencedImageSequence = references(sops)
    ds.PerformedSeriesSequence = [series]
    return ds


def worklist_query(day: Day) -> list[Dataset]:
    ae = AE(ae_title=STATION)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", day.dicom, ae_title="VNA")
    assert assoc.is_established
    query = Dataset()
    for key in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID",
                "RequestedProcedureID", "ReferringPhysicianName"):
        setattr(query, key, "")
    step = Dataset()
    step.ScheduledStationAETitle = STATION
    step.Modality = "CT"
    step.ScheduledProcedureStepStartDate = ""
    step.ScheduledProcedureStepStartTime = ""
    step.ScheduledProcedureStepID = ""
    query.ScheduledProcedureStepSequence = [step]
    found = [ident for status, ident in assoc.send_c_find(query, ModalityWorklistInformationFind)
             if status and status.Status in (0xFF00, 0xFF01)]
    assoc.release()
    return found


def test_an_exams_day_from_order_to_report(day: Day) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    referral = now - timedelta(days=2, hours=3)
    placed = now - timedelta(days=1)
    scheduled = now - timedelta(hours=1)
    started = scheduled + timedelta(minutes=7)
    ended = started + timedelta(minutes=23)
    patient, accession = "DAY" + uuid.uuid4().hex[:8].upper(), "A" + uuid.uuid4().hex[:9]

    # 1. the RIS orders the exam
    assert day.send_hl7(order_message(patient, accession, referral=referral, placed=placed,
                                      scheduled=scheduled)) == "AA"

    # 2. the modality picks it from its worklist
    items = [i for i in worklist_query(day) if i.AccessionNumber == accession]
    assert len(items) == 1
    item = items[0]
    assert item.PatientID == patient and str(item.PatientName) == "Day^Dora"
    sps = item.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledStationAETitle == STATION and sps.Modality == "CT"
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime[:6]) == \
        dicom_dt(scheduled)
    study_uid = str(item.StudyInstanceUID)

    # 3. the exam starts; 4. its images are sent; 5. it ends
    ae = AE(ae_title=STATION)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", day.dicom, ae_title="VNA")
    assert assoc.is_established
    mpps_uid = f"2.25.{uuid.uuid4().int}"
    status, _ = assoc.send_n_create(mpps_in_progress(item, started),
                                    ModalityPerformedProcedureStep, mpps_uid)
    assert status.Status == 0x0000
    assert worklist_query(day) == [] or all(
        i.AccessionNumber != accession for i in worklist_query(day))  # in progress: gone

    series_uid = f"2.25.{uuid.uuid4().int}"
    sops = []
    for n in range(1, 6):
        ds = make_instance(patient_id=patient, patient_name="Day^Dora", study_uid=study_uid,
                           series_uid=series_uid, accession=accession,
                           study_date=dicom_dt(started)[0], study_time=dicom_dt(started)[1],
                           instance_number=n, IssuerOfPatientID="HOSP")
        assert assoc.send_c_store(ds).Status == 0x0000
        sops.append(str(ds.SOPInstanceUID))
    archived = datetime.now(UTC)

    status, _ = assoc.send_n_set(mpps_completed(ended, series_uid, sops),
                                 ModalityPerformedProcedureStep, mpps_uid)
    assert status.Status == 0x0000

    # 6. storage commitment: asked on the modality's association, told on a new one
    request = Dataset()
    request.TransactionUID = f"2.25.{uuid.uuid4().int}"
    request.ReferencedSOPSequence = references(sops)
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                    PUSH_MODEL_INSTANCE)
    assert status.Status == 0x0000
    assoc.release()
    event_type, info = day.reports.get(timeout=60)
    assert event_type == 1, "all committed"
    assert info.TransactionUID == request.TransactionUID
    assert sorted(r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence) == \
        sorted(sops)
    assert "FailedSOPSequence" not in info

    # 7. the report is signed
    signed = now + timedelta(minutes=5)
    assert day.send_hl7(report_message(patient, accession, signed)) == "AA"

    # the order is completed, and the lead times are the ones the messages carried
    with day.api() as api:
        orders = api.get("/api/v1/worklist", params={"accessionNumber": accession,
                                                      "status": "COMPLETED"})
        assert orders.status_code == 200, orders.text

        def chain() -> dict[str, Any] | None:
            r = api.get("/api/v1/stats/leadtimes", params={
                "from": (referral - timedelta(days=1)).date().isoformat(),
                "to": (now + timedelta(days=1)).date().isoformat()})
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body if body["examEndToArchive"]["n"] == 1 else None

        lead = wait_for(chain, 60)  # once the workers have derived the study's facts
        assert lead, "the lead times did not come within 60 s"
    expected = {
        "referralToScheduled": (scheduled - referral).total_seconds(),
        "referralToExam": (started - referral).total_seconds(),
        "scheduledToPerformed": (started - scheduled).total_seconds(),
        "examDuration": (ended - started).total_seconds(),
        "examToReport": (signed - ended).total_seconds(),
    }
    for step, seconds in expected.items():
        got = lead[step]
        assert got["n"] == 1, step
        assert got["p50"] == pytest.approx(seconds, abs=SECONDS), step
        assert got["byModality"]["CT"]["p50"] == pytest.approx(seconds, abs=SECONDS), step
        assert got["byDepartment"]["RAD"]["p50"] == pytest.approx(seconds, abs=SECONDS), step
    # archived when the last image arrived: between the last C-STORE's answer and now
    archive_delay = lead["examEndToArchive"]["p50"]
    assert (archived - ended).total_seconds() - 5 <= archive_delay <= \
        (datetime.now(UTC) - ended).total_seconds() + SECONDS
