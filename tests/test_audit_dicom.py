"""Every DICOM access in the audit trail, as the HTTP ones: associations (accepted and
rejected), C-STORE on both receive paths (one record per association and study, written
with the instance), C-FIND, C-GET, C-MOVE, listed by `GET /api/v1/audit` with the
protocol and calling AE title filters. On the wire with pynetdicom and DCMTK."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.api_client import RunningAPI, start_api, stop_api, wait_for
from tests.conftest import Backend, RunningSCP, free_port, running_scp
from tests.dicom_client import StoragePeer, echo, find, get, move, store
from tests.factory import make_instance, write


@pytest.fixture
def node(backend: Backend) -> Iterator[tuple[RunningSCP, RunningAPI]]:
    peer_port = free_port()
    with running_scp(backend, VNA_DICOM_PEERS=f"PEER@127.0.0.1:{peer_port}",
                     VNA_DICOM_ALLOWED_AETS="TESTSCU,STORESCU,MODALITY") as scp:
        scp.peer_port = peer_port  # type: ignore[attr-defined]
        api = start_api(backend)
        try:
            yield scp, api
        finally:
            stop_api(api)


def _study(tmp: Path, patient: str, n: int) -> tuple[str, list[Path]]:
    study = generate_uid()
    series = generate_uid()
    return study, [write(make_instance(patient_id=patient, study_uid=study, series_uid=series,
                                       instance_number=i), tmp / f"{patient}-{i}.dcm")
                   for i in range(n)]


def _events(api: RunningAPI, **params: Any) -> list[dict[str, Any]]:
    r = api.client().get("/api/v1/audit", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return list(r.json()["events"])


def test_every_dicom_access_is_audited(node: tuple[RunningSCP, RunningAPI],
                                       tmp_path: Path, dcmtk_env: dict[str, str]) -> None:
    scp, api = node
    study_a, files_a = _study(tmp_path, "AUD-A", 3)
    study_b, files_b = _study(tmp_path, "AUD-B", 2)
    # the storage fast path: one association, two studies
    assert store(scp.port, files_a + files_b) == [0] * 5
    # pynetdicom's path (a C-FIND context too), a duplicate of a stored instance among them
    assert store(scp.port, files_a[:1], also_query=True) == [0]
    # DCMTK storescu
    study_c, files_c = _study(tmp_path, "AUD-C", 2)
    subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "VNA", "127.0.0.1",
                    str(scp.port), *map(str, files_c)], env=dcmtk_env, check=True,
                   capture_output=True, timeout=60)

    # a C-STORE's record is there as soon as it was answered; the count at the release
    def counted() -> list[dict[str, Any]] | None:
        stores = [e for e in _events(api, protocol="dicom", action="dicom.store")]
        return stores if len(stores) == 4 and all(e["instances"] is not None
                                                   for e in stores) else None

    stores = wait_for(counted, 20)
    by_study = {(e["studies"][0], e["instances"]) for e in stores}
    assert by_study == {(study_a, 3), (study_b, 2), (study_a, 1), (study_c, 2)}
    for e in stores:
        assert e["protocol"] == "dicom" and e["method"] == "C-STORE"
        assert e["client"] == "127.0.0.1" and e["outcome"] == "success"
        assert e["patientId"] in ("AUD-A", "AUD-B", "AUD-C")
        assert e["tlsIdentity"] is None  # plain TCP
    assert {e["callingAet"] for e in stores} == {"TESTSCU", "STORESCU"}
    assocs = _events(api, action="dicom.association", callingAet="TESTSCU")
    assert sorted(e["instances"] for e in assocs) == [1, 5]
    assert {s for e in assocs for s in e["studies"]} == {study_a, study_b}

    # C-FIND: one record per patient touched, committed before the answer
    status, matches = find(scp.port, "STUDY", {"PatientID": "AUD-*", "StudyInstanceUID": ""})
    assert status == 0 and len(matches) == 3
    finds = _events(api, action="dicom.find")
    assert {(e["patientId"], tuple(e["studies"])) for e in finds} == {
        ("AUD-A", (study_a,)), ("AUD-B", (study_b,)), ("AUD-C", (study_c,))}
    assert all(e["resource"] == "STUDY PatientID" for e in finds)  # keys, never values

    # C-GET and C-MOVE
    pairs = {(str(make_instance().SOPClassUID), "1.2.840.10008.1.2.1")}
    final, received = get(scp.port, "STUDY", {"StudyInstanceUID": study_b}, pairs)
    assert final is not None and final.Status == 0 and len(received.datasets) == 2
    gets = _events(api, action="dicom.get")
    assert [(e["patientId"], e["studies"], e["instances"]) for e in gets] == [
        ("AUD-B", [study_b], 2)]
    peer = StoragePeer(scp.peer_port)  # type: ignore[attr-defined]
    try:
        final = move(scp.port, "STUDY", {"StudyInstanceUID": study_c}, "PEER")
        assert final is not None and final.Status == 0
    finally:
        peer.close()
    moves = _events(api, action="dicom.move")
    assert [(e["patientId"], e["instances"]) for e in moves] == [("AUD-C", 2)]

    # a rejected association is recorded as denied
    assoc = echo(scp.port, calling="INTRUDER")
    assert assoc.is_rejected
    rejected = wait_for(lambda: _events(api, callingAet="INTRUDER") or None, 10)
    assert rejected[0]["outcome"] == "denied" and rejected[0]["action"] == "dicom.association"
    # the HTTP trail is in the same table, and the protocol filter separates them
    http = _events(api, protocol="http")
    assert http and all(e["protocol"] == "http" for e in http)


def test_refused_instance_is_counted(node: tuple[RunningSCP, RunningAPI],
                                     tmp_path: Path) -> None:
    """A study refused for another patient: its record says so, nothing else changed."""
    scp, api = node
    study, files = _study(tmp_path, "AUD-X", 1)
    assert store(scp.port, files) == [0]
    other = write(make_instance(patient_id="AUD-Y", study_uid=study), tmp_path / "y.dcm")
    assert store(scp.port, [other]) == [0xA778]

    def done() -> list[dict[str, Any]] | None:
        e = _events(api, action="dicom.store", patientId="AUD-Y")
        return e if e and e[0]["instances"] is not None else None

    refused = wait_for(done, 20)
    assert refused[0]["outcome"] == "refused" and refused[0]["instances"] == 0
    assert refused[0]["status"] == 0xA778  # the status the sender was answered
    status, matches = find(scp.port, "STUDY", {"StudyInstanceUID": study, "PatientID": ""})
    assert [m.PatientID for m in matches] == ["AUD-X"]


def test_mpps_and_worklist_are_audited(node: tuple[RunningSCP, RunningAPI]) -> None:
    """An unscheduled MPPS N-CREATE and a Modality Worklist C-FIND: recorded with the
    calling AE title and the patient."""
    from pynetdicom.sop_class import (
        ModalityPerformedProcedureStep,
        ModalityWorklistInformationFind,
    )

    from tests.dicom_client import _cx, associate
    from tests.test_mpps import in_progress

    scp, api = node
    assoc = associate(scp.port, [_cx(ModalityPerformedProcedureStep, ["1.2.840.10008.1.2"]),
                                 _cx(ModalityWorklistInformationFind, ["1.2.840.10008.1.2"])],
                      calling="MODALITY")
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_create(in_progress(None, None),
                                        ModalityPerformedProcedureStep, generate_uid())
        assert status.Status == 0
        query = Dataset()
        query.PatientID = "P-MPPS"
        query.ScheduledProcedureStepSequence = []
        answers = list(assoc.send_c_find(query, ModalityWorklistInformationFind))
        assert answers[-1][0].Status == 0
    finally:
        assoc.release()
    mpps = _events(api, action="dicom.mpps")
    assert [(e["method"], e["patientId"], e["callingAet"], e["outcome"]) for e in mpps] == [
        ("N-CREATE", "P-MPPS", "MODALITY", "success")]
    assert mpps[0]["route"] == str(ModalityPerformedProcedureStep)
    worklist = _events(api, action="dicom.worklist")
    assert len(worklist) == 1 and worklist[0]["instances"] == 0
