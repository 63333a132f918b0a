"""STOW-RS against `vna api` under uvicorn, on files + SQLite and S3 + PostgreSQL: the
independent dicomweb-client library and raw HTTP bodies in; C-FIND and C-GET from `vna scp`
out, byte for byte; every bad body answered with its status and a JSON body, and the
archive (index rows, objects, receive files) unchanged."""

from __future__ import annotations

import io
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests import dicom_client as dc
from tests.api_client import ADMIN_TOKEN, RunningAPI, start_api, stop_api, wait_for
from tests.conftest import Backend, RunningSCP, start_scp, stop_scp
from tests.factory import PYDICOM_TEST_FILES, dataset_bytes, make_instance, write
from tests.test_disk_full import small_disk  # noqa: F401 - the tmpfs fixture

pytestmark = pytest.mark.timeout(600)

BOUNDARY = "vna-stow-test-boundary"
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def scp(module_backend: Backend, api: RunningAPI) -> Iterator[RunningSCP]:
    running = start_scp(module_backend, VNA_DICOM_PROCESSES="1")  # after the API migrated
    try:
        yield running
    finally:
        stop_scp(running)


# -- helpers ---------------------------------------------------------------------------------

def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def instance(study: str | None = None, *, patient: str = "STOW1", **kw: Any) -> Dataset:
    return make_instance(patient_id=patient, study_uid=study or generate_uid(), **kw)


def body(parts: list[bytes | tuple[bytes, list[tuple[str, str]]]], *,
         boundary: str = BOUNDARY, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """A multipart body; a part is its bytes (Content-Type: application/dicom) or its bytes
    and its header lines."""
    out = [preamble]
    for p in parts:
        data, headers = p if isinstance(p, tuple) else (p, [("Content-Type", "application/dicom")])
        out.append(f"--{boundary}\r\n".encode())
        out += [f"{k}: {v}\r\n".encode() for k, v in headers]
        out += [b"\r\n", data, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode() + epilogue)
    return b"".join(out)


def content_type(boundary: str = BOUNDARY, *, quoted: bool = True) -> str:
    if quoted:
        return f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    return f"multipart/related; type=application/dicom; boundary={boundary}"


def post(api: RunningAPI, data: Any, *, path: str = "/dicomweb/studies",
         ctype: str | None = None, token: str = ADMIN_TOKEN,
         headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"Content-Type": ctype or content_type(), **(headers or {})}
    return api.client(token).post(path, content=data, headers=h)


def values(ds: dict[str, Any], tag: str) -> list[Any]:
    return list(ds.get(tag, {}).get("Value", []))


def referenced(answer: dict[str, Any]) -> list[str]:
    return [values(i, "00081155")[0] for i in values(answer, "00081199")]


def failures(answer: dict[str, Any]) -> list[tuple[str | None, int]]:
    """(ReferencedSOPInstanceUID or None, FailureReason) of each FailedSOPSequence item."""
    return [((values(i, "00081155") or [None])[0], values(i, "00081197")[0])
            for i in values(answer, "00081198")]


def state(backend: Backend) -> tuple[int, int, list[str], list[str]]:
    """(instance rows, study rows, DICOM objects and partial writes, STOW receive files):
    'nothing was stored' means all four are unchanged."""
    from services.runtime import open_store
    from storage.index.db import Index

    settings: Any = backend.settings()
    index = Index(settings.resolved_database_url)
    try:
        with index.read_session() as s:
            rows = s.execute(sa.text("SELECT count(*) FROM instance")).scalar_one()
            studies = s.execute(sa.text("SELECT count(*) FROM study")).scalar_one()
    finally:
        index.dispose()
    store = open_store(settings)
    objects = sorted(o.key for o in store.list_objects("dicom/"))
    objects += [f"(partial) {p.key}" for p in store.partial_writes()]
    receiving = sorted(str(p) for p in settings.incoming_dir.glob("stow-*/*"))
    return rows, studies, objects, receiving


def receive_files(backend: Backend) -> list[str]:
    return state(backend)[3]


def stored_object(backend: Backend, ds: Dataset) -> bytes:
    from services.runtime import open_store
    from storage.keys import dicom_object_key

    store = open_store(backend.settings())  # type: ignore[arg-type]
    key = dicom_object_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    with store.open(key) as f:
        return f.read()


def dicomweb(api: RunningAPI, token: str = ADMIN_TOKEN) -> DICOMwebClient:
    return DICOMwebClient(f"{api.url}/dicomweb", headers={"Authorization": f"Bearer {token}"})


def store_events(api: RunningAPI) -> list[dict[str, Any]]:
    r = api.client().get("/api/v1/audit", params={"action": "dicomweb.store", "limit": 500})
    return list(r.json()["events"])


def refused(r: httpx.Response, status: int) -> str:
    """A request refused as a whole: its status and a JSON {"detail": ...}."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


def answered(r: httpx.Response, status: int) -> dict[str, Any]:
    """A Store Instances Response: its status, DICOM JSON, keys in ascending order."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/dicom+json", r.headers
    answer: dict[str, Any] = r.json()
    assert list(answer) == sorted(answer)
    return answer


# -- storing ---------------------------------------------------------------------------------

def test_dicomweb_client_stores_one_and_several(api: RunningAPI,
                                                module_backend: Backend) -> None:
    before = state(module_backend)
    client = dicomweb(api)
    one = instance()
    answer = client.store_instances([one])
    [item] = answer.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == one.SOPInstanceUID
    assert item.ReferencedSOPClassUID == CT
    assert item.RetrieveURL.endswith(f"/dicomweb/studies/{one.StudyInstanceUID}/series/"
                                     f"{one.SeriesInstanceUID}/instances/{one.SOPInstanceUID}")
    assert answer.RetrieveURL.endswith(f"/dicomweb/studies/{one.StudyInstanceUID}")
    assert "FailedSOPSequence" not in answer

    study, series = generate_uid(), generate_uid()
    several = [instance(study, series_uid=series, instance_number=i) for i in range(3)]
    answer = client.store_instances(several, study_instance_uid=study)
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == \
        [ds.SOPInstanceUID for ds in several]
    assert answer.RetrieveURL.endswith(f"/dicomweb/studies/{study}")
    after = state(module_backend)
    assert after[0] == before[0] + 4 and after[1] == before[1] + 2
    assert len(after[2]) == len(before[2]) + 4 and after[3] == []
    # QIDO-RS finds them at once, with the source the index records
    found = client.search_for_instances(study_instance_uid=study)
    assert sorted(values(f, "00080018")[0] for f in found) == \
        sorted(ds.SOPInstanceUID for ds in several)


def test_stow_in_c_find_and_c_get_out_byte_for_byte(api: RunningAPI, scp: RunningSCP,
                                                     module_backend: Backend,
                                                     tmp_path: Path) -> None:
    """Part 10 files (uncompressed, JPEG 2000, RLE) in by STOW-RS; the DICOM service finds
    them and sends their datasets back unchanged."""
    study, patient = generate_uid(), f"SG{uuid.uuid4().hex[:8]}"
    files = [write(instance(study, patient=patient, instance_number=i), tmp_path / f"{i}.dcm")
             for i in range(2)]
    for name in ("JPEG2000.dcm", "MR_small_RLE.dcm"):
        ds = dcmread(PYDICOM_TEST_FILES / name)
        ds.StudyInstanceUID, ds.PatientID = study, patient
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / name)
        files.append(tmp_path / name)
    r = post(api, body([f.read_bytes() for f in files]), path=f"/dicomweb/studies/{study}")
    answer = answered(r, 200)
    sent = {dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
    assert referenced(answer) == list(sent)
    for f in files:  # archived as sent, file meta and all
        assert stored_object(module_backend, dcmread(f, stop_before_pixels=True)) == \
            f.read_bytes()

    status, matches = dc.find(scp.port, "IMAGE", {"StudyInstanceUID": study,
                                                  "SeriesInstanceUID": "",
                                                  "SOPInstanceUID": ""})
    assert status == 0 and {m.SOPInstanceUID for m in matches} == set(sent)
    pairs = {(str(dcmread(f).SOPClassUID), str(dcmread(f).file_meta.TransferSyntaxUID))
             for f in files}
    final, received = dc.get(scp.port, "STUDY", {"StudyInstanceUID": study}, pairs)
    assert final is not None and final.Status == 0
    assert set(received.datasets) == set(sent)
    for uid, f in sent.items():
        assert received.datasets[uid] == dataset_bytes(f), uid


def test_raw_bodies_quoted_unquoted_crlf_and_unknown_headers(api: RunningAPI,
                                                             module_backend: Backend) -> None:
    a, b, c = (instance() for _ in range(3))
    # unquoted type and boundary, a `start` parameter, a CRLF before the first boundary
    # and an epilogue after the last; part headers vna does not know; a part without
    # Content-Type (the body's type); a part whose bytes end in CR LF themselves
    c.ImageComments = "ends"
    parts: list[bytes | tuple[bytes, list[tuple[str, str]]]] = [
        (part10(a), [("Content-Type", "application/dicom"), ("Content-ID", "<a@vna>"),
                     ("Content-Description", "first"), ("X-Unknown", "ignored")]),
        (part10(b), []),
        (part10(c) + b"\r\n", [("content-type", 'Application/DICOM; transfer-syntax='
                                                "1.2.840.10008.1.2.1")]),
    ]
    raw = body(parts, boundary="abc123", preamble=b"\r\n", epilogue=b"epilogue\r\n")
    r = post(api, raw, ctype="multipart/related; type=application/dicom; boundary=abc123; "
                            "start=<a@vna>")
    answer = answered(r, 200)
    assert referenced(answer) == [a.SOPInstanceUID, b.SOPInstanceUID, c.SOPInstanceUID]
    assert stored_object(module_backend, a) == part10(a)
    assert stored_object(module_backend, b) == part10(b)
    assert stored_object(module_backend, c) == part10(c) + b"\r\n"  # the part's bytes, all
    # quoted type and boundary (with a character that needs the quotes)
    d = instance()
    r = post(api, body([part10(d)], boundary="with:colon"),
             ctype='multipart/related; boundary="with:colon"; type="application/dicom"')
    assert referenced(answered(r, 200)) == [d.SOPInstanceUID]
    # what the client asks to be answered in
    e = instance()
    r = post(api, body([part10(e)]), headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert referenced(r.json()) == [e.SOPInstanceUID]
    assert receive_files(module_backend) == []


def test_a_resent_instance_is_a_success_stored_once(api: RunningAPI,
                                                    module_backend: Backend) -> None:
    ds = instance()
    raw = body([part10(ds)])
    assert referenced(answered(post(api, raw), 200)) == [ds.SOPInstanceUID]
    before = state(module_backend)
    assert referenced(answered(post(api, raw), 200)) == [ds.SOPInstanceUID]
    # twice in one body too
    assert referenced(answered(post(api, body([part10(ds), part10(ds)])), 200)) == \
        [ds.SOPInstanceUID] * 2
    assert state(module_backend) == before


def test_patient_and_uid_conflicts_are_refused(api: RunningAPI,
                                               module_backend: Backend) -> None:
    study = generate_uid()
    first = instance(study, patient="CONFA")
    answered(post(api, body([part10(first)])), 200)
    before = state(module_backend)
    # the study is archived for another patient: 0xA778, nothing stored
    other = instance(study, patient="CONFB")
    answer = answered(post(api, body([part10(other)])), 409)
    assert failures(answer) == [(other.SOPInstanceUID, 0xA778)]
    [item] = values(answer, "00081198")
    assert values(item, "00081150") == [CT]
    assert "patient" in values(item, "00000902")[0].lower()
    assert "00081199" not in answer
    # the SOP Instance UID archived with other content: 0xC001
    changed = instance(study, patient="CONFA", sop_uid=first.SOPInstanceUID,
                       series_uid=first.SeriesInstanceUID)
    changed.ImageComments = "other content"
    answer = answered(post(api, body([part10(changed)])), 409)
    assert failures(answer) == [(first.SOPInstanceUID, 0xC001)]
    assert state(module_backend) == before
    assert stored_object(module_backend, first) == part10(first)


def test_mixed_good_and_bad_parts_are_202(api: RunningAPI, module_backend: Backend) -> None:
    study = generate_uid()
    good1, good2 = instance(study), instance(study)
    wrong_study = instance()
    before = state(module_backend)
    parts: list[bytes | tuple[bytes, list[tuple[str, str]]]] = [
        part10(good1),
        b"this is not DICOM at all",
        (b"\xff\xd8\xff\xe0 a JPEG", [("Content-Type", "image/jpeg")]),
        part10(wrong_study),
        b"",
        part10(good2),
    ]
    r = post(api, body(parts), path=f"/dicomweb/studies/{study}")
    answer = answered(r, 202)
    assert referenced(answer) == [good1.SOPInstanceUID, good2.SOPInstanceUID]
    assert failures(answer) == [(None, 0xC000), (None, 0xC122),
                                (wrong_study.SOPInstanceUID, 0xA900), (None, 0xC000)]
    comment = values(values(answer, "00081198")[2], "00000902")[0]
    assert wrong_study.StudyInstanceUID in comment and study in comment
    assert values(answer, "00081190")[0].endswith(f"/studies/{study}")
    after = state(module_backend)
    assert after[0] == before[0] + 2 and after[3] == []


# -- bad input: a status, a JSON body, and nothing stored -----------------------------------

def test_bodies_vna_does_not_take_are_refused(api: RunningAPI,
                                              module_backend: Backend) -> None:
    ds = instance()
    good = body([part10(ds)])
    before = state(module_backend)
    # not multipart at all: the Part 10 file as the body
    refused(post(api, part10(ds), ctype="application/dicom"), 415)
    refused(post(api, good, ctype=f"multipart/form-data; boundary={BOUNDARY}"), 415)
    refused(post(api, good, ctype=f'multipart/related; type="application/dicom+json"; '
                                  f'boundary={BOUNDARY}'), 415)
    refused(post(api, good, ctype=f"multipart/related; type=image/jpeg; boundary={BOUNDARY}"),
            415)
    refused(api.client().post("/dicomweb/studies", content=good), 415)  # no Content-Type
    # multipart/related as announced, but no boundary, or a body that is not multipart
    refused(post(api, good, ctype='multipart/related; type="application/dicom"'), 400)
    detail = refused(post(api, part10(ds)), 400)
    assert "malformed" in detail
    refused(post(api, good.replace(b"\r\n", b"\n")), 400)  # bare LF line ends
    # an empty body; a body with no part
    assert "nothing was stored" in refused(post(api, b""), 400)
    refused(post(api, f"--{BOUNDARY}--\r\n".encode()), 400)
    # a study UID in the URL that is no UID
    refused(post(api, good, path="/dicomweb/studies/1.2.abc"), 400)
    # an answer the client cannot read
    refused(post(api, good, headers={"Accept": "application/dicom+xml"}), 406)
    assert state(module_backend) == before


def test_a_part_that_is_not_dicom_is_409(api: RunningAPI, module_backend: Backend) -> None:
    before = state(module_backend)
    answer = answered(post(api, body([b"%PDF-1.4 not DICOM" * 100])), 409)
    assert failures(answer) == [(None, 0xC000)]
    # DICM where it belongs, but no transfer syntax in a file meta
    answer = answered(post(api, body([b"\0" * 128 + b"DICM" + b"\0" * 64])), 409)
    assert failures(answer) == [(None, 0xC000)]
    # a part of another type only
    answer = answered(post(api, body([(b"{}", [("Content-Type", "application/dicom+json")])])),
                      409)
    assert failures(answer) == [(None, 0xC122)]
    assert state(module_backend) == before


def test_a_transfer_syntax_vna_does_not_take_is_c122(api: RunningAPI,
                                                     module_backend: Backend) -> None:
    ds = instance()
    del ds.PixelData  # JPIP HTJ2K Referenced: the pixel data is elsewhere
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.204"
    other = instance()
    private = part10(other).replace(b"1.2.840.10008.1.2.1\0", b"1.2.826.0.1.99.99.1\0", 1)
    before = state(module_backend)
    answer = answered(post(api, body([part10(ds), private])), 409)
    assert failures(answer) == [(ds.SOPInstanceUID, 0xC122), (other.SOPInstanceUID, 0xC122)]
    assert state(module_backend) == before


def test_a_wrong_study_is_refused(api: RunningAPI, module_backend: Backend) -> None:
    ds = instance()
    url_study = generate_uid()
    before = state(module_backend)
    answer = answered(post(api, body([part10(ds)]), path=f"/dicomweb/studies/{url_study}"),
                      409)
    assert failures(answer) == [(ds.SOPInstanceUID, 0xA900)]
    assert values(answer, "00081190")[0].endswith(f"/studies/{url_study}")
    assert state(module_backend) == before


def test_a_truncated_part_leaves_nothing(api: RunningAPI, module_backend: Backend) -> None:
    ds = instance(size=256)
    raw = body([part10(ds)])
    before = state(module_backend)
    # the HTTP body is complete, the multipart body is not: cut in the middle of the part
    detail = refused(post(api, raw[:len(raw) // 2]), 400)
    assert "closing boundary" in detail and "nothing was stored" in detail
    # a streamed (chunked) body that stops early
    def early() -> Iterator[bytes]:
        yield raw[:1000]
        yield raw[1000:len(raw) - 100]

    refused(post(api, early()), 400)
    # cut right after the part's data, before its delimiter
    refused(post(api, raw[:raw.rindex(b"\r\n--")]), 400)
    assert state(module_backend) == before


def test_a_body_cut_off_mid_stream_keeps_only_the_complete_parts(
        api: RunningAPI, module_backend: Backend) -> None:
    """The connection drops in the second part: the first, complete and archived before
    the cut, stays (as the instances of an aborted C-STORE association that had their
    Success); the second leaves no receive file, no object and no row."""
    first, second = instance(size=64), instance(size=512)
    raw = body([part10(first), part10(second)])
    cut = len(body([part10(first)])) + 200_000
    before = state(module_backend)
    events = len(store_events(api))
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.sendall((f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: {content_type()}\r\n"
                   f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw[:cut])
        time.sleep(0.5)
    assert wait_for(lambda: len(store_events(api)) > events, 20)
    event = store_events(api)[0]
    assert event["status"] == 400 and event["patientId"] == "STOW1"
    after = state(module_backend)
    assert after[0] == before[0] + 1 and after[3] == []
    assert stored_object(module_backend, first) == part10(first)
    assert len(after[2]) == len(before[2]) + 1


def test_a_body_over_the_limit_is_413(api: RunningAPI, module_backend: Backend) -> None:
    before = state(module_backend)
    # a Content-Length over VNA_MAX_UPLOAD_BYTES: refused before a byte is read
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.sendall((f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: {content_type()}\r\n"
                   f"Content-Length: {10**15}\r\n\r\n").encode() + b"--" + BOUNDARY.encode())
        s.settimeout(20)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            more = s.recv(65536)
            if not more:
                break
            answer += more
    head, _, payload = answer.decode("latin-1").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413 "), head
    assert "VNA_MAX_UPLOAD_BYTES" in json.loads(payload)["detail"]
    assert state(module_backend) == before
    # a chunked body that grows over it: the part being received leaves nothing
    big = instance(size=2000)  # 8 MB each; the test server's limit is 20 MiB
    raw = body([part10(big)] * 2 + [part10(instance(size=2000)) for _ in range(2)])

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 1 << 20):
            yield raw[i:i + (1 << 20)]

    detail = refused(post(api, chunks()), 413)
    assert "VNA_MAX_UPLOAD_BYTES" in detail and "2 instance(s)" in detail, detail
    after = state(module_backend)
    assert after[0] == before[0] + 1 and after[3] == []  # the one instance, sent twice


# -- access ----------------------------------------------------------------------------------

def test_access_departments_and_audit(api: RunningAPI, module_backend: Backend) -> None:
    ds = instance(InstitutionalDepartmentName="Radiology", patient="AUD" + uuid.uuid4().hex[:6])
    raw = body([part10(ds)])
    before = state(module_backend)
    refused(api.client(None).post("/dicomweb/studies", content=raw,
                                  headers={"Content-Type": content_type()}), 401)
    refused(post(api, raw, token=api.token("viewer")), 403)
    lung = api.token("uploader", ["Lung"])
    answer = answered(post(api, raw, token=lung), 409)
    assert failures(answer) == [(ds.SOPInstanceUID, 0x0124)]
    assert state(module_backend) == before
    radiology = api.token("uploader", ["Radiology", "Lung"])
    other = instance(InstitutionalDepartmentName="Surgery")
    answer = answered(post(api, body([part10(ds), part10(other)]), token=radiology), 202)
    assert referenced(answer) == [ds.SOPInstanceUID]
    assert failures(answer) == [(other.SOPInstanceUID, 0x0124)]
    # an uploader without limits stores what dicomweb-client sends
    free = instance()
    assert dicomweb(api, api.token("uploader")).store_instances([free]).ReferencedSOPSequence
    events = api.client().get("/api/v1/audit", params={"patientId": ds.PatientID}).json()
    [event] = events["events"]
    assert event["action"] == "dicomweb.store" and event["status"] == 202
    assert event["resource"] == ds.StudyInstanceUID and event["role"] == "uploader"
    assert ds.PatientID not in api.logtext()


# -- memory ------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (`vna api` runs uvicorn itself)."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1])
    return total / 1024


def test_a_200_mb_stow_keeps_memory_flat(module_backend: Backend, tmp_path: Path) -> None:
    """100 instances of 2 MB in one streamed body: the server's RSS grows by little (the
    benchmark measures it properly; this catches a body or a part held in memory)."""
    running = start_api(module_backend, VNA_MAX_UPLOAD_BYTES=str(1 << 30))
    try:
        study = generate_uid()
        template = instance(study, size=1000)  # 2,000,000 bytes of pixel data
        warm = body([part10(instance(study, size=1000))])
        assert post(running, warm).status_code == 200  # imports, pools, first commit
        start = rss_mb(running.proc.pid)
        peak = start
        uids = []

        def parts() -> Iterator[bytes]:
            nonlocal peak
            for i in range(100):
                template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = \
                    generate_uid()
                template.InstanceNumber = i
                uids.append(template.SOPInstanceUID)
                yield body([part10(template)])[:-len(f"--{BOUNDARY}--\r\n")]
                if i % 10 == 0:
                    peak = max(peak, rss_mb(running.proc.pid))
            yield f"--{BOUNDARY}--\r\n".encode()

        started = time.monotonic()
        r = post(running, parts())
        elapsed = time.monotonic() - started
        assert referenced(answered(r, 200)) == uids
        peak = max(peak, rss_mb(running.proc.pid))
        growth = peak - start
        print(f"\n{module_backend.name}: 100 x 2 MB STOW in {elapsed:.1f} s "
              f"({200 / elapsed:.0f} MB/s), RSS {start:.0f} MB -> peak {peak:.0f} MB "
              f"(+{growth:.1f} MB)")
        assert growth < 60, growth
        assert receive_files(module_backend) == []
    finally:
        stop_api(running)
    # the process's receive folder went with it
    settings: Any = module_backend.settings()
    assert not (settings.incoming_dir / f"stow-{socket.gethostname()}-{running.proc.pid}"
                ).exists()


# -- a full disk -----------------------------------------------------------------------------

def test_stow_on_a_full_disk(small_disk: Path,  # noqa: F811 - the fixture imported above
                             request: pytest.FixtureRequest) -> None:
    """VNA_DATA_DIR on a 48 MB tmpfs that fills up: the parts that do not fit fail with
    0xA700 (507 when none fit), nothing partial stays (no receive file, no temp file, no
    object without its row), and the archive takes them once there is room again."""
    from tests.conftest import _backend_env
    from tests.test_disk_full import archived_uids, fill, leftovers

    data_dir = small_disk / "vna-data"
    backend = Backend("file-sqlite", _backend_env("file-sqlite", data_dir, request), data_dir)
    running = start_api(backend)
    try:
        study = generate_uid()
        datasets = [instance(study, size=724, instance_number=i) for i in range(8)]  # 1 MB
        raw = body([part10(ds) for ds in datasets])
        assert referenced(answered(post(running, body([part10(datasets[0])])), 200))
        filler = fill(small_disk, 2.5)
        r = post(running, raw)
        assert r.status_code in (202, 507), r.text
        answer = r.json()
        assert {reason for _, reason in failures(answer)} == {0xA700}
        kept = set(referenced(answer))
        assert kept <= archived_uids(backend)
        assert leftovers(data_dir, archived_uids(backend)) == []
        # nothing fits: 507, the Store Instances Response all the same
        fill(small_disk, 0.2)
        r = post(running, body([part10(instance(study, size=724))]))
        answer = answered(r, 507)
        assert failures(answer)[0][1] == 0xA700
        assert leftovers(data_dir, archived_uids(backend)) == []
        filler.unlink()
        answer = answered(post(running, raw), 200)
        assert referenced(answer) == [ds.SOPInstanceUID for ds in datasets]
        assert len(archived_uids(backend)) == len(datasets)
        assert "Traceback" not in running.logtext()
    finally:
        stop_api(running)
    assert leftovers(data_dir, archived_uids(backend)) == []


# -- the part reader and the response, without a server ---------------------------------------

def receive(chunks: list[bytes], folder: Path, *, max_bytes: int = 1 << 30,
            boundary: str = BOUNDARY) -> tuple[list[Any] | Exception, dict[str, bytes]]:
    """Drive `StowReceiver` with these body chunks; what it answered (or raised) and the
    bytes of each receive file it handed to the archive, by SOP Instance UID."""
    import asyncio

    from services.xds_api.dicomweb.stow import StowError, StowReceiver
    from vna.dicom.stow import StoredInstance

    seen: dict[str, bytes] = {}

    def archive_part(rf: Any) -> Any:
        data = Path(rf.path).read_bytes()
        os.unlink(rf.path)
        uid = str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        seen[uid] = data
        return StoredInstance(CT, uid, "1.2", "1.2.3")

    async def body_of() -> Any:
        for c in chunks:
            yield c

    async def run() -> list[Any]:
        receiver = StowReceiver(folder, archive_part, max_bytes=max_bytes)
        return await receiver.receive(body_of(), boundary.encode())

    try:
        result: list[Any] | Exception = asyncio.run(run())
    except StowError as exc:
        result = exc
    assert list(folder.iterdir()) == [], "a receive file stayed"
    return result, seen


def test_the_part_reader_gives_the_same_parts_however_the_body_is_split(tmp_path: Path) -> None:
    a, b = instance(), instance()
    no_preamble = io.BytesIO()
    import pydicom

    pydicom.dcmwrite(no_preamble, b)  # as dicomweb-client writes a dataset made in memory
    assert no_preamble.getvalue()[:2] == b"\x02\x00"
    raw = body([part10(a), (b"text", [("Content-Type", "text/plain")]),
                no_preamble.getvalue()])
    for size in (1, 2, 3, 7, 64, 131, 132, 133, 4096, len(raw)):
        result, seen = receive([raw[i:i + size] for i in range(0, len(raw), size)], tmp_path)
        assert isinstance(result, list), (size, result)
        assert [type(o).__name__ for o in result] == \
            ["StoredInstance", "FailedInstance", "StoredInstance"], size
        assert result[1].failure_reason == 0xC122
        assert seen[a.SOPInstanceUID] == part10(a)
        # the preamble and DICM put in front, the rest as sent
        assert seen[b.SOPInstanceUID] == b"\0" * 128 + b"DICM" + no_preamble.getvalue()


def test_the_part_reader_cut_anywhere_leaves_no_file(tmp_path: Path) -> None:
    from services.xds_api.dicomweb.stow import StowError

    a, b = instance(), instance()
    raw = body([part10(a), part10(b)])
    first_end = raw.index(f"\r\n--{BOUNDARY}".encode(), 200)  # where part one's data ends
    for cut in list(range(0, len(raw) - 1, 97)) + [first_end, first_end + 10, len(raw) - 3]:
        result, seen = receive([raw[:cut]], tmp_path)
        assert isinstance(result, StowError) and result.status == 400, (cut, result)
        # part one counts as complete once its delimiter line is through
        assert set(seen) <= {a.SOPInstanceUID}
        if cut > first_end + len(BOUNDARY) + 6:
            assert set(seen) == {a.SOPInstanceUID}, cut
    result, seen = receive([raw[i:i + 100] for i in range(0, len(raw), 100)], tmp_path,
                           max_bytes=len(raw) - 1)
    assert isinstance(result, StowError) and result.status == 413
    assert set(seen) == {a.SOPInstanceUID}


def test_request_media_types_and_statuses() -> None:
    from vna.dicom import stow

    for ok in ('multipart/related; type="application/dicom"; boundary="x y"',
               "multipart/related;type=application/dicom;boundary=xy",
               "Multipart/Related; Boundary=xy; Type=Application/DICOM; start=<a>",
               "multipart/related; boundary=xy"):
        assert stow.request_boundary(ok) in (b"x y", b"xy"), ok
    for bad in (None, "", "application/dicom", "multipart/form-data; boundary=x",
                "multipart/related; type=application/dicom+json; boundary=x",
                "multipart/related; type=application/octet-stream; boundary=x", "text/plain"):
        with pytest.raises(stow.UnsupportedMediaType):
            stow.request_boundary(bad)
    with pytest.raises(stow.MalformedRequest):
        stow.request_boundary("multipart/related; type=application/dicom")
    ok = stow.StoredInstance(CT, "1.2.3", "1.2", "1.2.4")
    bad = stow.FailedInstance(0xC000, "no")
    full = stow.out_of_resources("the disk is full", full=True)
    down = stow.out_of_resources("object storage is unavailable", full=False)
    assert stow.http_status([ok, ok]) == 200
    assert stow.http_status([ok, bad]) == 202 and stow.http_status([ok, full]) == 202
    assert stow.http_status([bad, full]) == 409
    assert stow.http_status([full, down]) == 507 and stow.http_status([down]) == 503


def test_api_start_removes_what_dead_processes_were_receiving(embedded: Backend) -> None:
    import subprocess

    dead_pid = subprocess.Popen(["true"]).pid
    time.sleep(0.2)
    incoming = embedded.data_dir / "incoming"
    host = socket.gethostname()
    folders = {name: incoming / name for name in (
        f"stow-{host}-{dead_pid}", f"stow-{host}-{os.getpid()}", f"{host}-{dead_pid}")}
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "left.part").write_bytes(b"half a part")
    running = start_api(embedded)
    try:
        assert not folders[f"stow-{host}-{dead_pid}"].exists()
        assert folders[f"stow-{host}-{os.getpid()}"].exists()  # a live process's
        assert folders[f"{host}-{dead_pid}"].exists()  # an SCP process's: its kind cleans it
    finally:
        stop_api(running)
