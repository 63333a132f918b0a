"""The document archive over real HTTP: `vna api` under uvicorn, on both backends
(filesystem + SQLite, SeaweedFS S3 + PostgreSQL), with real PDF, WAV, MP4 and JPEG files."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.api_client import (
    ADMIN_TOKEN,
    MAX_UPLOAD,
    RunningAPI,
    archive_state,
    start_api,
    stop_api,
    upload,
    wait_for,
)
from tests.conftest import VNA, Backend, vna_env
from tests.factory import make_instance, write
from tests.media import form_body, make_jpeg, make_mp4, make_pdf, make_wav


@pytest.fixture
def patient() -> str:
    """A patient of this test only (tests share the module's archive)."""
    return "19" + str(uuid.uuid4().int)[:10]


def meta(patient: str, **extra: object) -> dict[str, object]:
    return {"patientId": patient, "classCode": "report", "practiceSettingCode": "lung",
            **extra}


def upload_settled(api: RunningAPI, patient: str) -> bool:
    """True once the server has finished with a refused upload for `patient` (its audit
    record is written last, after any clean-up)."""
    events = api.client().get("/api/v1/audit", params={
        "patientId": patient, "action": "document.create"}).json()["events"]
    return bool(events) and events[0]["status"] >= 400


def stored(api: RunningAPI, content: bytes, metadata: dict[str, object], *,
           token: str = ADMIN_TOKEN, **kw: str) -> dict[str, object]:
    r = upload(api.client(token), content, metadata, **kw)
    assert r.status_code == 201, r.text
    return dict(r.json())


# -- the service ----------------------------------------------------------------------------

def test_health_needs_no_token_and_openapi_is_served(api: RunningAPI) -> None:
    anon = api.client(None)
    assert anon.get("/health").json()["status"] == "ok"
    spec = anon.get("/openapi.json").json()
    for path in ("/api/v1/documents", "/api/v1/documents/{uniqueId}/content",
                 "/api/v1/documents/{uniqueId}/review", "/api/v1/documents/{uniqueId}/replace",
                 "/api/v1/patients/{patientId}/timeline", "/api/v1/tokens", "/api/v1/audit"):
        assert path in spec["paths"], path


def test_tokens_roles_and_departments(api: RunningAPI, patient: str) -> None:
    before = archive_state(api.backend)
    pdf = make_pdf()
    assert upload(api.client(None), pdf, meta(patient)).status_code == 401
    r = upload(api.client("vna_not-a-token"), pdf, meta(patient))
    assert r.status_code == 401 and r.json()["detail"]
    viewer = api.token("viewer")
    assert upload(api.client(viewer), pdf, meta(patient)).status_code == 403
    derm_uploader = api.token("uploader", ["dermatology"])
    r = upload(api.client(derm_uploader), pdf, meta(patient))  # department lung
    assert r.status_code == 403, r.text
    assert archive_state(api.backend) == before

    entry = stored(api, pdf, meta(patient), token=api.token("uploader", ["lung"]))
    uid = entry["uniqueId"]
    uploader = api.token("uploader")
    assert api.client(uploader).get(f"/api/v1/documents/{uid}").status_code == 403
    assert api.client(viewer).get(f"/api/v1/documents/{uid}").status_code == 200
    derm_viewer = api.client(api.token("viewer", ["dermatology"]))
    assert derm_viewer.get(f"/api/v1/documents/{uid}").status_code == 403
    assert derm_viewer.get(f"/api/v1/documents/{uid}/content").status_code == 403
    found = derm_viewer.get("/api/v1/documents", params={"patientId": patient}).json()
    assert found["total"] == 0  # FindDocuments stays inside the token's departments
    r = derm_viewer.get("/api/v1/documents", params={"patientId": patient,
                                                     "practiceSettingCode": "lung"})
    assert r.status_code == 403
    # Only admins make tokens; a made token can be revoked.
    assert api.client(viewer).post("/api/v1/tokens", json={"role": "admin"}).status_code == 403
    tokens = api.client().get("/api/v1/tokens").json()
    assert all("token" not in t for t in tokens)  # secrets are never listed
    viewer_id = next(t["id"] for t in tokens if t["role"] == "viewer" and not t["departments"])
    assert api.client().delete(f"/api/v1/tokens/{viewer_id}").status_code == 204
    assert api.client(viewer).get(f"/api/v1/documents/{uid}").status_code == 401


def test_token_create_cli(api: RunningAPI, patient: str) -> None:
    p = subprocess.run([*VNA, "token", "create", "--role", "viewer", "--department", "lung"],
                       env=vna_env(api.backend.env), capture_output=True, text=True,
                       timeout=60, cwd=api.backend.data_dir.parent)
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    assert token.startswith("vna_") and "lung" in p.stderr
    uid = stored(api, make_pdf(), meta(patient))["uniqueId"]
    assert api.client(token).get(f"/api/v1/documents/{uid}").status_code == 200
    bad = subprocess.run([*VNA, "token", "create", "--role", "superuser"],
                         env=vna_env(api.backend.env), capture_output=True, text=True,
                         timeout=60, cwd=api.backend.data_dir.parent)
    assert bad.returncode == 2


# -- upload and retrieve ---------------------------------------------------------------------

MEDIA = {
    "pdf": (make_pdf, "application/pdf", "spirometry.pdf", "spirometry"),
    "wav": (make_wav, "audio/wav", "session-3.wav", "speech-therapy"),
    "mp4": (make_mp4, "video/mp4", "endoscopy.mp4", "surgery"),
    "jpeg": (make_jpeg, "image/jpeg", "mole.jpg", "dermatology"),
}


@pytest.mark.parametrize("kind", sorted(MEDIA))
def test_upload_and_retrieve_real_media(api: RunningAPI, patient: str, kind: str) -> None:
    make, mime_type, filename, department = MEDIA[kind]
    content = make()
    entry = stored(api, content, meta(patient, practiceSettingCode=department,
                                      title=f"a {kind}", mimeType=mime_type),
                   filename=filename, content_type=mime_type)
    assert entry["hash"] == hashlib.sha256(content).hexdigest()
    assert entry["size"] == len(content)
    assert entry["mimeType"] == mime_type
    assert entry["filename"] == filename
    assert entry["availabilityStatus"] == "Approved"
    assert entry["confidentialityCode"] == "N" and entry["languageCode"] == "sv-SE"
    assert str(entry["uniqueId"]).startswith("2.25.")
    assert str(entry["entryUUID"]).startswith("urn:uuid:")
    created = datetime.fromisoformat(str(entry["creationTime"]))
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)
    viewer = api.client(api.token("viewer"))
    uid = entry["uniqueId"]
    assert viewer.get(f"/api/v1/documents/{uid}").json() == entry
    r = viewer.get(f"/api/v1/documents/{uid}/content")
    assert r.status_code == 200 and r.content == content
    assert r.headers["content-type"] == mime_type
    assert r.headers["etag"] == f'"{entry["hash"]}"'
    assert r.headers["content-disposition"].startswith(f'inline; filename="{filename}"')


def test_file_streams_in_chunks_with_metadata_after_the_file(api: RunningAPI,
                                                            patient: str) -> None:
    """A body sent in small pieces, file part first: the archive still checks everything."""
    content = make_mp4(frames=150, size=(320, 240))
    boundary = "vna-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"clip.mp4\"\r\nContent-Type: video/mp4\r\n\r\n").encode()
    tail = (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n"
            f"{json.dumps(meta(patient, classCode='video'))}\r\n--{boundary}--\r\n").encode()

    def body() -> Iterator[bytes]:
        yield head
        for i in range(0, len(content), 1000):
            yield content[i:i + 1000]
        yield tail

    r = api.client().post("/api/v1/documents", content=body(), headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 201, r.text
    assert r.json()["hash"] == hashlib.sha256(content).hexdigest()
    assert r.json()["classCode"] == "video"


def test_ranges_etag_and_disposition(api: RunningAPI, patient: str) -> None:
    content = make_wav(seconds=3)
    size = len(content)
    entry = stored(api, content, meta(patient), filename="tal övning.wav")
    c = api.client(api.token("viewer"))
    url = f"/api/v1/documents/{entry['uniqueId']}/content"
    for header, (start, end) in {"bytes=0-99": (0, 99), "bytes=1000-": (1000, size - 1),
                                 "bytes=-500": (size - 500, size - 1),
                                 f"bytes=10-{size + 50}": (10, size - 1)}.items():
        r = c.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.content == content[start:end + 1], header
        assert r.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert r.headers["accept-ranges"] == "bytes"
    # A player seeking back and forth on one connection.
    for start in (40000, 100, 20000, 0, size - 1):
        r = c.get(url, headers={"Range": f"bytes={start}-{start + 4095}"})
        assert r.status_code == 206 and r.content == content[start:start + 4096]
    r = c.get(url, headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{size}"
    assert "outside" in r.json()["detail"]
    etag = r.headers.get("etag") or c.get(url).headers["etag"]
    assert c.get(url, headers={"If-None-Match": etag}).status_code == 304
    r = c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == content  # stale copy: the whole file
    disposition = c.get(url).headers["content-disposition"]
    assert disposition.startswith('inline; filename="tal ovning.wav"')
    assert "filename*=UTF-8''tal%20%C3%B6vning.wav" in disposition


def test_find_documents(api: RunningAPI, patient: str) -> None:
    base = datetime(2026, 3, 1, 12, tzinfo=UTC)
    made = []
    for i, (cls, dept) in enumerate([("report", "lung"), ("photo", "dermatology"),
                                     ("report", "dermatology"), ("audio", "speech")]):
        made.append(stored(api, make_pdf(text=f"doc {i}"), meta(
            patient, classCode=cls, practiceSettingCode=dept, typeCode=f"t{i}",
            creationTime=(base + timedelta(days=i)).isoformat())))
    other = "1" + patient
    stored(api, make_pdf(), meta(other))
    c = api.client(api.token("viewer"))

    def ids(**params: object) -> list[object]:
        r = c.get("/api/v1/documents", params={"patientId": patient, **params})
        assert r.status_code == 200, r.text
        return [d["uniqueId"] for d in r.json()["documents"]]

    newest_first = [d["uniqueId"] for d in reversed(made)]
    assert ids() == newest_first
    assert ids(classCode="report") == [made[2]["uniqueId"], made[0]["uniqueId"]]
    assert ids(classCode=["photo", "audio"]) == [made[3]["uniqueId"], made[1]["uniqueId"]]
    assert ids(practiceSettingCode="dermatology", typeCode="t1") == [made[1]["uniqueId"]]
    assert ids(creationTimeFrom="2026-03-02T00:00:00Z",
               creationTimeTo="2026-03-03T23:00:00Z") == newest_first[1:3]
    page = c.get("/api/v1/documents", params={"patientId": patient, "limit": 3,
                                              "offset": 3}).json()
    assert page["total"] == 4 and [d["uniqueId"] for d in page["documents"]] == \
        newest_first[3:]
    r = c.get("/api/v1/documents", params={"classCode": "report"})
    assert r.status_code == 400 and "patientId" in r.json()["detail"]
    everyone = api.client().get("/api/v1/documents", params={"classCode": "report",
                                                              "limit": 1000}).json()
    assert {made[0]["uniqueId"], made[2]["uniqueId"]} <= {
        d["uniqueId"] for d in everyone["documents"]}  # an admin may search across patients


# -- lifecycle -------------------------------------------------------------------------------

def test_patient_uploads_wait_for_review(api: RunningAPI, patient: str) -> None:
    portal = api.token("uploader")
    viewer, reviewer = api.client(api.token("viewer")), api.client(api.token("reviewer"))
    photo = stored(api, make_jpeg(), meta(patient, source="patient",
                                         practiceSettingCode="dermatology"), token=portal)
    assert photo["availabilityStatus"] == "Submitted"
    uid = photo["uniqueId"]
    assert viewer.get(f"/api/v1/documents/{uid}").status_code == 404
    assert viewer.get(f"/api/v1/documents/{uid}/content").status_code == 404
    assert viewer.get("/api/v1/documents", params={"patientId": patient}).json()["total"] == 0
    r = viewer.get("/api/v1/documents", params={"patientId": patient,
                                                "availabilityStatus": "Submitted"})
    assert r.status_code == 403
    assert viewer.get(f"/api/v1/patients/{patient}/timeline").json()["items"] == []
    assert viewer.post(f"/api/v1/documents/{uid}/review",
                       json={"decision": "approve"}).status_code == 403
    assert reviewer.get("/api/v1/documents", params={
        "patientId": patient, "availabilityStatus": "Submitted"}).json()["total"] == 1
    r = reviewer.post(f"/api/v1/documents/{uid}/review", json={"decision": "approve"})
    assert r.status_code == 200 and r.json()["availabilityStatus"] == "Approved"
    assert r.json()["review"]["decision"] == "approve"
    assert viewer.get(f"/api/v1/documents/{uid}").status_code == 200
    assert reviewer.post(f"/api/v1/documents/{uid}/review",
                         json={"decision": "reject", "reason": "late"}).status_code == 409

    bad = stored(api, make_jpeg(size=(64, 64)), meta(patient, source="patient"),
                 token=portal)["uniqueId"]
    r = reviewer.post(f"/api/v1/documents/{bad}/review", json={"decision": "reject"})
    assert r.status_code == 422  # a rejection needs a reason
    r = reviewer.post(f"/api/v1/documents/{bad}/review",
                      json={"decision": "reject", "reason": "not the patient's skin"})
    assert r.status_code == 200 and r.json()["availabilityStatus"] == "Rejected"
    for client in (viewer, reviewer):  # kept, but shown to nobody but admins
        assert client.get(f"/api/v1/documents/{bad}").status_code == 404
    kept = api.client().get("/api/v1/documents", params={
        "patientId": patient, "availabilityStatus": "Rejected"}).json()
    assert [d["uniqueId"] for d in kept["documents"]] == [bad]
    assert kept["documents"][0]["review"]["reason"] == "not the patient's skin"
    dept = stored(api, make_pdf(), meta(patient))["uniqueId"]
    assert reviewer.post(f"/api/v1/documents/{dept}/review",
                         json={"decision": "approve"}).status_code == 409


def test_replace_makes_a_new_version(api: RunningAPI, patient: str) -> None:
    v1_pdf = make_pdf(text="first")  # (fpdf2 stamps the creation time: make it once)
    v1 = stored(api, v1_pdf, meta(patient, title="Report"))
    old = v1["uniqueId"]
    v2_pdf = make_pdf(text="second")
    r = upload(api.client(api.token("uploader")), v2_pdf, {"title": "Report, corrected"},
               path=f"/api/v1/documents/{old}/replace", filename="v2.pdf")
    assert r.status_code == 201, r.text
    v2 = r.json()
    assert v2["replaces"] == old and v2["version"] == 2
    assert v2["title"] == "Report, corrected" and v2["classCode"] == "report"
    assert v2["hash"] == hashlib.sha256(v2_pdf).hexdigest()
    viewer = api.client(api.token("viewer"))
    entry = viewer.get(f"/api/v1/documents/{old}").json()
    assert entry["availabilityStatus"] == "Deprecated" and entry["replacedBy"] == v2["uniqueId"]
    assert viewer.get(f"/api/v1/documents/{old}/content").content == v1_pdf
    found = viewer.get("/api/v1/documents", params={"patientId": patient}).json()
    assert [d["uniqueId"] for d in found["documents"]] == [v2["uniqueId"]]
    found = viewer.get("/api/v1/documents", params={"patientId": patient,
                                                    "availabilityStatus": "Deprecated"}).json()
    assert [d["uniqueId"] for d in found["documents"]] == [old]
    before = archive_state(api.backend)
    r = upload(api.client(), make_pdf(), {}, path=f"/api/v1/documents/{old}/replace")
    assert r.status_code == 409  # already replaced
    r = upload(api.client(), make_pdf(), {"patientId": "1" + patient},
               path=f"/api/v1/documents/{v2['uniqueId']}/replace")
    assert r.status_code == 400 and "patientId" in r.json()["detail"]
    assert archive_state(api.backend) == before


# -- timeline --------------------------------------------------------------------------------

def test_patient_timeline(api: RunningAPI, patient: str, tmp_path: object) -> None:
    from services.runtime import open_archive

    archive = open_archive(api.backend.settings())  # type: ignore[arg-type]
    try:
        for i, (date, modality) in enumerate([("20260105", "CT"), ("20260310", "MR")]):
            study = f"1.2.826.0.1.3680043.8.498.77{uuid.uuid4().int % 10**12}"
            ds = make_instance(patient_id=patient, study_uid=study, series_uid=study + ".1",
                               sop_uid=study + ".1.1", modality=modality)
            ds.StudyDate, ds.StudyTime, ds.StudyDescription = date, "101500", f"study {i}"
            path = write(ds, tmp_path / f"{i}.dcm")  # type: ignore[operator]
            assert archive.store_file(path, source_aet="TEST").ok
    finally:
        archive.index.dispose()
    doc = stored(api, make_pdf(), meta(patient, creationTime="2026-02-01T09:00:00Z"))
    newest = stored(api, make_wav(), meta(patient, classCode="audio",
                                          creationTime="2026-04-01T09:00:00Z"))
    r = api.client(api.token("viewer")).get(f"/api/v1/patients/{patient}/timeline")
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["kind"] for i in items] == ["document", "study", "document", "study"]
    assert items[0]["uniqueId"] == newest["uniqueId"]
    assert items[0]["links"]["content"] == f"/api/v1/documents/{newest['uniqueId']}/content"
    assert items[2]["uniqueId"] == doc["uniqueId"]
    assert items[1]["modalities"] == ["MR"] and items[1]["numberOfInstances"] == 1
    assert items[1]["retrieve"]["aeTitle"] == "VNA"
    assert items[3]["studyDescription"] == "study 0"


# -- audit -----------------------------------------------------------------------------------

def test_every_access_is_audited(api: RunningAPI, patient: str) -> None:
    uploader, viewer_token = api.token("uploader"), api.token("viewer")
    viewer = api.client(viewer_token)
    uid = stored(api, make_pdf(), meta(patient), token=uploader)["uniqueId"]
    viewer.get(f"/api/v1/documents/{uid}")
    viewer.get(f"/api/v1/documents/{uid}/content", headers={"Range": "bytes=0-9"})
    viewer.get("/api/v1/documents", params={"patientId": patient})
    viewer.get(f"/api/v1/patients/{patient}/timeline")
    api.client(uploader).get(f"/api/v1/documents/{uid}")  # refused: uploaders read nothing
    events = api.client().get("/api/v1/audit", params={"patientId": patient}).json()["events"]
    seen = [(e["action"], e["role"], e["outcome"], e["status"]) for e in reversed(events)]
    assert seen == [
        ("document.create", "uploader", "success", 201),
        ("document.read", "viewer", "success", 200),
        ("document.content", "viewer", "success", 206),
        ("document.find", "viewer", "success", 200),
        ("timeline.read", "viewer", "success", 200),
    ]
    assert all(e["tokenId"] and e["patientId"] == patient for e in events)
    assert events[-1]["resource"] == uid
    uploader_id = events[-1]["tokenId"]
    denied = api.client().get("/api/v1/audit", params={"tokenId": uploader_id}).json()
    assert [(e["action"], e["outcome"], e["status"], e["resource"])
            for e in denied["events"]][0] == ("document.read", "denied", 403, uid)
    assert api.client(viewer_token).get("/api/v1/audit").status_code == 403
    log = api.logtext()
    assert "GET /api/v1/patients/{patientId}/timeline 200" in log
    assert patient not in log  # no patient IDs in the logs


def test_download_cut_off_by_the_client_is_audited_as_aborted(api: RunningAPI,
                                                             patient: str) -> None:
    content = make_mp4() + bytes(range(256)) * (6 << 12)  # ~6 MiB: more than socket buffers
    uid = stored(api, content, meta(patient, classCode="video"))["uniqueId"]
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.sendall((f"GET /api/v1/documents/{uid}/content HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n").encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200")

    def aborted() -> bool:
        events = api.client().get("/api/v1/audit", params={
            "patientId": patient, "action": "document.content"}).json()["events"]
        return bool(events) and events[0]["outcome"] == "aborted"

    assert wait_for(aborted)
    r = api.client().get(f"/api/v1/documents/{uid}/content")  # the server is fine
    assert r.status_code == 200 and r.content == content


# -- bad input: a clear 4xx and an unchanged archive -----------------------------------------

ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 4000
HTML = b"<!DOCTYPE html><html><head><title>x</title></head><body>" + b"<p>hi</p>" * 300


@pytest.mark.parametrize("case", [
    "broken-json", "missing-fields", "unknown-field", "executable-as-pdf", "html-as-pdf",
    "path-in-filename", "backslash-filename", "sql-in-patient-id", "wildcard-in-patient-id",
    "no-file", "no-metadata", "empty-file", "mime-mismatch", "too-large", "extra-part",
    "not-multipart",
])
def test_bad_upload_is_refused_and_stores_nothing(api: RunningAPI, patient: str,
                                                  case: str) -> None:
    before = archive_state(api.backend)
    c = api.client()
    pdf = make_pdf()
    m = meta(patient)
    expect = {"broken-json": 400, "missing-fields": 422, "unknown-field": 422,
              "executable-as-pdf": 415, "html-as-pdf": 415, "path-in-filename": 400,
              "backslash-filename": 400, "sql-in-patient-id": 422,
              "wildcard-in-patient-id": 422, "no-file": 400, "no-metadata": 400,
              "empty-file": 400, "mime-mismatch": 415, "too-large": 413, "extra-part": 400,
              "not-multipart": 415}[case]
    if case == "broken-json":
        r = upload(c, pdf, '{"patientId": "1912", "classCode": ')
    elif case == "missing-fields":
        r = upload(c, pdf, {"patientId": patient})
    elif case == "unknown-field":
        r = upload(c, pdf, {**m, "patientName": "Tolvan Tolvansson"})
    elif case == "executable-as-pdf":
        r = upload(c, ELF, {**m, "mimeType": "application/pdf"}, filename="report.pdf",
                   content_type="application/pdf")
    elif case == "html-as-pdf":
        r = upload(c, HTML, {**m, "mimeType": "application/pdf"}, filename="report.pdf",
                   content_type="application/pdf")
    elif case == "path-in-filename":
        r = upload(c, pdf, m, filename="../../etc/passwd")
    elif case == "backslash-filename":
        r = upload(c, pdf, m, filename="..\\..\\boot.ini")
    elif case == "sql-in-patient-id":
        r = upload(c, pdf, {**m, "patientId": "1912'; DROP TABLE document;--"})
    elif case == "wildcard-in-patient-id":
        r = upload(c, pdf, {**m, "patientId": "19*"})
    elif case == "no-file":
        r = c.post("/api/v1/documents", data={"metadata": json.dumps(m)},
                   files={"other": ("x", b"y")})
    elif case == "no-metadata":
        r = c.post("/api/v1/documents", files={"file": ("a.pdf", pdf, "application/pdf")})
    elif case == "empty-file":
        r = upload(c, b"", m)
    elif case == "mime-mismatch":
        r = upload(c, make_wav(), {**m, "mimeType": "video/mp4"})
    elif case == "too-large":
        r = upload(c, pdf + b"\0" * MAX_UPLOAD, m)
    elif case == "extra-part":
        r = c.post("/api/v1/documents", data={"metadata": json.dumps(m), "note": "x"},
                   files={"file": ("a.pdf", pdf, "application/pdf")})
    else:
        r = c.post("/api/v1/documents", json=m)
    assert r.status_code == expect, r.text
    detail = r.json()["detail"]
    assert detail and isinstance(detail, str)
    assert archive_state(api.backend) == before


def test_large_upload_refused_midway_leaves_nothing(api: RunningAPI, patient: str) -> None:
    """No Content-Length (chunked): the limit is enforced while the bytes stream in."""
    before = archive_state(api.backend)
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n"
            f"{json.dumps(meta(patient, classCode='video'))}\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"file\"; filename=\"v.mp4\"\r\n\r\n"
            ).encode()
    video = make_mp4()

    def body() -> Iterator[bytes]:
        yield head + video
        for _ in range(MAX_UPLOAD // (1 << 20) + 2):
            yield b"\0" * (1 << 20)
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        r = api.client().post("/api/v1/documents", content=body(), headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413
    except httpx.HTTPError:
        pass  # the server may answer and close before the client finished sending
    assert wait_for(lambda: upload_settled(api, patient))
    assert archive_state(api.backend) == before


@pytest.mark.parametrize("how", ["connection-closed", "body-without-end"])
def test_cut_off_upload_stores_nothing(api: RunningAPI, patient: str, how: str) -> None:
    before = archive_state(api.backend)
    boundary = "cut0ff"
    video = make_mp4(frames=200, size=(320, 240))
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n"
            f"{json.dumps(meta(patient, classCode='video'))}\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"file\"; filename=\"v.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode() + video
    whole = part + f"\r\n--{boundary}--\r\n".encode()
    sent = part[: len(part) * 2 // 3] if how == "connection-closed" else part
    declared = len(whole) if how == "connection-closed" else len(sent)
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.sendall((f"POST /api/v1/documents HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                   f"Content-Length: {declared}\r\n\r\n").encode() + sent)
        if how == "body-without-end":
            s.settimeout(30)
            reply = ""
            while "}" not in reply:  # the JSON error body
                data = s.recv(65536)
                if not data:
                    break
                reply += data.decode(errors="replace")
            assert reply.startswith("HTTP/1.1 400"), reply
            assert "incomplete" in reply
    assert wait_for(lambda: upload_settled(api, patient))
    assert archive_state(api.backend) == before


@pytest.mark.parametrize("bad", ["19%25", "1912'--", "19*", "a b", "x" * 200, "1.2;3"])
def test_bad_patient_id_in_queries(api: RunningAPI, bad: str) -> None:
    c = api.client()
    r = c.get("/api/v1/documents", params={"patientId": bad})
    assert r.status_code == 422 and "patientId" in r.json()["detail"]
    r = c.get(f"/api/v1/patients/{quote(bad, safe='')}/timeline")
    assert r.status_code == 422 and "patientId" in r.json()["detail"]


def test_unknown_document_is_404(api: RunningAPI) -> None:
    c = api.client()
    assert c.get("/api/v1/documents/2.25.1").status_code == 404
    assert c.get("/api/v1/documents/2.25.1/content").status_code == 404
    assert c.get("/api/v1/documents/..%2F..%2Fetc/content").status_code == 404  # no route
    assert c.get("/api/v1/documents/2.25.x").status_code == 422


def _multipart(parts: list[tuple[str, str | None, str | None, bytes]],
               boundary: str = "vna-b") -> tuple[bytes, dict[str, str]]:
    """A body from (name, filename, content type, bytes) parts, in the order given."""
    return form_body(parts, boundary), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize(("case", "status"), [
    ("other-department", 403), ("bad-attribute", 422), ("declared-otherwise", 415)])
def test_metadata_after_the_file_refused_and_the_object_removed(
        api: RunningAPI, patient: str, case: str, status: int) -> None:
    """The file is stored before the metadata arrives: a refusal must delete it again."""
    before = archive_state(api.backend)
    token = api.token("uploader", ["lung"])
    m: dict[str, object] = meta(patient)
    if case == "other-department":
        m["practiceSettingCode"] = "dermatology"
    elif case == "bad-attribute":
        m["languageCode"] = "not a language"
    else:
        m["mimeType"] = "image/png"
    video = make_mp4(frames=120, size=(320, 240))  # larger than the sniffed head
    body, headers = _multipart([("file", "a.mp4", "video/mp4", video),
                                ("metadata", None, None, json.dumps(m).encode())])
    r = api.client(token).post("/api/v1/documents", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert archive_state(api.backend) == before


@pytest.mark.parametrize("body", [
    b"garbage before any boundary\r\n--vna-b--\r\n",
    b"--vna-b\r\nContent Disposition: form-data\r\n\r\nx\r\n--vna-b--\r\n",
])
def test_malformed_multipart_is_a_400(api: RunningAPI, body: bytes) -> None:
    before = archive_state(api.backend)
    r = api.client().post("/api/v1/documents", content=body, headers={
        "Content-Type": "multipart/form-data; boundary=vna-b"})
    assert r.status_code == 400 and isinstance(r.json()["detail"], str), r.text
    assert archive_state(api.backend) == before


def test_patient_portal_uploads_always_wait_for_review(api: RunningAPI, patient: str) -> None:
    portal = api.client(api.token("uploader", source="patient"))
    r = upload(portal, make_jpeg(), meta(patient, source="department"))
    assert r.status_code == 201 and r.json()["availabilityStatus"] == "Submitted"
    assert r.json()["source"] == "patient"
    dept = stored(api, make_pdf(), meta(patient))["uniqueId"]
    r = upload(portal, make_pdf(), {}, path=f"/api/v1/documents/{dept}/replace")
    assert r.status_code == 403
    admin = api.client()
    for bad in ({"role": "admin", "departments": ["lung"]},
                {"role": "viewer", "source": "patient"}):
        r = admin.post("/api/v1/tokens", json=bad)
        assert r.status_code == 422 and isinstance(r.json()["detail"], str)


def test_department_limits_on_review_replace_and_timeline(api: RunningAPI, tmp_path: Path,
                                                          patient: str) -> None:
    from services.runtime import open_archive

    lung_doc = stored(api, make_pdf(), meta(patient))["uniqueId"]
    derm_photo = stored(api, make_jpeg(), meta(patient, source="patient",
                                              practiceSettingCode="dermatology"))["uniqueId"]
    r = api.client(api.token("reviewer", ["lung"])).post(
        f"/api/v1/documents/{derm_photo}/review", json={"decision": "approve"})
    assert r.status_code == 403
    r = upload(api.client(api.token("uploader", ["dermatology"])), make_pdf(), {},
               path=f"/api/v1/documents/{lung_doc}/replace")
    assert r.status_code == 403
    archive = open_archive(api.backend.settings())  # type: ignore[arg-type]
    try:
        for dept in ("Radiology", "Dermatology"):
            study = f"1.2.826.0.1.3680043.8.498.55{uuid.uuid4().int % 10**12}"
            ds = make_instance(patient_id=patient, study_uid=study, series_uid=study + ".1",
                               sop_uid=study + ".1.1")
            ds.InstitutionalDepartmentName = dept
            assert archive.store_file(write(ds, tmp_path / f"{dept}.dcm"),
                                      source_aet="TEST").ok
    finally:
        archive.index.dispose()
    lung_viewer = api.client(api.token("viewer", ["lung", "Radiology"]))
    items = lung_viewer.get(f"/api/v1/patients/{patient}/timeline").json()["items"]
    assert [i.get("uniqueId") for i in items if i["kind"] == "document"] == [lung_doc]
    assert len([i for i in items if i["kind"] == "study"]) == 1


def test_racing_reviews_have_one_winner(api: RunningAPI, patient: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    reviewer = api.token("reviewer")
    bodies = [{"decision": "approve"}, {"decision": "reject", "reason": "blurred"}] * 2

    def review(uid: str, body: dict[str, str]) -> int:
        return api.client(reviewer).post(f"/api/v1/documents/{uid}/review",
                                         json=body).status_code

    for _ in range(3):
        uid = str(stored(api, make_jpeg(), meta(patient, source="patient"))["uniqueId"])
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda b: review(uid, b), bodies))  # noqa: B023
        # One decision wins; the others find it decided (409), or, once it is Rejected,
        # no longer see it at all (404: rejected uploads are shown to admins only).
        assert codes.count(200) == 1 and set(codes) - {200} <= {404, 409}, codes
        winner = bodies[codes.index(200)]["decision"]
        entry = api.client().get(f"/api/v1/documents/{uid}").json()
        assert entry["review"]["decision"] == winner


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def test_uploads_cut_off_after_parts_went_up_leave_nothing(api: RunningAPI,
                                                           patient: str) -> None:
    """Cut off after more than one S3 part (8 MiB) was sent: no object, no unfinished
    multipart upload, and no thread left behind in the server."""
    before = archive_state(api.backend)
    threads = _threads(api.proc.pid)
    head = (f"--cut\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n"
            f"{json.dumps(meta(patient, classCode='video'))}\r\n--cut\r\n"
            f"Content-Disposition: form-data; name=\"file\"; filename=\"v.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode() + make_mp4()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", api.port)) as s:
            s.sendall((f"POST /api/v1/documents HTTP/1.1\r\nHost: x\r\n"
                       f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
                       f"Content-Type: multipart/form-data; boundary=cut\r\n"
                       f"Content-Length: {len(head) + (19 << 20)}\r\n\r\n").encode() + head)
            block = bytes(range(256)) * 4096
            for _ in range(18):
                s.sendall(block)
    assert wait_for(lambda: upload_settled(api, patient))
    assert wait_for(lambda: archive_state(api.backend) == before), archive_state(api.backend)
    assert wait_for(lambda: _threads(api.proc.pid) <= threads + 2), _threads(api.proc.pid)


# -- durability ------------------------------------------------------------------------------

def test_acknowledged_document_survives_kill_9(module_backend: Backend, patient: str) -> None:
    api = start_api(module_backend)
    try:
        content = make_mp4()
        uid = stored(api, content, meta(patient, classCode="video"))["uniqueId"]
    finally:
        stop_api(api, signal.SIGKILL)
    api = start_api(module_backend)
    try:
        r = api.client().get(f"/api/v1/documents/{uid}/content")
        assert r.status_code == 200 and r.content == content
    finally:
        stop_api(api)
