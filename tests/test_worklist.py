"""The worklist end to end on both index backends: `POST/GET/DELETE /api/v1/worklist` on a
running `vna api`, and the Modality Worklist C-FIND of a running `vna scp` queried by
pynetdicom and by DCMTK's `findscu -W` (keys and a query file), its answers compared with
DCMTK's own worklist SCP `wlmscpfs` serving the same items from `.wl` files."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityWorklistInformationFind

from tests.api_client import RunningAPI, start_api, stop_api
from tests.conftest import Backend, RunningSCP, free_port, start_scp, stop_scp, wait_port
from tests.dicom_client import _cx, associate

ZONE = ZoneInfo("Europe/Stockholm")  # VNA_TIMEZONE's default: the worklist's local day
DAY = datetime(2026, 11, 20, tzinfo=ZONE)


@dataclass
class Servers:
    api: RunningAPI
    scp: RunningSCP
    backend: Backend


@pytest.fixture(scope="module")
def servers(module_backend: Backend) -> Iterator[Servers]:
    api = start_api(module_backend)
    try:
        scp = start_scp(module_backend)
        try:
            yield Servers(api, scp, module_backend)
        finally:
            stop_scp(scp)
    finally:
        stop_api(api)


def tag() -> str:
    return uuid.uuid4().hex[:6].upper()


def item(t: str, n: int, **extra: Any) -> dict[str, Any]:
    """A worklist item of test run `t` (accession and station unique to the run)."""
    body: dict[str, Any] = {
        "patientId": f"P{t}{n}", "issuerOfPatientId": "HOSP", "patientName": f"Doe^John{n}",
        "patientBirthDate": "1970-01-0" + str(n % 9 + 1), "patientSex": "MF"[n % 2],
        "accessionNumber": f"A{t}{n}", "modality": "CT" if n % 2 else "MR",
        "scheduledStartDateTime": (DAY + timedelta(hours=8 + n)).isoformat(),
        "requestedProcedureDescription": f"procedure {n}",
        "scheduledProcedureStepDescription": f"step {n}",
        "scheduledStationAETitle": f"ST{t}", "scheduledStationName": f"ROOM{n}",
        "scheduledPerformingPhysicianName": "Perf^Doc", "referringPhysicianName": "Ref^Doc",
        "requestingPhysicianName": "Req^Doc", "priority": "HIGH"}
    body.update(extra)
    return body


def place(api: RunningAPI, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    r = (api.client(token) if token else api.client()).post("/api/v1/worklist", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def index_counts(backend: Backend) -> tuple[int, int, list[str]]:
    """(orders, patients, order statuses): 'nothing changed' means all three are equal."""
    from storage.index.db import Index

    settings: Any = backend.settings()
    index = Index(settings.resolved_database_url)
    try:
        with index.read_session() as s:
            return (s.execute(sa.text("SELECT count(*) FROM imaging_order")).scalar_one(),
                    s.execute(sa.text("SELECT count(*) FROM patient")).scalar_one(),
                    list(s.execute(sa.text("SELECT status FROM imaging_order ORDER BY id"))
                         .scalars()))
    finally:
        index.dispose()


def set_status(backend: Backend, order_id: int, *statuses: str) -> None:
    """Move an order on as an MPPS would (the MPPS service is another part of the issue)."""
    from storage.index import orders
    from storage.index.db import Index
    from vna.orders import OrderStatus

    settings: Any = backend.settings()
    index = Index(settings.resolved_database_url)
    try:
        with index.begin() as conn:
            for s in statuses:
                orders.set_status(conn, order_id, OrderStatus(s), now=datetime.now(UTC))
    finally:
        index.dispose()


# -- MWL clients ----------------------------------------------------------------------------

def mwl(port: int, keys: dict[str, Any], sps: dict[str, Any] | None = None, *,
        called: str = "VNA") -> tuple[int, list[Dataset], str]:
    """One MWL C-FIND with pynetdicom: final status, matches, error comment."""
    ident = Dataset()
    for k, v in keys.items():
        setattr(ident, k, v)
    if sps is not None:
        step = Dataset()
        for k, v in sps.items():
            setattr(step, k, v)
        ident.ScheduledProcedureStepSequence = [step]
    assoc = associate(port, [_cx(ModalityWorklistInformationFind, ["1.2.840.10008.1.2.1"])],
                      called=called)
    assert assoc.is_established
    found, final, comment = [], -1, ""
    try:
        for status, ds in assoc.send_c_find(ident, ModalityWorklistInformationFind):
            if status and status.Status in (0xFF00, 0xFF01):
                found.append(ds)
            elif status:
                final = int(status.Status)
                comment = str(status.get("ErrorComment", ""))
    finally:
        assoc.release()
    return final, found, comment


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{args[0]} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def findscu(port: int, env: dict[str, str], out: Path, keys: list[str], *,
            called: str = "VNA", query_file: Path | None = None) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    run(["findscu", "-W", "-aec", called, "-X", "-od", str(out),
         *[a for k in keys for a in ("-k", k)], "127.0.0.1", str(port),
         *([str(query_file)] if query_file else [])], env)
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def flat(ds: Dataset) -> dict[str, str]:
    """A response as keyword -> value, the SPS item's keys as `SPS.keyword`; the Specific
    Character Set left out (wlmscpfs sends none unless told, vna always UTF-8)."""
    out: dict[str, str] = {}
    for elem in ds:
        if elem.keyword == "SpecificCharacterSet" or elem.tag.group == 0x0002:
            continue
        if elem.VR == "SQ":
            for i, it in enumerate(elem.value):
                out.update({f"SPS{i}.{k}": v for k, v in flat(it).items()})
            continue
        out[elem.keyword] = str(elem.value if elem.value is not None else "")
    return out


def accessions(found: list[Dataset]) -> list[str]:
    return sorted(str(d.AccessionNumber) for d in found)


# -- REST -----------------------------------------------------------------------------------

def test_place_read_list_and_cancel(servers: Servers) -> None:
    api, t = servers.api, tag()
    created = place(api, item(t, 1, studyInstanceUID=None))
    assert created["status"] == "SCHEDULED" and created["source"] == "api"
    assert created["accessionNumber"] == f"A{t}1"
    # the defaults of vna.orders: IDs from the accession number, a new 2.25 UID
    assert created["requestedProcedureId"] == created["scheduledProcedureStepId"] == f"A{t}1"
    assert created["studyInstanceUID"].startswith("2.25.")
    assert created["scheduledProcedureStepStartDate"] == "20261120"
    assert created["scheduledProcedureStepStartTime"] == "090000"  # 09:00 in Stockholm
    assert created["patientBirthDate"] == "1970-01-02"
    assert datetime.fromisoformat(created["scheduledStartDateTime"]) == \
        DAY + timedelta(hours=9)
    c = api.client()
    r = c.get(f"/api/v1/worklist/{created['id']}")
    assert r.status_code == 200 and r.json() == created
    second = place(api, item(t, 2))
    listed = c.get("/api/v1/worklist", params={"scheduledStationAETitle": f"ST{t}"}).json()
    assert listed["total"] == 2 and [i["id"] for i in listed["items"]] == \
        [created["id"], second["id"]]
    for params, expected in (
            ({"modality": "MR"}, [second["id"]]),
            ({"date": "2026-11-20"}, [created["id"], second["id"]]),
            ({"date": "2026-11-21"}, []),
            ({"from": "2026-11-19", "to": "2026-11-20"}, [created["id"], second["id"]]),
            ({"patientId": f"P{t}1"}, [created["id"]]),
            ({"accessionNumber": f"A{t}2"}, [second["id"]]),
            ({"status": "CANCELLED"}, []),
            ({"limit": 1, "offset": 1}, [second["id"]])):
        page = c.get("/api/v1/worklist", params={"scheduledStationAETitle": f"ST{t}",
                                                  **params}).json()
        assert [i["id"] for i in page["items"]] == expected, params
    # cancel: kept, CANCELLED, off the Modality Worklist; again changes nothing
    r = c.delete(f"/api/v1/worklist/{created['id']}")
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
    assert c.delete(f"/api/v1/worklist/{created['id']}").json()["status"] == "CANCELLED"
    assert c.get("/api/v1/worklist", params={"status": "CANCELLED",
                                             "scheduledStationAETitle": f"ST{t}"}
                 ).json()["total"] == 1
    status, found, _ = mwl(servers.scp.port, {"AccessionNumber": ""},
                           {"ScheduledStationAETitle": f"ST{t}"})
    assert status == 0 and accessions(found) == [f"A{t}2"]
    status, found, _ = mwl(servers.scp.port, {"AccessionNumber": ""},
                           {"ScheduledStationAETitle": f"ST{t}",
                            "ScheduledProcedureStepStatus": "CANCELED"})
    assert accessions(found) == [f"A{t}1"]
    assert found[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == \
        "CANCELED"


def test_roles_departments_and_audit(servers: Servers) -> None:
    api, t = servers.api, tag()
    before = index_counts(servers.backend)
    for role in ("viewer", "uploader", "reviewer"):
        token = api.token(role)
        assert api.client(token).post("/api/v1/worklist", json=item(t, 1)).status_code == 403
        assert api.client(token).get("/api/v1/worklist").status_code == 403
    assert api.client(None).get("/api/v1/worklist").status_code == 401
    assert api.client(None).post("/api/v1/worklist", json=item(t, 1)).status_code == 401
    assert index_counts(servers.backend) == before
    scheduler = api.token("scheduler")
    placed = place(api, item(t, 1), scheduler)
    assert api.client(scheduler).get(f"/api/v1/worklist/{placed['id']}").status_code == 200
    # a scheduler limited to a department places and sees that department's items only
    rad = api.token("scheduler", ["RAD"])
    assert api.client(rad).post("/api/v1/worklist", json=item(t, 2, department="CARD")
                                ).status_code == 403
    assert api.client(rad).post("/api/v1/worklist", json=item(t, 2)).status_code == 403
    in_rad = place(api, item(t, 3, department="RAD"), rad)
    page = api.client(rad).get("/api/v1/worklist",
                               params={"scheduledStationAETitle": f"ST{t}"}).json()
    assert [i["id"] for i in page["items"]] == [in_rad["id"]]
    assert api.client(rad).get(f"/api/v1/worklist/{placed['id']}").status_code == 403
    assert api.client(rad).delete(f"/api/v1/worklist/{placed['id']}").status_code == 403
    assert api.client(scheduler).delete(f"/api/v1/worklist/{placed['id']}").status_code == 200
    # every access is in the audit trail, under its action, with patient and item
    events = api.client().get("/api/v1/audit", params={"patientId": f"P{t}1"}).json()["events"]
    seen = {(e["action"], e["method"], e["status"], e["resource"]) for e in events}
    assert ("worklist.write", "POST", 201, str(placed["id"])) in seen
    assert ("worklist.read", "GET", 200, str(placed["id"])) in seen
    assert ("worklist.write", "DELETE", 200, str(placed["id"])) in seen
    # refusals are recorded too: outside the departments with the patient, a role that
    # may not place items before its body is read, so without
    events = api.client().get("/api/v1/audit", params={"patientId": f"P{t}2"}).json()["events"]
    assert [(e["action"], e["method"], e["status"]) for e in events] == \
        [("worklist.write", "POST", 403)] * 2
    events = api.client().get("/api/v1/audit", params={"action": "worklist.read"}
                              ).json()["events"]
    assert {(e["method"], e["status"], e["role"]) for e in events} >= \
        {("GET", 403, "viewer"), ("GET", 403, "uploader"), ("GET", 401, None)}


@pytest.mark.parametrize("change, field", [
    ({"modality": "C T"}, "modality"),
    ({"modality": ""}, "modality"),
    ({"accessionNumber": "X" * 17}, "accessionNumber"),
    ({"scheduledStartDateTime": "2026-11-20T10:00:00"}, "scheduledStartDateTime"),
    ({"scheduledStartDateTime": "tomorrow"}, "scheduledStartDateTime"),
    ({"studyInstanceUID": "1.2.abc"}, "studyInstanceUID"),
    ({"patientSex": "X"}, "patientSex"),
    ({"patientId": "A*B"}, "patientId"),
    ({"scheduledStationAETitle": "S" * 17}, "scheduledStationAETitle"),
    ({"referralAt": "2026-11-19T10:00:00"}, "referralAt"),
    ({"department": "no spaces"}, "department"),
    ({"somethingElse": 1}, "somethingElse"),
])
def test_invalid_item_is_422_naming_the_field_and_changes_nothing(
        servers: Servers, change: dict[str, Any], field: str) -> None:
    t = tag()
    before = index_counts(servers.backend)
    r = servers.api.client().post("/api/v1/worklist", json=item(t, 1, **change))
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]
    assert index_counts(servers.backend) == before


def test_existing_accession_or_study_is_409_and_changes_nothing(servers: Servers) -> None:
    api, t = servers.api, tag()
    first = place(api, item(t, 1))
    before = index_counts(servers.backend)
    for body in (item(t, 2, accessionNumber=first["accessionNumber"]),
                 item(t, 3, studyInstanceUID=first["studyInstanceUID"])):
        r = api.client().post("/api/v1/worklist", json=body)
        assert r.status_code == 409, r.text
        assert index_counts(servers.backend) == before  # the new patient is not kept either


def test_racing_posts(servers: Servers) -> None:
    """The same order posted at once: one 201, the others 409; orders of one new patient
    posted at once: all placed, under one patient row."""
    from concurrent.futures import ThreadPoolExecutor

    api, t = servers.api, tag()
    c = api.client()
    with ThreadPoolExecutor(6) as pool:
        same = list(pool.map(lambda _: c.post("/api/v1/worklist", json=item(t, 1)).status_code,
                             range(6)))
        others = list(pool.map(lambda n: c.post("/api/v1/worklist", json=item(
            t, n, patientId=f"R{t}", accessionNumber=f"R{t}{n}")).status_code, range(6)))
    assert sorted(same) == [201] + [409] * 5
    assert others == [201] * 6
    assert c.get("/api/v1/worklist", params={"patientId": f"R{t}"}).json()["total"] == 6
    from storage.index.db import Index

    settings: Any = servers.backend.settings()
    index = Index(settings.resolved_database_url)
    try:
        with index.read_session() as s:
            assert s.execute(sa.text("SELECT count(*) FROM patient WHERE patient_id = :p"),
                             {"p": f"R{t}"}).scalar_one() == 1
    finally:
        index.dispose()


def test_unknown_and_performed_items(servers: Servers) -> None:
    api, t = servers.api, tag()
    c = api.client()
    assert c.get("/api/v1/worklist/999999999").status_code == 404
    assert c.delete("/api/v1/worklist/999999999").status_code == 404
    assert c.get("/api/v1/worklist/abc").status_code == 422
    done = place(api, item(t, 1))
    started = place(api, item(t, 2))
    set_status(servers.backend, done["id"], "IN PROGRESS", "COMPLETED")
    set_status(servers.backend, started["id"], "IN PROGRESS")
    before = index_counts(servers.backend)
    for placed in (done, started):
        r = c.delete(f"/api/v1/worklist/{placed['id']}")
        assert r.status_code == 409, r.text
    assert index_counts(servers.backend) == before
    assert c.get(f"/api/v1/worklist/{done['id']}").json()["status"] == "COMPLETED"
    # neither is on the Modality Worklist; asked for, the states are the SPS terms
    _, found, _ = mwl(servers.scp.port, {"AccessionNumber": ""},
                      {"ScheduledStationAETitle": f"ST{t}"})
    assert found == []
    _, found, _ = mwl(servers.scp.port, {"AccessionNumber": ""},
                      {"ScheduledStationAETitle": f"ST{t}", "ScheduledProcedureStepStatus": "*"})
    assert {str(d.AccessionNumber): d.ScheduledProcedureStepSequence[0]
            .ScheduledProcedureStepStatus for d in found} == \
        {f"A{t}1": "COMPLETED", f"A{t}2": "STARTED"}


# -- Modality Worklist C-FIND ---------------------------------------------------------------

@pytest.fixture(scope="module")
def scheduled(servers: Servers) -> tuple[str, list[dict[str, Any]]]:
    """Six items of one run on one day and the next: CT at odd hours, MR at even ones."""
    t = tag()
    items = [place(servers.api, item(t, n)) for n in range(1, 5)]
    items.append(place(servers.api, item(
        t, 5, patientName="Åström^Örjan", scheduledStartDateTime=(
            DAY + timedelta(days=1, hours=7, minutes=15)).isoformat())))
    items.append(place(servers.api, item(t, 6, patientName="O'Brien^Pat")))
    return t, items


def test_modality_query_and_return_keys(servers: Servers,
                                        scheduled: tuple[str, list[dict[str, Any]]]) -> None:
    t, items = scheduled
    # what a CT sends: its station AE, today, its modality; universal keys are filled in
    status, found, _ = mwl(servers.scp.port, {
        "PatientName": "", "PatientID": "", "IssuerOfPatientID": "", "PatientBirthDate": "",
        "PatientSex": "", "AccessionNumber": "", "ReferringPhysicianName": "",
        "RequestedProcedureID": "", "RequestedProcedureDescription": "",
        "StudyInstanceUID": "", "RequestingPhysician": "", "PatientWeight": None}, {
        "ScheduledStationAETitle": f"ST{t}", "ScheduledProcedureStepStartDate": "20261120",
        "Modality": "CT", "ScheduledProcedureStepStartTime": "", "ScheduledStationName": "",
        "ScheduledPerformingPhysicianName": "", "ScheduledProcedureStepID": "",
        "ScheduledProcedureStepDescription": "", "ScheduledProcedureStepStatus": "",
        "ScheduledProtocolCodeSequence": []})
    assert status == 0
    assert accessions(found) == [f"A{t}1", f"A{t}3"]
    one = next(d for d in found if d.AccessionNumber == f"A{t}1")
    first = items[0]
    assert flat(one) == {
        "PatientName": "Doe^John1", "PatientID": f"P{t}1", "IssuerOfPatientID": "HOSP",
        "PatientBirthDate": "19700102", "PatientSex": "F", "AccessionNumber": f"A{t}1",
        "ReferringPhysicianName": "Ref^Doc", "RequestedProcedureID": f"A{t}1",
        "RequestedProcedureDescription": "procedure 1",
        "StudyInstanceUID": first["studyInstanceUID"], "RequestingPhysician": "Req^Doc",
        "PatientWeight": "", "SPS0.ScheduledStationAETitle": f"ST{t}",
        "SPS0.ScheduledProcedureStepStartDate": "20261120", "SPS0.Modality": "CT",
        "SPS0.ScheduledProcedureStepStartTime": "090000", "SPS0.ScheduledStationName": "ROOM1",
        "SPS0.ScheduledPerformingPhysicianName": "Perf^Doc",
        "SPS0.ScheduledProcedureStepID": f"A{t}1",
        "SPS0.ScheduledProcedureStepDescription": "step 1",
        "SPS0.ScheduledProcedureStepStatus": "SCHEDULED"}
    assert one.SpecificCharacterSet == "ISO_IR 192"
    assert one.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence == []
    # only the keys asked for
    _, found, _ = mwl(servers.scp.port, {"PatientID": f"P{t}2"})
    assert [sorted(flat(d)) for d in found] == [["PatientID"]]
    # a zero-length sequence asks for all of the step's attributes
    _, found, _ = mwl(servers.scp.port, {"PatientID": f"P{t}2"}, {})
    assert flat(found[0])["SPS0.Modality"] == "MR"
    assert flat(found[0])["SPS0.ScheduledStationName"] == "ROOM2"


@pytest.mark.parametrize("keys, sps, expected", [
    ({"PatientName": "doe^john*"}, {}, [1, 2, 3, 4]),  # case-insensitive, as the Q/R
    ({"PatientName": "*JOHN3"}, {}, [3]),
    ({"PatientName": "D?e^John4"}, {}, [4]),
    ({"PatientName": "åström*"}, {}, [5]),  # beyond ASCII
    ({"PatientName": "O'Brien^Pat"}, {}, [6]),
    ({"PatientID": "P{t}2", "IssuerOfPatientID": "HOSP"}, {}, [2]),
    ({"PatientID": "P{t}2", "IssuerOfPatientID": "OTHER"}, {}, []),
    ({"AccessionNumber": "A{t}3"}, {}, [3]),
    ({"AccessionNumber": "A{t}*"}, {"Modality": "MR"}, [2, 4, 6]),
    ({"RequestedProcedureID": "A{t}4"}, {}, [4]),
    ({}, {"ScheduledProcedureStepStartDate": "20261121"}, [5]),
    ({}, {"ScheduledProcedureStepStartDate": "20261120-"}, [1, 2, 3, 4, 5, 6]),
    ({}, {"ScheduledProcedureStepStartDate": "-20261120"}, [1, 2, 3, 4, 6]),
    ({}, {"ScheduledProcedureStepStartTime": "1000-1159"}, [2, 3]),
    ({}, {"ScheduledProcedureStepStartTime": "07"}, [5]),  # the whole hour
    ({}, {"ScheduledProcedureStepStartTime": "-0900"}, [1, 5]),
    ({}, {"ScheduledProcedureStepStartDate": "20261120",
          "ScheduledProcedureStepStartTime": "1100-"}, [3, 4, 6]),
    # a date range with a time range is one date-time range (PS3.4 C.2.2.2.5.1)
    ({}, {"ScheduledProcedureStepStartDate": "20261120-20261121",
          "ScheduledProcedureStepStartTime": "1300-0800"}, [5, 6]),
    ({}, {"ScheduledProcedureStepStartDate": "20261120-",
          "ScheduledProcedureStepStartTime": "1300-"}, [5, 6]),
    ({}, {"ScheduledProcedureStepStartDate": "-20261120",
          "ScheduledProcedureStepStartTime": "-1000"}, [1, 2]),
    ({}, {"ScheduledProcedureStepStartDate": "20261120-20261121",
          "ScheduledProcedureStepStartTime": "07"}, [5]),  # a single time: on its own
    ({}, {"Modality": "CT"}, [1, 3, 5]),
    ({}, {"ScheduledPerformingPhysicianName": "perf^doc"}, [1, 2, 3, 4, 5, 6]),
    ({}, {"ScheduledPerformingPhysicianName": "Other*"}, []),
    ({}, {"ScheduledStationName": "ROOM4"}, [4]),
    ({}, {"ScheduledProcedureStepID": "A{t}6"}, [6]),
])
def test_matching(servers: Servers, scheduled: tuple[str, list[dict[str, Any]]],
                  keys: dict[str, str], sps: dict[str, str], expected: list[int]) -> None:
    t, items = scheduled
    keys = {k: v.format(t=t) for k, v in keys.items()}
    sps = {"ScheduledStationAETitle": f"ST{t}", **{k: v.format(t=t) for k, v in sps.items()}}
    status, found, _ = mwl(servers.scp.port, {"AccessionNumber": "", **keys}, sps)
    assert status == 0
    assert accessions(found) == [f"A{t}{n}" for n in expected]


def test_study_uid_match(servers: Servers, scheduled: tuple[str, list[dict[str, Any]]]) -> None:
    t, items = scheduled
    uids = "\\".join(i["studyInstanceUID"] for i in items[1:3])
    _, found, _ = mwl(servers.scp.port, {"AccessionNumber": "", "StudyInstanceUID": uids})
    assert accessions(found) == [f"A{t}2", f"A{t}3"]


@pytest.mark.parametrize("keys, sps", [
    ({"PatientName": "x' OR '1'='1"}, {}),
    ({"PatientName": "'; DROP TABLE patient;--"}, {}),
    ({"PatientID": "%"}, {}),
    ({"PatientID": "P_____1"}, {}),
    ({"AccessionNumber": "A%"}, {}),
    ({"AccessionNumber": "\\' OR 1=1 --"}, {}),
    ({}, {"ScheduledStationAETitle": "ST%"}),
    ({}, {"Modality": "C_"}),
    ({}, {"ScheduledPerformingPhysicianName": "%"}),
    ({}, {"ScheduledProcedureStepStatus": "%"}),
])
def test_injection_looking_values_match_literally(
        servers: Servers, scheduled: tuple[str, list[dict[str, Any]]],
        keys: dict[str, str], sps: dict[str, str]) -> None:
    before = index_counts(servers.backend)
    status, found, _ = mwl(servers.scp.port, {"AccessionNumber": "", **keys}, sps)
    assert status == 0 and found == []
    assert index_counts(servers.backend) == before
    r = servers.api.client().get("/api/v1/worklist", params={
        "accessionNumber": "A%", "modality": "C_", "scheduledStationAETitle": "x' OR 1=1;--"})
    assert r.status_code == 200 and r.json()["total"] == 0


def test_literal_percent_and_underscore(servers: Servers) -> None:
    api, t = servers.api, tag()
    for n, pid in enumerate((f"Q{t}_1", f"Q{t}X1", f"Q{t}%1")):
        place(api, item(t, n, patientId=pid, patientName=f"Lit%_^Name{n}"))
    for query, expected in ((f"Q{t}_1", [0]), (f"Q{t}%1", [2]), (f"Q{t}?1", [0, 1, 2]),
                            (f"Q{t}*", [0, 1, 2])):
        _, found, _ = mwl(servers.scp.port, {"AccessionNumber": "", "PatientID": query})
        assert accessions(found) == [f"A{t}{n}" for n in expected], query
    _, found, _ = mwl(servers.scp.port, {"AccessionNumber": "", "PatientName": "lit%_*"})
    assert len(accessions(found)) == 3
    _, found, _ = mwl(servers.scp.port, {"AccessionNumber": "", "PatientName": "lit__*"})
    assert found == []


@pytest.mark.parametrize("keys, sps, status", [
    ({}, {"ScheduledProcedureStepStartDate": "2026AB01"}, 0xC000),
    ({}, {"ScheduledProcedureStepStartDate": "20261120-20261121-20261122"}, 0xC000),
    ({}, {"ScheduledProcedureStepStartTime": "25h"}, 0xC000),
    ({"Modality": "CT"}, None, 0xA900),  # an SPS key outside its sequence
])
def test_malformed_identifier(servers: Servers, keys: dict[str, str],
                              sps: dict[str, str] | None, status: int) -> None:
    before = index_counts(servers.backend)
    final, found, comment = mwl(servers.scp.port, {"AccessionNumber": "", **keys}, sps)
    assert (final, found) == (status, [])
    assert comment  # says what was wrong
    assert index_counts(servers.backend) == before


def test_two_sps_items_are_refused(servers: Servers) -> None:
    ident = Dataset()
    ident.AccessionNumber = ""
    a, b = Dataset(), Dataset()
    a.Modality, b.Modality = "CT", "MR"
    ident.ScheduledProcedureStepSequence = [a, b]
    assoc = associate(servers.scp.port,
                      [_cx(ModalityWorklistInformationFind, ["1.2.840.10008.1.2.1"])])
    try:
        statuses = [int(s.Status) for s, _ in
                    assoc.send_c_find(ident, ModalityWorklistInformationFind) if s]
    finally:
        assoc.release()
    assert statuses == [0xA900]


# -- DCMTK: findscu -W, and wlmscpfs on the same items ---------------------------------------

_WL_KEYS = (  # (tag, VR, REST field) of a .wl file; the SPS item's keys are indented
    ("(0008,0050)", "SH", "accessionNumber"), ("(0008,0090)", "PN", "referringPhysicianName"),
    ("(0010,0010)", "PN", "patientName"), ("(0010,0020)", "LO", "patientId"),
    ("(0010,0021)", "LO", "issuerOfPatientId"), ("(0010,0030)", "DA", "patientBirthDate"),
    ("(0010,0040)", "CS", "patientSex"), ("(0020,000d)", "UI", "studyInstanceUID"),
    ("(0032,1032)", "PN", "requestingPhysicianName"),
    ("(0032,1060)", "LO", "requestedProcedureDescription"))
_WL_SPS = (
    ("(0008,0060)", "CS", "modality"), ("(0040,0001)", "AE", "scheduledStationAETitle"),
    ("(0040,0002)", "DA", "scheduledProcedureStepStartDate"),
    ("(0040,0003)", "TM", "scheduledProcedureStepStartTime"),
    ("(0040,0006)", "PN", "scheduledPerformingPhysicianName"),
    ("(0040,0007)", "LO", "scheduledProcedureStepDescription"),
    ("(0040,0009)", "SH", "scheduledProcedureStepId"),
    ("(0040,0010)", "SH", "scheduledStationName"))
_WL_AFTER = (("(0040,1001)", "SH", "requestedProcedureId"),
             ("(0040,1003)", "SH", "priority"))


def wl_dump(it: dict[str, Any]) -> str:
    """A worklist item as a dcmdump text file, from the REST API's answer (dump2dcm input)."""
    def line(t: str, vr: str, value: Any) -> str:
        if vr == "DA" and value and "-" in str(value):
            value = str(value).replace("-", "")
        return f"{t} {vr} [{value or ''}]"

    out = ["(0008,0005) CS [ISO_IR 192]"]
    out += [line(t, vr, it[f]) for t, vr, f in _WL_KEYS]
    out += ["(0040,0100) SQ", "(fffe,e000) -"]
    out += [line(t, vr, it[f]) for t, vr, f in _WL_SPS]
    out += ["(0040,0020) CS [SCHEDULED]", "(fffe,e00d) -", "(fffe,e0dd) -"]
    out += [line(t, vr, it[f]) for t, vr, f in _WL_AFTER]
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def wlmscpfs(scheduled: tuple[str, list[dict[str, Any]]],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """DCMTK's worklist SCP on the same items (called AE title WLM): its port."""
    import os

    _, items = scheduled
    d = tmp_path_factory.mktemp("wlmscpfs")
    db = d / "db" / "WLM"
    db.mkdir(parents=True)
    (db / "lockfile").touch()
    env = {**os.environ, "TCP_NODELAY": "1"}
    for n, it in enumerate(items):
        (d / f"{n}.dump").write_text(wl_dump(it), encoding="utf-8")
        run(["dump2dcm", "-q", str(d / f"{n}.dump"), str(db / f"{n}.wl")], env)
    port = free_port()
    proc = subprocess.Popen(["wlmscpfs", "-csk", "-dfp", str(d / "db"), str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


_RETURN = ["PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
           "ReferringPhysicianName", "RequestedProcedureID", "RequestedProcedureDescription",
           "StudyInstanceUID", "RequestingPhysician", "RequestedProcedurePriority"]
_SPS = "ScheduledProcedureStepSequence[0]."
_SPS_RETURN = ["ScheduledStationAETitle", "ScheduledStationName", "Modality",
               "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
               "ScheduledPerformingPhysicianName", "ScheduledProcedureStepID",
               "ScheduledProcedureStepDescription", "ScheduledProcedureStepStatus"]


@pytest.mark.parametrize("query", [
    ["ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261120",
     "ScheduledProcedureStepSequence[0].Modality=CT"],
    ["PatientName=Doe^John*"],
    ["PatientName=D?e^John2"],
    ["PatientID=P{t}4"],
    ["AccessionNumber=A{t}*"],
    ["RequestedProcedureID=A{t}3"],
    ["ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261121-"],
    ["ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=1000-1200"],
    ["ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261120-20261121",
     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=1300-0800"],
    ["ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=-20261120",
     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=-1000"],
    ["ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261120-",
     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=1300-"],
    ["ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName=Perf*"],
    ["PatientName=O'Brien^Pat"],
    ["PatientID=%"],
])
def test_findscu_answers_like_wlmscpfs(servers: Servers, scheduled: tuple[str, list[Any]],
                                       wlmscpfs: int, dcmtk_env: dict[str, str],
                                       tmp_path: Path, query: list[str]) -> None:
    t, _ = scheduled
    keys = [q.format(t=t) for q in query]
    asked = {k.split("=")[0] for k in keys}
    keys += [k for k in ["AccessionNumber", *_RETURN] if k not in asked]
    keys += [_SPS + k for k in _SPS_RETURN if _SPS + k not in asked]
    if not any(k.startswith(_SPS + "ScheduledStationAETitle") for k in keys):
        keys.append(_SPS + "ScheduledStationAETitle")
    keys = [k if not k.startswith(_SPS + "ScheduledStationAETitle") else
            f"{_SPS}ScheduledStationAETitle=ST{t}" for k in keys]
    ours = findscu(servers.scp.port, dcmtk_env, tmp_path / "vna", keys)
    theirs = findscu(wlmscpfs, dcmtk_env, tmp_path / "wlm", keys, called="WLM")
    assert sorted(map(flat, ours), key=lambda d: d["AccessionNumber"]) == \
        sorted(map(flat, theirs), key=lambda d: d["AccessionNumber"])
    assert ours or query == ["PatientID=%"]


def test_optional_keys_wlmscpfs_does_not_match(
        servers: Servers, scheduled: tuple[str, list[Any]], wlmscpfs: int,
        dcmtk_env: dict[str, str], tmp_path: Path) -> None:
    """ScheduledStationName is an optional matching key (PS3.4 Table K.6-1): vna matches
    it, wlmscpfs returns every item; otherwise the answers are the same."""
    t, _ = scheduled
    keys = ["AccessionNumber", f"{_SPS}ScheduledStationAETitle=ST{t}",
            f"{_SPS}ScheduledStationName=ROOM3"]
    ours = findscu(servers.scp.port, dcmtk_env, tmp_path / "vna", keys)
    theirs = findscu(wlmscpfs, dcmtk_env, tmp_path / "wlm", keys, called="WLM")
    assert [flat(d) for d in ours] == [
        d for d in map(flat, theirs) if d["SPS0.ScheduledStationName"] == "ROOM3"]
    assert len(theirs) == 6


def test_findscu_query_file(servers: Servers, scheduled: tuple[str, list[Any]],
                            wlmscpfs: int, dcmtk_env: dict[str, str], tmp_path: Path) -> None:
    """A query as a modality keeps one: a DICOM file made by dump2dcm."""
    t, _ = scheduled
    (tmp_path / "query.dump").write_text("\n".join([
        "(0008,0050) SH []", "(0010,0010) PN []", "(0010,0020) LO []",
        "(0020,000d) UI []", "(0040,0100) SQ", "(fffe,e000) -",
        "(0008,0060) CS [MR]", f"(0040,0001) AE [ST{t}]", "(0040,0002) DA [20261120]",
        "(0040,0003) TM []", "(0040,0009) SH []", "(fffe,e00d) -", "(fffe,e0dd) -",
        "(0040,1001) SH []"]) + "\n")
    query = tmp_path / "query.dcm"
    run(["dump2dcm", "-q", str(tmp_path / "query.dump"), str(query)], dcmtk_env)
    ours = findscu(servers.scp.port, dcmtk_env, tmp_path / "vna", [], query_file=query)
    theirs = findscu(wlmscpfs, dcmtk_env, tmp_path / "wlm", [], called="WLM",
                     query_file=query)
    assert sorted(str(d.AccessionNumber) for d in ours) == [f"A{t}2", f"A{t}4", f"A{t}6"]
    assert sorted(map(flat, ours), key=lambda d: d["AccessionNumber"]) == \
        sorted(map(flat, theirs), key=lambda d: d["AccessionNumber"])


# -- the domain, without a server ------------------------------------------------------------

def _ident(sps: dict[str, Any] | None = None, **keys: Any) -> Dataset:
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    if sps is not None:
        step = Dataset()
        for k, v in sps.items():
            setattr(step, k, v)
        ds.ScheduledProcedureStepSequence = [step]
    return ds


def test_query_parsing() -> None:
    from vna.dicom.matching import Range, Single, Wildcard
    from vna.orders import OrderStatus
    from vna.worklist import START_DATE_TIME, DateTimeRange, WorklistQuery

    q = WorklistQuery.from_identifier(_ident(
        {"ScheduledStationAETitle": "CT1", "ScheduledProcedureStepStartDate": "20261120",
         "ScheduledProcedureStepStartTime": "0800-1200", "Modality": ""},
        PatientName="doe*", PatientID=""))
    assert q.matchers == {"ScheduledStationAETitle": Single("CT1"),
                          "ScheduledProcedureStepStartDate": Single("20261120"),
                          "ScheduledProcedureStepStartTime":
                              Range("080000.000000", "120000.000000"),
                          "PatientName": Wildcard("doe%")}
    assert q.statuses == {OrderStatus.SCHEDULED}
    assert [k for k, _ in q.item_keys] == ["PatientName", "PatientID"]
    q = WorklistQuery.from_identifier(_ident(
        {"ScheduledProcedureStepStartDate": "20261120-",
         "ScheduledProcedureStepStartTime": "-0800",
         "ScheduledProcedureStepStatus": "S*"}))
    assert q.matchers == {START_DATE_TIME: DateTimeRange(("20261120", "000000.000000"), None)}
    assert q.statuses == {OrderStatus.SCHEDULED, OrderStatus.IN_PROGRESS}  # SCHEDULED, STARTED
    q = WorklistQuery.from_identifier(_ident(
        {"ScheduledProcedureStepStatus": "SCHEDULED\\CANCELED"}))
    assert q.statuses == {OrderStatus.SCHEDULED, OrderStatus.CANCELLED}
