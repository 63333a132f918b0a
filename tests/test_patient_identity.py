"""Patient identity on ingest: an instance is filed under the patient its own header names,
never under another (VNA_PATIENT_CONFLICT), on every ingest path and both backends.

Identity is PatientID plus IssuerOfPatientID; an empty issuer matches any issuer.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from services.runtime import open_archive
from storage.archive import Archive
from storage.index.models import Instance, Series, Study
from storage.index.query import FindQuery, find
from tests import dicom_client as dc
from tests.api_client import start_api, stop_api
from tests.conftest import VNA, Backend, running_scp, vna_env
from tests.factory import make_instance, write
from vna.dicom.attributes import Level
from vna.dicom.identity import ConflictPolicy, PatientIdentity

ROOT = "1.2.826.0.1.3680043.8.498.9100"
STATUS_PATIENT_CONFLICT = 0xA778
STATUS_UID_CONFLICT = 0xC001


def _file(tmp: Path, *, patient: str, study: str, series: str | None = None,
          sop: str | None = None, issuer: str | None = None, **extra: Any) -> Path:
    series = series or f"{study}.1"
    sop = sop or _sop(series, patient)
    if issuer is not None:
        extra["IssuerOfPatientID"] = issuer
    ds = make_instance(patient_id=patient, study_uid=study, series_uid=series, sop_uid=sop,
                       **extra)
    return write(ds, tmp / f"{study}-{sop}-{patient}-{issuer}.dcm")


def _sop(series: str, patient: str) -> str:
    """A SOP Instance UID per patient in a series (digits only, as UIDs are)."""
    return f"{series}.{sum(map(ord, patient))}"


def _counts(archive: Archive) -> tuple[int, int, int]:
    with archive.index.read_session() as s:
        return tuple(int(s.execute(select(func.count()).select_from(m)).scalar_one())
                     for m in (Study, Series, Instance))  # type: ignore[return-value]


def _studies_of(archive: Archive, patient_id: str) -> list[dict[str, Any]]:
    with archive.index.read_session() as s:
        return find(s, FindQuery.from_identifier(Level.STUDY, [
            ("PatientID", patient_id), ("StudyInstanceUID", None),
            ("NumberOfStudyRelatedInstances", None)]))


def _instances_of(archive: Archive, patient_id: str) -> list[str]:
    with archive.index.read_session() as s:
        return sorted(r["SOPInstanceUID"] for r in find(s, FindQuery.from_identifier(
            Level.IMAGE, [("PatientID", patient_id), ("SOPInstanceUID", None)])))


def _object_exists(archive: Archive, path: Path) -> bool:
    from storage.archive import prepare

    return archive.store.exists(prepare(path).key)


# -- the defect: an instance of patient B filed in patient A's study -------------------------

@pytest.mark.parametrize("also_query", [False, True], ids=["fastpath", "pynetdicom"])
def test_instance_of_another_patient_in_a_known_study_is_refused(
        backend: Backend, tmp_path: Path, also_query: bool) -> None:
    study = f"{ROOT}.1"
    a = _file(tmp_path, patient="PAT-A", study=study)
    b = _file(tmp_path, patient="PAT-B", study=study)
    with running_scp(backend) as scp:
        assert dc.store(scp.port, [a], also_query=also_query) == [0]
        [rsp] = dc.store_responses(scp.port, [b], also_query=also_query)
        assert rsp.Status == STATUS_PATIENT_CONFLICT
        comment = str(rsp.ErrorComment)
        assert study in comment and "PAT-A" in comment and "PAT-B" in comment
        # the association stays usable, and B's own study is taken
        b_elsewhere = _file(tmp_path, patient="PAT-B", study=f"{ROOT}.2")
        assert dc.store(scp.port, [b_elsewhere, b], also_query=also_query) == \
            [0, STATUS_PATIENT_CONFLICT]

        status, found = dc.find(scp.port, "IMAGE", {"StudyInstanceUID": study,
                                                    "SeriesInstanceUID": f"{study}.1",
                                                    "SOPInstanceUID": "", "PatientID": ""})
        assert status == 0
        assert [(str(r.SOPInstanceUID), str(r.PatientID)) for r in found] == \
            [(_sop(f"{study}.1", "PAT-A"), "PAT-A")]
        status, found = dc.find(scp.port, "STUDY", {"PatientID": "PAT-B",
                                                    "StudyInstanceUID": ""})
        assert [str(r.StudyInstanceUID) for r in found] == [f"{ROOT}.2"]

    archive = open_archive(backend.settings())  # type: ignore[arg-type]
    try:
        assert _counts(archive) == (2, 2, 2)
        assert not _object_exists(archive, b)
    finally:
        archive.index.dispose()
    assert [p for p in (backend.data_dir / "incoming").rglob("*") if p.is_file()] == []

    api = start_api(backend)
    try:
        client = api.client()
        timeline = client.get("/api/v1/patients/PAT-B/timeline").json()["items"]
        assert [i["studyInstanceUid"] for i in timeline if i["kind"] == "study"] == \
            [f"{ROOT}.2"]
        rules = {r["rule"]: r for r in client.get("/api/v1/stats/quality").json()["rules"]}
        assert rules["patient_conflict"]["count"] == 2
        assert rules["patient_conflict"]["examples"] == [study]
    finally:
        stop_api(api)


def test_storescu_hears_the_refusal(embedded: Backend, tmp_path: Path,
                                    dcmtk_env: dict[str, str]) -> None:
    study = f"{ROOT}.3"
    a = _file(tmp_path, patient="PAT-A", study=study)
    b = _file(tmp_path, patient="PAT-B", study=study)
    with running_scp(embedded) as scp:
        for path in (a, b):
            p = subprocess.run(["storescu", "-d", "-aec", "VNA", "-aet", "MODALITY",
                                "127.0.0.1", str(scp.port), str(path)],
                               env=dcmtk_env, capture_output=True, text=True, timeout=60)
        out = p.stdout + p.stderr
        assert "DIMSE Status                  : 0xa778" in out, out
        assert f"[Patient ID PAT-B differs from Patient ID PAT-A of the archived " \
               f"Study[uid={study}]]" in out  # DCMTK reads the whole ErrorComment
        assert "Releasing Association" in out  # not aborted: answered and released


def test_accept_files_it_under_the_patient_it_names(embedded: Backend,
                                                      tmp_path: Path) -> None:
    study = f"{ROOT}.4"
    a = _file(tmp_path, patient="PAT-A", study=study)
    b = _file(tmp_path, patient="PAT-B", study=study)
    with running_scp(embedded, VNA_PATIENT_CONFLICT="accept") as scp:
        assert dc.store(scp.port, [a, b]) == [0, 0]
    archive = open_archive(embedded.settings())  # type: ignore[arg-type]
    try:
        assert _studies_of(archive, "PAT-A") == [
            {"PatientID": "PAT-A", "StudyInstanceUID": study,
             "NumberOfStudyRelatedInstances": 1}]
        assert _studies_of(archive, "PAT-B") == [
            {"PatientID": "PAT-B", "StudyInstanceUID": study,
             "NumberOfStudyRelatedInstances": 1}]
        assert _instances_of(archive, "PAT-B") == [_sop(f"{study}.1", "PAT-B")]
        assert _instances_of(archive, "PAT-A") == [_sop(f"{study}.1", "PAT-A")]
    finally:
        archive.index.dispose()


# -- the rule itself, on the archive's one ingest path -----------------------------------------

def test_an_empty_issuer_matches_any_issuer(archive: Archive, tmp_path: Path) -> None:
    study = f"{ROOT}.5"
    assert archive.store_file(_file(tmp_path, patient="P1", study=study, sop=f"{study}.1.1"),
                              source_aet="T").outcome == "stored"
    assert archive.store_file(_file(tmp_path, patient="P1", study=study, sop=f"{study}.1.2",
                                    issuer="HOSP-X"), source_aet="T").outcome == "stored"
    assert _counts(archive) == (1, 1, 2)
    other = f"{ROOT}.6"
    assert archive.store_file(_file(tmp_path, patient="P2", study=other, sop=f"{other}.1.1",
                                    issuer="HOSP-X"), source_aet="T").outcome == "stored"
    res = archive.store_file(_file(tmp_path, patient="P2", study=other, sop=f"{other}.1.2",
                                   issuer="HOSP-Y"), source_aet="T")
    assert res.outcome == "patient_conflict"
    assert "HOSP-Y" in (res.reason or "") and "HOSP-X" in (res.reason or "")
    assert _counts(archive) == (2, 2, 3)


def test_a_known_sop_instance_sent_again_under_another_patient_or_study(
        archive: Archive, tmp_path: Path) -> None:
    study, sop = f"{ROOT}.7", f"{ROOT}.7.1.1"
    first = _file(tmp_path, patient="PAT-A", study=study, sop=sop)
    assert archive.store_file(first, source_aet="T").outcome == "stored"
    # the same SOP Instance UID for another patient, in another study
    other_patient = _file(tmp_path, patient="PAT-B", study=f"{ROOT}.8", sop=sop)
    res = archive.store_file(other_patient, source_aet="T")
    assert res.outcome == "patient_conflict"
    assert "PAT-A" in (res.reason or "") and "PAT-B" in (res.reason or "")
    # the same patient, another study
    other_study = _file(tmp_path, patient="PAT-A", study=f"{ROOT}.9", sop=sop)
    res = archive.store_file(other_study, source_aet="T")
    assert res.outcome == "conflict"
    assert study in (res.reason or "")
    assert _counts(archive) == (1, 1, 1)
    for path in (other_patient, other_study):
        assert not _object_exists(archive, path)
    assert archive.store_file(first, source_aet="T").outcome == "duplicate"


@pytest.mark.parametrize("policy", ["reject", "accept"])
def test_a_known_series_sent_under_another_study(archive: Archive, tmp_path: Path,
                                                 policy: str) -> None:
    archive.writer.policy = ConflictPolicy(policy)
    series = f"{ROOT}.10.1"
    assert archive.store_file(_file(tmp_path, patient="P", study=f"{ROOT}.10", series=series,
                                    sop=f"{series}.1"), source_aet="T").outcome == "stored"
    moved = _file(tmp_path, patient="P", study=f"{ROOT}.11", series=series, sop=f"{series}.2")
    res = archive.store_file(moved, source_aet="T")
    if policy == "reject":
        assert res.outcome == "conflict"
        assert f"{ROOT}.10" in (res.reason or "")
        assert _counts(archive) == (1, 1, 1)
        assert not _object_exists(archive, moved)
    else:  # filed under the study its own header names
        assert res.outcome == "stored"
        assert _counts(archive) == (2, 2, 2)
        with archive.index.read_session() as s:
            [st] = find(s, FindQuery.from_identifier(Level.IMAGE, [
                ("SOPInstanceUID", f"{series}.2"), ("StudyInstanceUID", None)]))
        assert st["StudyInstanceUID"] == f"{ROOT}.11"


def test_import_refuses_an_instance_of_another_patient(backend: Backend,
                                                       tmp_path: Path) -> None:
    study = f"{ROOT}.12"
    src = tmp_path / "legacy"
    _file(src, patient="PAT-A", study=study, sop=f"{study}.1.1")
    _file(src, patient="PAT-A", study=study, sop=f"{study}.1.2")
    b = _file(src, patient="PAT-B", study=study, sop=f"{study}.1.3")
    p = subprocess.run([*VNA, "import", str(src)], env=vna_env({**backend.env, "COLUMNS": "400"}),
                       capture_output=True, text=True, timeout=120,
                       cwd=backend.data_dir.parent.as_posix())
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert b.name in out and "PAT-B" in out
    archive = open_archive(backend.settings())  # type: ignore[arg-type]
    try:
        assert _instances_of(archive, "PAT-A") == [f"{study}.1.1", f"{study}.1.2"]
        assert _instances_of(archive, "PAT-B") == []
        assert not _object_exists(archive, b)
    finally:
        archive.index.dispose()


def test_two_senders_racing_two_patients_into_new_studies(backend: Backend,
                                                          tmp_path: Path) -> None:
    """Each new study goes to whichever patient's instance is committed first; the other
    is refused, even when both arrive at the same moment on two SCP processes."""
    studies = [f"{ROOT}.20.{i}" for i in range(12)]
    sent = {pid: [_file(tmp_path / pid, patient=pid, study=s) for s in studies]
            for pid in ("PAT-A", "PAT-B")}
    statuses: dict[str, list[int]] = {}
    with running_scp(backend) as scp:
        start = threading.Barrier(2)

        def send(pid: str) -> None:
            start.wait()
            statuses[pid] = [dc.store(scp.port, [f])[0] for f in sent[pid]]

        threads = [threading.Thread(target=send, args=(pid,)) for pid in sent]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    for i in range(len(studies)):
        pair = sorted((statuses["PAT-A"][i], statuses["PAT-B"][i]))
        assert pair == [0, STATUS_PATIENT_CONFLICT], (studies[i], pair)
    archive = open_archive(backend.settings())  # type: ignore[arg-type]
    try:
        assert _counts(archive) == (12, 12, 12)
        assert len(_studies_of(archive, "PAT-A")) + len(_studies_of(archive, "PAT-B")) == 12
    finally:
        archive.index.dispose()


def test_identity_rule() -> None:
    a, a_x, a_y = PatientIdentity("A"), PatientIdentity("A", "X"), PatientIdentity("A", "Y")
    assert a.matches(a_x) and a_x.matches(a) and a_x.matches(a_x)
    assert not a_x.matches(a_y)
    assert not a.matches(PatientIdentity("B"))
    assert not PatientIdentity("a").matches(a)  # IDs are compared as sent
    assert str(a_x) == "A (issuer X)" and str(a) == "A"
