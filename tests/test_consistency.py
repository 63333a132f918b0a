"""`vna check` and the worker's sweep: what a kill -9 between object and row, or in the
middle of an upload, leaves is found and removed; a missing or changed object is found
and shown (only a backup mends it). Both backends, through the real command."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.runtime import open_archive
from storage.archive import Archive, prepare
from storage.consistency import check, sweep
from storage.keys import document_object_key
from storage.objectstore import FileObjectStore
from tests.api_client import ADMIN_TOKEN, start_api
from tests.conftest import VNA, Backend, vna_env
from tests.factory import make_instance, store_document, write
from vna.documents.entry import new_entry_uuid


@pytest.fixture(params=["file-sqlite", "s3-postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """As conftest's, but with a bucket of its own: a check lists the whole bucket, and the
    session's shared one holds other tests' objects."""
    from tests.conftest import _backend_env

    data_dir = tmp_path / "vna-data"
    env = _backend_env(request.param, data_dir, request)
    if "VNA_S3_BUCKET" in env:
        env["VNA_S3_BUCKET"] = f"vna-check-{uuid.uuid4().hex[:12]}"
    return Backend(request.param, env, data_dir)


def vna_check(backend: Backend, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VNA, "check", *args], env=vna_env({**backend.env,
                                                              "COLUMNS": "300"}),
                          capture_output=True, text=True, timeout=120)


def _broken_archive(archive: Archive, tmp_path: Path) -> dict[str, Any]:
    """An archive with one of each inconsistency next to good data."""
    f = [write(make_instance(), tmp_path / f"{i}.dcm") for i in range(3)]
    for path in f[:2]:
        assert archive.store_file(path, source_aet="T").outcome == "stored"
    good_doc = store_document(archive, b"%PDF-1.4 good", "application/pdf")
    changed_doc = store_document(archive, b"%PDF-1.4 original", "application/pdf")
    from storage.index.documents import Documents

    changed = Documents(archive.index).get(changed_doc)
    assert changed is not None
    # a DICOM object whose row was never committed (kill -9 between the two)
    orphan = prepare(f[2])
    archive.store.put_file(orphan.key, f[2])
    # a document object likewise
    orphan_doc = document_object_key(new_entry_uuid(), __import__("datetime").datetime.now())
    archive.store.put_stream(orphan_doc, io.BytesIO(b"%PDF-1.4 orphan"),
                             content_type="application/pdf")
    # an object lost from under its row, and one changed behind the archive's back
    missing = prepare(f[0]).key
    archive.store.delete(missing)
    archive.store.put_stream(changed.storage_key, io.BytesIO(b"%PDF-1.4 bit rot"),
                             content_type="application/pdf")
    return {"orphans": {orphan.key, orphan_doc}, "missing": missing,
            "changed": changed.storage_key, "good_doc": good_doc}


def test_vna_check_finds_everything_and_repair_mends_what_it_can(
        archive: Archive, backend: Backend, tmp_path: Path) -> None:
    planted = _broken_archive(archive, tmp_path)
    # recent orphans are left alone: a store in flight writes its row a moment later
    p = vna_check(backend)
    assert p.returncode == 1, p.stdout + p.stderr
    out = p.stdout + p.stderr
    assert f"missing_object {planted['missing']}" in out
    assert f"hash_mismatch {planted['changed']}" in out
    assert "orphan_object" not in out.split("checked")[-1]

    p = vna_check(backend, "--repair", "--grace-minutes", "0")
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    for key in planted["orphans"]:
        assert f"orphan_object {key}: mended" in out
        assert not archive.store.exists(key)
    assert f"missing_object {planted['missing']}" in out and "restore them" in out

    p = vna_check(backend, "--grace-minutes", "0", "--no-hashes")
    out = p.stdout + p.stderr
    assert "orphan_object" not in out.split("checked")[-1]
    assert f"missing_object {planted['missing']}" in out  # still lost: nothing mends it
    assert "hash_mismatch" not in out.split("checked")[-1]  # not re-hashed
    assert archive.store.exists(planted["changed"])  # changed, but never deleted

    # what fixity keeps: each missing or changed object, as a failed check
    from sqlalchemy import func, select

    from storage.index.models import FixityCheck

    with archive.index.read_session() as s:
        failed = s.scalar(select(func.count()).select_from(FixityCheck)
                          .where(FixityCheck.ok.is_(False)))
    assert failed and failed >= 2


def test_a_clean_archive_checks_clean(archive: Archive, backend: Backend,
                                      tmp_path: Path) -> None:
    for i in range(3):
        assert archive.store_file(write(make_instance(), tmp_path / f"{i}.dcm"),
                                  source_aet="T").ok
    store_document(archive, b"%PDF-1.4 x", "application/pdf")
    p = vna_check(backend, "--grace-minutes", "0")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "4 index rows" in p.stdout + p.stderr


def test_sweep_keeps_what_a_store_in_flight_writes_again(archive: Archive,
                                                          tmp_path: Path) -> None:
    """An orphan written again between listing and removal (a re-send replacing what it
    took for a crash's leftover) is not deleted."""
    f = write(make_instance(), tmp_path / "a.dcm")
    p = prepare(f)
    archive.store.put_file(p.key, f)
    [info] = [i for i in archive.store.list_objects("dicom/") if i.key == p.key]
    time.sleep(0.01)
    archive.store.put_file(p.key, write(make_instance(sop_uid=p.header.sop_instance_uid,
                                                      study_uid=p.header.study_instance_uid,
                                                      series_uid=p.header.series_instance_uid,
                                                      patient_name="Again^X"),
                                        tmp_path / "b.dcm"))
    assert archive.store.remove_orphan(info) is False
    assert archive.store.exists(p.key)


@pytest.fixture
def slow_upload_api(backend: Backend) -> Iterator[Any]:
    api = start_api(backend, VNA_MAX_UPLOAD_BYTES=str(100 << 20))
    try:
        yield api
    finally:
        if api.proc.poll() is None:
            api.proc.kill()
        api.proc.wait()


def test_kill_9_mid_upload_leaves_nothing_the_sweep_does_not_remove(
        backend: Backend, slow_upload_api: Any, tmp_path: Path) -> None:
    """kill -9 of `vna api` while a 40 MiB upload streams: no row, so nothing visible;
    the unfinished S3 multipart upload (or temp file) is what the sweep removes."""
    from tests.media import make_pdf

    api = slow_upload_api
    body_sent = threading.Event()
    pdf = make_pdf()

    def body() -> Iterator[bytes]:
        boundary = "vnaboundary"
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n"
               '{"patientId":"191212121212","classCode":"report","practiceSettingCode":"lung"}'
               f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"big.pdf\"\r\nContent-Type: application/pdf\r\n\r\n").encode()
        yield pdf
        for i in range(40):
            yield b"%" + os.urandom((1 << 20) - 1)
            if i == 24:  # more than three S3 parts of 8 MiB are up
                body_sent.set()
                time.sleep(30)  # killed meanwhile

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server dies under it
            httpx.post(f"{api.url}/api/v1/documents", content=body(), timeout=60,
                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                "Content-Type": "multipart/form-data; boundary=vnaboundary"})

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert body_sent.wait(60)
    time.sleep(2.0)  # the writer thread has put the parts
    os.kill(api.proc.pid, signal.SIGKILL)
    api.proc.wait(10)

    archive = open_archive(backend.settings())  # type: ignore[arg-type]
    try:
        from sqlalchemy import func, select

        from storage.index.models import Document

        with archive.index.read_session() as s:
            assert s.scalar(select(func.count()).select_from(Document)) == 0
        partial = list(archive.store.partial_writes())
        assert len(partial) == 1, partial
        if not isinstance(archive.store, FileObjectStore):
            assert partial[0].upload_id
        from datetime import timedelta

        report = check(archive.index, archive.store, partial_grace=timedelta(hours=1))
        assert [f.kind for f in report.findings] == []  # young: maybe still uploading
        assert sweep(archive.index, archive.store, partial_grace=timedelta(0)) == 1
        assert list(archive.store.partial_writes()) == []
        assert [o.key for o in archive.store.list_objects("documents/")] == []
    finally:
        archive.index.dispose()


def test_the_worker_sweeps_daily() -> None:
    from services.worker.app import make_celery

    schedule = make_celery().conf.beat_schedule
    assert schedule["sweep-objects"]["task"] == "vna.objects.sweep"
    from services.worker import tasks

    assert tasks.sweep_objects.name == "vna.objects.sweep"
