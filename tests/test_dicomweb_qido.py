"""QIDO-RS against `vna api` under uvicorn, on files + SQLite and S3 + PostgreSQL: the
independent dicomweb-client library and OHIF's exact study-list and series queries, over
instances archived through the C-STORE ingest path."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.api_client import ADMIN_TOKEN, RunningAPI
from tests.conftest import Backend
from tests.factory import make_instance, write

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def archived(module_backend: Backend, api: RunningAPI,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two patients: A with a CT study of two series (3 + 2 instances, department
    Radiology) and B with an MR study (1 instance, department Lung)."""
    from services.runtime import open_archive

    d = tmp_path_factory.mktemp("qido")
    tag = uuid.uuid4().hex[:8]
    a, b = f"QA{tag}", f"QB{tag}"
    study_a, study_b = f"2.25.{uuid.uuid4().int}", f"2.25.{uuid.uuid4().int}"
    series = [f"2.25.{uuid.uuid4().int}" for _ in range(3)]
    files: list[Path] = []
    for i in range(3):
        files.append(write(make_instance(
            patient_id=a, patient_name="Doe^Johanna", study_uid=study_a, series_uid=series[0],
            instance_number=i + 1, study_date="20240115", accession=f"ACC{tag}",
            InstitutionalDepartmentName="Radiology"), d / f"a0-{i}.dcm"))
    for i in range(2):
        files.append(write(make_instance(
            patient_id=a, patient_name="Doe^Johanna", study_uid=study_a, series_uid=series[1],
            modality="SR" if False else "CT", instance_number=i + 1, study_date="20240115",
            accession=f"ACC{tag}", SeriesNumber=2,
            InstitutionalDepartmentName="Radiology"), d / f"a1-{i}.dcm"))
    files.append(write(make_instance(
        patient_id=b, patient_name="Smith^Anna", study_uid=study_b, series_uid=series[2],
        modality="MR", study_date="20240301", study_time="083000", accession=f"ACB{tag}",
        InstitutionalDepartmentName="Lung"), d / "b.dcm"))
    archive = open_archive(module_backend.settings())
    try:
        results = archive.store_files(files, source_aet="TEST")
    finally:
        archive.index.dispose()
    assert all(r.ok for r in results), results
    return {"a": a, "b": b, "study_a": study_a, "study_b": study_b, "series": series,
            "tag": tag}


def client(api: RunningAPI, token: str = ADMIN_TOKEN) -> DICOMwebClient:
    return DICOMwebClient(f"{api.url}/dicomweb", headers={"Authorization": f"Bearer {token}"})


def values(ds: dict[str, Any], tag: str) -> list[Any]:
    return list(ds.get(tag, {}).get("Value", []))


def test_search_for_studies_by_patient_id(api: RunningAPI, archived: dict[str, Any]) -> None:
    studies = client(api).search_for_studies(search_filters={"PatientID": archived["a"]})
    assert len(studies) == 1
    st = studies[0]
    assert list(st) == sorted(st), "keys in ascending tag order"
    assert values(st, "0020000D") == [archived["study_a"]]
    assert values(st, "00100010") == [{"Alphabetic": "Doe^Johanna"}]
    assert st["00100010"]["vr"] == "PN"
    assert values(st, "00201206") == [2] and values(st, "00201208") == [5]
    assert values(st, "00080061") == ["CT"]
    assert values(st, "00080020") == ["20240115"]
    # dicomweb-client sends a Host header without the port: the URL has the host it named
    [url] = values(st, "00081190")
    assert url.endswith(f"/dicomweb/studies/{archived['study_a']}") and url.startswith("http")
    for tag in ("00080030", "00080050", "00100020", "00100030", "00081030", "00080090"):
        assert tag in st, tag


def test_tag_keys_wildcards_ranges_and_uid_lists(api: RunningAPI,
                                                 archived: dict[str, Any]) -> None:
    c = api.client()
    h = {"Accept": "application/dicom+json"}
    tag = archived["tag"]

    def uids(params: Any) -> set[str]:
        r = c.get("/dicomweb/studies", params=params, headers=h)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/dicom+json")
        return {values(s, "0020000D")[0] for s in r.json()}

    both = {archived["study_a"], archived["study_b"]}
    assert uids({"00100020": archived["a"]}) == {archived["study_a"]}
    assert uids({"AccessionNumber": f"AC*{tag}"}) == both
    assert uids({"AccessionNumber": f"AC?{tag}"}) == both
    # `*` sent URL-encoded (%2A) is the same wildcard
    r = c.get(f"/dicomweb/studies?AccessionNumber=AC%2A{tag}", headers=h)
    assert {values(s, "0020000D")[0] for s in r.json()} == both
    assert uids({"AccessionNumber": f"AC*{tag}", "StudyDate": "20240201-20240331"}) == \
        {archived["study_b"]}
    assert uids({"StudyInstanceUID": f"{archived['study_a']}\\{archived['study_b']}"}) == both
    assert uids({"AccessionNumber": f"AC*{tag}", "ModalitiesInStudy": "MR"}) == \
        {archived["study_b"]}
    assert uids({"PatientName": "doe*", "AccessionNumber": f"AC*{tag}"}) == \
        {archived["study_a"]}
    assert uids({"PatientName": "joh", "fuzzymatching": "true",
                 "AccessionNumber": f"AC*{tag}"}) == {archived["study_a"]}
    assert uids({"PatientName": "joh", "fuzzymatching": "false",
                 "AccessionNumber": f"AC*{tag}"}) == set()


def test_ohif_study_list_and_series_queries(api: RunningAPI, archived: dict[str, Any]) -> None:
    """The requests OHIF 3.13 sends for its study list and its lazy-loaded series."""
    c = api.client()
    h = {"Accept": "application/dicom+json"}
    r = c.get("/dicomweb/studies?limit=101&offset=0&fuzzymatching=false"
              "&includefield=00081030%2C00080060%2C00080090%2C00100030"
              f"&00100020={archived['a']}", headers=h)
    assert r.status_code == 200, r.text
    [st] = r.json()
    assert values(st, "00081030") == ["CT THORAX"]
    r = c.get(f"/dicomweb/studies/{archived['study_a']}/series"
              "?includefield=00080021%2C00080031%2C0008103E%2C00200011", headers=h)
    assert r.status_code == 200, r.text
    series = r.json()
    assert {values(s, "0020000E")[0] for s in series} == set(archived["series"][:2])
    assert {values(s, "00201209")[0] for s in series} == {3, 2}
    assert all(values(s, "00080060") == ["CT"] for s in series)
    assert all(values(s, "0020000D") == [archived["study_a"]] for s in series)


def test_series_and_instances_levels(api: RunningAPI, archived: dict[str, Any]) -> None:
    c = client(api)
    series = c.search_for_series(search_filters={"PatientID": archived["b"]})
    assert [values(s, "00080060") for s in series] == [["MR"]]
    inst = c.search_for_instances(study_instance_uid=archived["study_a"],
                                  series_instance_uid=archived["series"][0])
    assert sorted(values(i, "00200013")[0] for i in inst) == [1, 2, 3]
    assert all(values(i, "00280010") == [8] for i in inst)
    assert len(c.search_for_instances(study_instance_uid=archived["study_a"])) == 5
    every = c.search_for_instances(search_filters={"PatientID": archived["a"]})
    assert len(every) == 5 and all("0020000E" in i and "0020000D" in i for i in every)


def test_limit_offset_and_includefield_all(api: RunningAPI, archived: dict[str, Any]) -> None:
    c = api.client()
    params = {"StudyInstanceUID": archived["study_a"]}
    r = c.get("/dicomweb/studies/" + archived["study_a"] + "/instances",
              params={"limit": "2", "offset": "1"})
    assert r.status_code == 200 and len(r.json()) == 2
    assert "299" in r.headers["warning"], "more results than the limit: a Warning says so"
    r = c.get("/dicomweb/studies/" + archived["study_a"] + "/instances",
              params={"limit": "2", "offset": "4"})
    assert len(r.json()) == 1 and "warning" not in r.headers
    r = c.get("/dicomweb/studies", params={**params, "includefield": "all"})
    [st] = r.json()
    assert values(st, "00080080") == [] or "00080080" in st  # InstitutionName answered
    assert "00101010" in st  # PatientAge: every attribute the index holds


def test_no_match_is_an_empty_array(api: RunningAPI) -> None:
    r = api.client().get("/dicomweb/studies", params={"PatientID": "NOSUCH" + uuid.uuid4().hex})
    assert r.status_code == 200 and r.json() == []


@pytest.mark.parametrize("query", [
    "limit=-1", "limit=abc", "offset=-5", "fuzzymatching=maybe", "NoSuchKeyword=1",
    "FFFFFFFF=1", "PixelData=1", "StudyDate=2024-2025-2026", "SeriesInstanceUID=1.2",
])
def test_bad_queries_are_400_with_json(api: RunningAPI, query: str) -> None:
    r = api.client().get(f"/dicomweb/studies?{query}")
    assert r.status_code == 400, (query, r.status_code, r.text)
    assert "detail" in r.json()


def test_injection_looking_values_match_nothing(api: RunningAPI,
                                                archived: dict[str, Any]) -> None:
    c = api.client()
    for value in ("' OR '1'='1", "%", "_", "\\", "x'; DROP TABLE study; --"):
        r = c.get("/dicomweb/studies", params={"PatientID": value})
        assert r.status_code == 200 and r.json() == [], value
    r = c.get("/dicomweb/studies", params={"PatientID": archived["a"]})
    assert len(r.json()) == 1


def test_huge_limit_is_capped(api: RunningAPI, archived: dict[str, Any]) -> None:
    r = api.client().get("/dicomweb/studies", params={"limit": str(10**12),
                                                      "PatientID": archived["a"]})
    assert r.status_code == 200 and len(r.json()) == 1


def test_access_roles_departments_and_audit(api: RunningAPI, archived: dict[str, Any]) -> None:
    anon = httpx.get(f"{api.url}/dicomweb/studies")
    assert anon.status_code == 401
    uploader = api.client(api.token("uploader"))
    assert uploader.get("/dicomweb/studies").status_code == 403
    lung = api.client(api.token("viewer", ["Lung"]))
    r = lung.get("/dicomweb/studies", params={"AccessionNumber": f"AC*{archived['tag']}"})
    assert r.status_code == 200
    assert [values(s, "0020000D")[0] for s in r.json()] == [archived["study_b"]]
    r = lung.get(f"/dicomweb/studies/{archived['study_a']}/series")
    assert r.status_code == 200 and r.json() == []
    api.client().get("/dicomweb/studies", params={"PatientID": archived["a"]})
    audit = api.client().get("/api/v1/audit", params={"patientId": archived["a"]}).json()
    events = audit.get("events", audit) if isinstance(audit, dict) else audit
    assert any(e.get("action") == "dicomweb.query" and e.get("route") == "/dicomweb/studies"
               for e in events), audit


def test_not_acceptable(api: RunningAPI) -> None:
    r = api.client().get("/dicomweb/studies", headers={"Accept": "application/xml"})
    assert r.status_code == 406 and "detail" in r.json()
