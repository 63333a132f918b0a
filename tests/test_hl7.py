"""The HL7 v2 listener over a real MLLP socket (python-hl7's client) against a running
`vna hl7`, on both index backends: the ACK of each message type, what the index holds
afterwards, a merge followed by C-STOREs (DCMTK storescu and pynetdicom) that still name the
old patient ID, bad input that changes nothing, and the message log over HTTP by role."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
import pytest
import sqlalchemy as sa
from hl7.client import MLLPClient

from tests import dicom_client as dc
from tests.api_client import RunningAPI, start_api, stop_api, upload
from tests.conftest import (
    VNA,
    Backend,
    RunningSCP,
    free_port,
    start_scp,
    stop_process,
    stop_scp,
    vna_env,
    wait_port,
)
from tests.factory import make_instance, write
from tests.media import make_pdf

pytestmark = pytest.mark.timeout(300)


# -- messages --------------------------------------------------------------------------------

def seg(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields (1-based) and empty ones between."""
    return name + "|" + "|".join(fields.get(i, "") for i in range(1, max(fields) + 1))


def msg(message_type: str, *segments: str, control: str | None = None) -> str:
    control = control or uuid.uuid4().hex[:20]
    return "\r".join([f"MSH|^~\\&|RIS|HOSP|VNA|REGION|20261205101010||{message_type}|"
                      f"{control}|P|2.5", *segments]) + "\r"


def pid(patient_id: str, issuer: str = "HOSP", **fields: str) -> str:
    values = {3: f"{patient_id}^^^{issuer}&1.2.752.1&ISO" if issuer else patient_id}
    values.update({int(k[1:]): v for k, v in fields.items()})
    return seg("PID", values)


def new_id(prefix: str = "P") -> str:
    return prefix + uuid.uuid4().hex[:10].upper()


# -- the running services --------------------------------------------------------------------

@dataclass
class RunningHL7:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def send(self, text: str) -> hl7.Message:
        with MLLPClient("127.0.0.1", self.port) as client:
            return hl7.parse(client.send_message(text).decode())


def start_hl7(backend: Backend) -> RunningHL7:
    port = free_port()
    backend.data_dir.mkdir(parents=True, exist_ok=True)
    log = backend.data_dir.parent / f"hl7-{port}.log"
    env = {**backend.env, "VNA_HL7_PORT": str(port), "VNA_HL7_HOST": "127.0.0.1",
           "VNA_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([*VNA, "hl7"], env=vna_env(env), stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, cwd=backend.data_dir.parent,
                            start_new_session=True)
    try:
        wait_port(port, 60)
    except TimeoutError:
        proc.kill()
        raise AssertionError("vna hl7 did not start:\n" + log.read_text()) from None
    return RunningHL7(port, proc, log)


@dataclass
class Services:
    backend: Backend
    hl7: RunningHL7
    scp: RunningSCP
    api: RunningAPI
    engine: sa.Engine

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.engine.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(sql), params).all()]

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Everything a message may change, to show that a refused one changed nothing."""
        return {t: sorted(tuple(map(str, r)) for r in self.rows(f"SELECT * FROM {t}"))
                for t in ("patient", "patient_alias", "study", "series", "instance",
                          "document", "imaging_order", "study_report")}

    def logged(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT message_type, ack_code, error FROM hl7_message ORDER BY id")


@pytest.fixture(scope="module")
def services(module_backend: Backend) -> Iterator[Services]:
    running = start_hl7(module_backend)  # migrates the index first
    scp = start_scp(module_backend)
    api = start_api(module_backend)
    url = module_backend.settings().resolved_database_url  # type: ignore[attr-defined]
    engine = sa.create_engine(url)
    try:
        yield Services(module_backend, running, scp, api, engine)
    finally:
        engine.dispose()
        stop_api(api)
        stop_scp(scp)
        stop_process(running.proc)


def ack_of(answer: hl7.Message) -> tuple[str, str]:
    """(MSA-1, ERR-2's segment^sequence^field) of an ACK."""
    code = str(answer.segment("MSA")(1))
    try:
        err = answer.segment("ERR")
    except KeyError:
        return code, ""
    return code, str(err(2))


def patient_row(s: Services, patient_id: str) -> tuple[Any, ...] | None:
    rows = s.rows("SELECT id, patient_name, patient_birth_date, patient_sex, "
                  "issuer_of_patient_id FROM patient WHERE patient_id = :p", p=patient_id)
    return rows[0] if rows else None


# -- patients ------------------------------------------------------------------------------------

def test_adt_creates_then_updates_the_patient(services: Services) -> None:
    p = new_id()
    answer = services.hl7.send(msg("ADT^A04^ADT_A01", pid(p, f5="Svensson^Anna^Maria",
                                                          f7="19800101", f8="F")))
    assert ack_of(answer) == ("AA", "")
    row = patient_row(services, p)
    assert row is not None and row[1:] == ("Svensson^Anna^Maria", "19800101", "F", "HOSP")
    for event in ("A08", "A01", "A28", "A31"):
        assert ack_of(services.hl7.send(msg(f"ADT^{event}", pid(p, f5=f"Berg^Anna{event}"))))[0] \
            == "AA"
        row = patient_row(services, p)
        assert row is not None and row[1] == f"Berg^Anna{event}"
        assert row[2:4] == ("19800101", "F")  # not sent: left as they were
    # HL7's explicit null ("") clears a value
    services.hl7.send(msg("ADT^A08", pid(p, f8='""')))
    row = patient_row(services, p)
    assert row is not None and row[3] is None
    # C-FIND returns what the HIS said, not what a modality sent
    write(make_instance(patient_id=p, patient_name="Wrong^Name", IssuerOfPatientID="HOSP"),
          services.backend.data_dir.parent / "adt" / "1.dcm")
    assert dc.store(services.scp.port, [services.backend.data_dir.parent / "adt" / "1.dcm"]) \
        == [0]
    status, found = dc.find(services.scp.port, "STUDY", {"PatientID": p, "PatientName": ""})
    assert status == 0 and [str(d.PatientName) for d in found] == ["Berg^AnnaA31"]


def test_the_ack_mirrors_the_sender(services: Services) -> None:
    control = "CTRL" + uuid.uuid4().hex[:8]
    answer = services.hl7.send(msg("ADT^A04", pid(new_id()), control=control))
    msh = answer.segment("MSH")
    assert str(msh(3)) == "VNA" and str(msh(5)) == "RIS" and str(msh(6)) == "HOSP"
    assert str(msh(9)) == "ACK^A04^ACK" and str(msh(12)) == "2.5"
    assert str(answer.segment("MSA")(2)) == control
    assert services.rows("SELECT ack_code, sending_application, message_type, control_id "
                         "FROM hl7_message WHERE control_id = :c", c=control) == [
        ("AA", "RIS", "ADT^A04", control)]


def _dcmtk_store(services: Services, path: Path, dcmtk_env: dict[str, str]) -> None:
    subprocess.run(["storescu", "-aec", "VNA", "-aet", "DCMTKSCU", "127.0.0.1",
                    str(services.scp.port), str(path)], env=dcmtk_env, check=True,
                   capture_output=True, timeout=60)


def test_merge_moves_everything_and_later_stores_follow(
        services: Services, dcmtk_env: dict[str, str]) -> None:
    old, survivor = new_id("OLD"), new_id("SURV")
    work = services.backend.data_dir.parent / f"merge-{old}"
    old_study, survivor_study = f"2.25.{uuid.uuid4().int}", f"2.25.{uuid.uuid4().int}"
    old_series = f"2.25.{uuid.uuid4().int}"
    # the prior patient: a study sent with DCMTK, a document, a worklist item
    _dcmtk_store(services, write(make_instance(
        patient_id=old, IssuerOfPatientID="HOSP", study_uid=old_study,
        series_uid=old_series), work / "old.dcm"), dcmtk_env)
    assert dc.store(services.scp.port, [write(make_instance(
        patient_id=survivor, IssuerOfPatientID="HOSP", study_uid=survivor_study),
        work / "survivor.dcm")]) == [0]
    r = upload(services.api.client(), make_pdf(), {
        "patientId": old, "classCode": "report", "practiceSettingCode": "lung"},
        filename="r.pdf", content_type="application/pdf")
    assert r.status_code == 201, r.text
    accession = new_id("A")[:16]
    assert ack_of(services.hl7.send(msg(
        "ORM^O01", pid(old), seg("ORC", {1: "NW", 2: "PL" + accession}),
        seg("OBR", {1: "1", 4: "CT1^CT thorax", 18: accession, 24: "CT",
                    27: "^^^20261210100000"}))))[0] == "AA"
    old_fk = patient_row(services, old)[0]  # type: ignore[index]

    answer = services.hl7.send(msg("ADT^A40^ADT_A39", pid(survivor, f5="Merged^Name"),
                                   seg("MRG", {1: f"{old}^^^HOSP"})))
    assert ack_of(answer) == ("AA", "")
    survivor_fk = patient_row(services, survivor)[0]  # type: ignore[index]
    assert patient_row(services, old) is None
    assert services.rows("SELECT patient_id, issuer_of_patient_id, survivor_fk, reason "
                         "FROM patient_alias WHERE patient_id = :p", p=old) == [
        (old, "HOSP", survivor_fk, "merge")]
    studies = services.rows("SELECT study_instance_uid FROM study WHERE patient_fk = :f",
                            f=survivor_fk)
    assert sorted(s[0] for s in studies) == sorted([old_study, survivor_study])
    assert services.rows("SELECT count(*) FROM study WHERE patient_fk = :f", f=old_fk) == [(0,)]
    assert services.rows("SELECT patient_id FROM document WHERE unique_id = :u",
                         u=r.json()["uniqueId"]) == [(survivor,)]
    assert services.rows("SELECT patient_fk FROM imaging_order WHERE accession_number = :a",
                         a=accession) == [(survivor_fk,)]

    # later C-STOREs naming the old ID land under the survivor: into the moved study
    # (DCMTK) and as a new study (pynetdicom)
    _dcmtk_store(services, write(make_instance(
        patient_id=old, IssuerOfPatientID="HOSP", study_uid=old_study, series_uid=old_series,
        instance_number=2), work / "old2.dcm"), dcmtk_env)
    new_study = f"2.25.{uuid.uuid4().int}"
    assert dc.store(services.scp.port, [write(make_instance(
        patient_id=old, IssuerOfPatientID="HOSP", study_uid=new_study), work / "old3.dcm")],
        also_query=True) == [0]
    assert dc.store(services.scp.port, [write(make_instance(
        patient_id=old, study_uid=f"2.25.{uuid.uuid4().int}"), work / "old4.dcm")]) == [0]
    assert patient_row(services, old) is None
    owners = services.rows(
        "SELECT DISTINCT s.patient_fk FROM study s WHERE s.study_instance_uid IN (:a, :b)",
        a=old_study, b=new_study)
    assert owners == [(survivor_fk,)]
    assert services.rows(
        "SELECT count(*) FROM instance i JOIN series se ON se.id = i.series_fk "
        "JOIN study st ON st.id = se.study_fk WHERE st.patient_fk = :f", f=survivor_fk) == [(5,)]
    # C-FIND for the old ID finds nothing; the survivor has everything
    assert dc.find(services.scp.port, "STUDY", {"PatientID": old}) == (0, [])
    assert dc.find(services.scp.port, "PATIENT", {"PatientID": old}, model="PATIENT") == (0, [])
    status, found = dc.find(services.scp.port, "STUDY", {"PatientID": survivor,
                                                          "StudyInstanceUID": ""})
    assert status == 0 and len(found) == 4
    # a re-sent A40 is accepted and changes nothing
    before = services.snapshot()
    assert ack_of(services.hl7.send(msg("ADT^A40", pid(survivor),
                                        seg("MRG", {1: f"{old}^^^HOSP"}))))[0] == "AA"
    assert services.snapshot() == before


def test_a47_changes_the_id(services: Services) -> None:
    old, new = new_id("OLD"), new_id("NEW")
    study = f"2.25.{uuid.uuid4().int}"
    work = services.backend.data_dir.parent / f"a47-{old}"
    assert dc.store(services.scp.port, [write(make_instance(
        patient_id=old, IssuerOfPatientID="HOSP", study_uid=study), work / "1.dcm")]) == [0]
    row_fk = patient_row(services, old)[0]  # type: ignore[index]
    assert ack_of(services.hl7.send(msg("ADT^A47^ADT_A30", pid(new),
                                        seg("MRG", {1: f"{old}^^^HOSP"}))))[0] == "AA"
    assert patient_row(services, old) is None
    assert patient_row(services, new)[0] == row_fk  # type: ignore[index]
    assert services.rows("SELECT reason, survivor_fk FROM patient_alias WHERE patient_id = :p",
                         p=old) == [("change_id", row_fk)]
    assert dc.store(services.scp.port, [write(make_instance(
        patient_id=old, IssuerOfPatientID="HOSP", study_uid=study, instance_number=2),
        work / "2.dcm")]) == [0]
    assert services.rows("SELECT patient_fk FROM study WHERE study_instance_uid = :s",
                         s=study) == [(row_fk,)]
    assert dc.find(services.scp.port, "STUDY", {"PatientID": old}) == (0, [])
    assert len(dc.find(services.scp.port, "STUDY", {"PatientID": new})[1]) == 1


# -- orders and reports ----------------------------------------------------------------------------

def order(control: str, patient: str, accession: str, *, message_type: str = "ORM^O01",
          orc5: str = "", extra: tuple[str, ...] = ()) -> str:
    return msg(message_type, pid(patient, f5="Order^Patient"),
               seg("PV1", {2: "O", 3: "RAD^^^HOSP", 8: "123^Referrer^Rita"}),
               seg("ORC", {1: control, 2: "PL" + accession, 3: "FI" + accession, 5: orc5,
                           9: "20261201080000", 12: "555^Orderer^Olle"}),
               seg("OBR", {1: "1", 2: "PL" + accession, 4: "CTTHX^CT thorax^L",
                           6: "20261130120000", 18: accession, 24: "CT",
                           27: "^^^20261210093000^^S"}), *extra)


def order_row(s: Services, accession: str) -> dict[str, Any]:
    with s.engine.connect() as c:
        row = c.execute(sa.text("SELECT * FROM imaging_order WHERE accession_number = :a"),
                        {"a": accession}).mappings().one()
    return dict(row)


def test_orders_place_and_change_worklist_items(services: Services) -> None:
    p, accession = new_id(), new_id("A")[:16]
    assert ack_of(services.hl7.send(order("NW", p, accession)))[0] == "AA"
    row = order_row(services, accession)
    assert row["status"] == "SCHEDULED" and row["modality"] == "CT"
    assert (row["scheduled_date"], row["scheduled_time"]) == ("20261210", "093000.000000")
    assert row["placer_order_number"] == "PL" + accession
    assert row["filler_order_number"] == "FI" + accession
    assert row["requested_procedure_description"] == "CT thorax"
    assert row["department"] == "RAD" and row["priority"] == "STAT"
    assert row["referring_physician_name"] == "Referrer^Rita"
    assert row["requesting_physician_name"] == "Orderer^Olle"
    assert row["source"] == "hl7"
    assert patient_row(services, p) is not None
    # referral (OBR-6) and placer (ORC-9) times, local (Europe/Stockholm, UTC+1) -> UTC
    assert str(row["referral_at"]).startswith("2026-11-30 11:00:00")
    assert str(row["placed_at"]).startswith("2026-12-01 07:00:00")
    assert ack_of(services.hl7.send(order("SC", p, accession, orc5="IP")))[0] == "AA"
    assert order_row(services, accession)["status"] == "IN PROGRESS"
    assert ack_of(services.hl7.send(order("DC", p, accession)))[0] == "AA"
    assert order_row(services, accession)["status"] == "DISCONTINUED"
    # final: a cancel now is refused, nothing changes
    before = services.snapshot()
    assert ack_of(services.hl7.send(order("CA", p, accession))) == ("AE", "ORC^1^1^1")
    assert services.snapshot() == before
    # another order, cancelled
    other = new_id("A")[:16]
    services.hl7.send(order("NW", p, other))
    assert ack_of(services.hl7.send(order("CA", p, other)))[0] == "AA"
    assert order_row(services, other)["status"] == "CANCELLED"


def test_omi_order_with_ipc(services: Services) -> None:
    p, accession = new_id(), new_id("A")[:16]
    study = f"2.25.{uuid.uuid4().int}"
    text = msg("OMI^O23^OMI_O23", pid(p), seg("ORC", {1: "NW", 2: "PL" + accession}),
               seg("TQ1", {7: "20261211141500", 9: "R"}),
               seg("OBR", {1: "1", 4: "MRH^MR head"}),
               seg("IPC", {1: accession, 2: "RP1", 3: study, 4: "SPS1", 5: "MR",
                           7: "MR1", 9: "MRSCANNER1"}))
    assert ack_of(services.hl7.send(text))[0] == "AA"
    row = order_row(services, accession)
    assert (row["modality"], row["study_instance_uid"], row["scheduled_station_aet"],
            row["requested_procedure_id"], row["scheduled_procedure_step_id"],
            row["scheduled_date"], row["priority"]) == (
        "MR", study, "MRSCANNER1", "RP1", "SPS1", "20261211", "ROUTINE")


def test_oru_final_records_the_report_time(services: Services) -> None:
    p, accession = new_id(), new_id("A")[:16]
    services.hl7.send(order("NW", p, accession))
    study = order_row(services, accession)["study_instance_uid"]

    def oru(status: str, when: str) -> str:
        return msg("ORU^R01", pid(p), seg("OBR", {1: "1", 18: accession, 22: when,
                                                  25: status}),
                   seg("OBX", {1: "1", 2: "TX", 5: "No findings", 11: status}))

    assert ack_of(services.hl7.send(oru("P", "20261212090000")))[0] == "AA"
    assert services.rows("SELECT * FROM study_report WHERE accession_number = :a",
                         a=accession) == []  # preliminary: nothing to record
    assert ack_of(services.hl7.send(oru("F", "20261212100000")))[0] == "AA"
    rows = services.rows("SELECT study_instance_uid, reported_at, result_status "
                         "FROM study_report WHERE accession_number = :a", a=accession)
    assert len(rows) == 1 and rows[0][0] == study and rows[0][2] == "F"
    assert str(rows[0][1]).startswith("2026-12-12 09:00:00")
    assert ack_of(services.hl7.send(oru("C", "20261213100000")))[0] == "AA"
    rows = services.rows("SELECT reported_at, result_status FROM study_report "
                         "WHERE accession_number = :a", a=accession)
    assert rows[0][1] == "C" and str(rows[0][0]).startswith("2026-12-12 09:00:00")


# -- bad input ----------------------------------------------------------------------------------

def _bad_inputs() -> dict[str, tuple[str, str, str]]:
    known, other = "KNOWN-BAD", "OTHER-BAD"
    return {
        # name: (message, ACK code, ERR-2)
        "not HL7": ("this is not an HL7 message", "AR", "MSH^1"),
        "missing PID-3": (msg("ADT^A04", seg("PID", {5: "No^Id"})), "AE", "PID^1^3^1"),
        "no PID at all": (msg("ADT^A08", seg("EVN", {1: "A08"})), "AE", "PID^1"),
        "unknown message type": (msg("XYZ^Z99", pid(known)), "AR", "MSH^1^9^1"),
        "unknown event": (msg("ADT^A99", pid(known)), "AR", "MSH^1^9^1"),
        "merge into itself": (msg("ADT^A40", pid(known), seg("MRG", {1: f"{known}^^^HOSP"})),
                              "AE", "MRG^1^1^1"),
        "merge of an unknown patient": (
            msg("ADT^A40", pid(known), seg("MRG", {1: "NOBODY-KNOWS^^^HOSP"})),
            "AE", "MRG^1^1^1"),
        "A47 onto another patient": (msg("ADT^A47", pid(other),
                                         seg("MRG", {1: f"{known}^^^HOSP"})), "AE", "PID^1^3^1"),
        "bad birth date": (msg("ADT^A08", pid(known, f7="1980-01-01")), "AE", "PID^1^7^1"),
        "bad sex": (msg("ADT^A08", pid(known, f8="X")), "AE", "PID^1^8^1"),
        "order without modality": (
            msg("ORM^O01", pid(known), seg("ORC", {1: "NW", 2: "PLX"}),
                seg("OBR", {1: "1", 18: "ACCX", 27: "^^^20261210100000"})), "AE",
            "OBR^1^24^1"),
        "unknown order control": (
            msg("ORM^O01", pid(known), seg("ORC", {1: "ZZ", 2: "PLX"})), "AE", "ORC^1^1^1"),
        "cancel of an unknown order": (
            msg("ORM^O01", pid(known), seg("ORC", {1: "CA", 2: "NO-SUCH-ORDER"})), "AE",
            "ORC^1^2^1"),
        "order with an accession known already": (
            msg("ORM^O01", pid(known), seg("ORC", {1: "NW", 2: "PLY"}),
                seg("OBR", {1: "1", 18: "ACC-BAD-1", 24: "CT", 27: "^^^20261210100000"})),
            "AE", "OBR^1^18^1"),
        "order with a time that is none": (
            msg("ORM^O01", pid(known), seg("ORC", {1: "NW", 2: "PLZ"}),
                seg("OBR", {1: "1", 18: "ACCZ", 24: "CT", 27: "^^^tomorrow"})), "AE",
            "OBR^1^27^1"),
    }


BAD = _bad_inputs()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_ae_or_ar_and_changes_nothing(services: Services, case: str) -> None:
    for setup in (msg("ADT^A04", pid("KNOWN-BAD")), msg("ADT^A04", pid("OTHER-BAD")),
                  order("NW", "KNOWN-BAD", "ACC-BAD-1")):
        services.hl7.send(setup)  # AA the first time, AE (known order) afterwards
    text, code, location = BAD[case]
    before, logged = services.snapshot(), len(services.logged())
    answer = services.hl7.send(text)
    assert ack_of(answer) == (code, location)
    err = answer.segment("ERR")
    assert str(err(3)(1)(3)) == "HL70357" and str(err(4)) == "E" and str(err(8))
    assert services.snapshot() == before
    log = services.logged()
    assert len(log) == logged + 1 and log[-1][1] == code and log[-1][2]


def test_the_connection_survives_bad_blocks(services: Services) -> None:
    """A block without MLLP framing, then a good message on the same connection."""
    import socket

    with socket.create_connection(("127.0.0.1", services.hl7.port)) as s:
        s.sendall(b"garbage without a start block\x1c\r")
        first = s.recv(65536)
        assert b"MSA|AR" in first
        s.sendall(b"\x0b" + msg("ADT^A04", pid(new_id())).encode() + b"\x1c\r")
        second = s.recv(65536)
        assert b"MSA|AA" in second


# -- the message log over HTTP ------------------------------------------------------------------

def test_messages_endpoint_for_admins_only(services: Services) -> None:
    p = new_id()
    services.hl7.send(msg("ADT^A04", pid(p)))
    services.hl7.send(msg("ADT^A40", pid(p), seg("MRG", {1: "NOBODY^^^HOSP"})))
    admin = services.api.client()
    page = admin.get("/api/v1/hl7/messages", params={"patientId": p}).json()
    assert [(m["messageType"], m["ackCode"]) for m in page["messages"]] == [
        ("ADT^A40", "AE"), ("ADT^A04", "AA")]  # newest first
    first = page["messages"][1]
    assert first["sendingApplication"] == "RIS" and first["message"].startswith("MSH|")
    assert page["messages"][0]["error"].startswith("MRG-1")
    only = admin.get("/api/v1/hl7/messages", params={"patientId": p, "ackCode": "AE"}).json()
    assert [m["messageType"] for m in only["messages"]] == ["ADT^A40"]
    adt = admin.get("/api/v1/hl7/messages", params={"messageType": "ADT", "limit": 1}).json()
    assert len(adt["messages"]) == 1 and adt["messages"][0]["messageType"].startswith("ADT^")
    exact = admin.get("/api/v1/hl7/messages", params={"messageType": "ADT^A04",
                                                       "patientId": p}).json()
    assert [m["messageType"] for m in exact["messages"]] == ["ADT^A04"]
    future = admin.get("/api/v1/hl7/messages", params={"from": "2999-01-01T00:00:00Z"}).json()
    assert future["messages"] == []
    past = admin.get("/api/v1/hl7/messages", params={"to": "2000-01-01T00:00:00Z"}).json()
    assert past["messages"] == []
    paged = admin.get("/api/v1/hl7/messages", params={"patientId": p, "offset": 1}).json()
    assert [m["messageType"] for m in paged["messages"]] == ["ADT^A04"]
    assert admin.get("/api/v1/hl7/messages", params={"ackCode": "XX"}).status_code == 422
    assert admin.get("/api/v1/hl7/messages",
                     params={"messageType": "ADT' OR 1=1"}).status_code == 422
    for role in ("viewer", "uploader", "reviewer", "scheduler"):
        r = services.api.client(services.api.token(role)).get("/api/v1/hl7/messages")
        assert r.status_code == 403, role
    assert services.api.client(None).get("/api/v1/hl7/messages").status_code == 401
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = admin.get("/api/v1/audit", params={"action": "hl7.list",
                                                    "patientId": p}).json()["events"]
        if events:
            break
        time.sleep(0.2)
    assert events and events[0]["status"] == 200


# -- inside `vna up` -----------------------------------------------------------------------------

def test_vna_up_runs_the_listener(embedded: Backend, tmp_path: Path) -> None:
    dport, hport, lport = free_port(), free_port(), free_port()
    env = vna_env({**embedded.env, "VNA_DICOM_PORT": str(dport), "VNA_HTTP_PORT": str(hport),
                   "VNA_DICOM_HOST": "127.0.0.1", "VNA_DICOM_PROCESSES": "1",
                   "VNA_HL7_PORT": str(lport), "VNA_HL7_HOST": "127.0.0.1",
                   "VNA_VIEWER_DIR": str(tmp_path)})
    embedded.data_dir.mkdir(parents=True)
    log = tmp_path / "up.log"
    proc = subprocess.Popen([*VNA, "up"], env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_port(lport, 90)
        deadline = time.monotonic() + 60
        while "Ctrl-C" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert f"HL7    mllp://127.0.0.1:{lport}" in text
        assert "/viewer" in text
        listener = RunningHL7(lport, proc, log)
        assert ack_of(listener.send(msg("ADT^A04", pid(new_id()))))[0] == "AA"
    finally:
        stop_process(proc, __import__("signal").SIGINT)
    assert "vna stopped" in log.read_text()
    with pytest.raises(TimeoutError):
        wait_port(lport, 1)


# -- the field mapping itself (no server) ----------------------------------------------------------

def test_fields_are_read_as_documented() -> None:
    from datetime import UTC, datetime

    from vna import hl7 as fields
    from vna.hl7 import Merge, PatientUpdate

    zone = "Europe/Stockholm"
    m = fields.parse(msg("ADT^A08", seg("PID", {
        3: "~77^^^&1.2.752.9&ISO", 5: r"O\T\Hara^Sean^^Jr^Dr", 7: "19650412", 8: "U"})))
    update = fields.read(m, zone)
    assert isinstance(update, PatientUpdate)
    record = update.patient
    assert (record.identity.patient_id, record.identity.issuer) == ("77", "1.2.752.9")
    assert record.name == "O&Hara^Sean^^Dr^Jr" and record.sex == "" and \
        record.birth_date == "19650412"
    merge = fields.read(fields.parse(msg("ADT^A47", pid("N1"), seg("MRG", {1: "O1"}))), zone)
    assert isinstance(merge, Merge) and merge.change_id and merge.prior.issuer == ""
    assert fields.parse_ts("202612051010+0000", zone) == datetime(2026, 12, 5, 10, 10,
                                                                   tzinfo=UTC)
    assert fields.parse_ts("20260705", zone).utcoffset().total_seconds() == 7200  # type: ignore[union-attr]
