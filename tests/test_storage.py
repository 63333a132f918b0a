"""Object store and index, on both backends (filesystem + SQLite, SeaweedFS S3 + PostgreSQL)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from storage.archive import Archive
from storage.index.models import Instance, Patient, Series, Study
from storage.index.query import FindQuery, find
from storage.migrate import HEAD, current
from storage.objectstore import FileObjectStore, ObjectNotFound, ObjectStore, S3ObjectStore
from tests.factory import dataset_bytes, make_instance, write
from vna.dicom.attributes import Level


def counts(a: Archive) -> dict[str, int]:
    with a.index.read_session() as s:
        return {m.__tablename__: s.execute(select(func.count()).select_from(m)).scalar_one()
                for m in (Patient, Study, Series, Instance)}


def test_ingest_writes_values_as_sqlalchemy_does(archive: Archive, tmp_path: Path) -> None:
    """The ingest path's compiled statements convert values like SQLAlchemy's execution:
    an outbox event written by each path reads back the same, in the same stored form."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    from storage.outbox import add_events

    assert archive.store_file(write(make_instance(), tmp_path / "a.dcm"), source_aet="X").ok
    with archive.index.begin() as conn:
        add_events(conn, "core", ["s"], datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
    with archive.index.read_session() as s:
        rows = s.execute(text("SELECT kind, CAST(created_at AS TEXT) FROM outbox_event "
                              "ORDER BY id")).all()
    (_, ingest), (_, core) = rows
    assert core.startswith("2026-01-02 03:04:05.000006")
    # the same form, e.g. no "+00:00" on one side (PostgreSQL drops a fraction's trailing
    # zeros, so fractions are left out of the comparison)
    import re

    def form(t: str) -> str:
        return re.sub(r"\d", "9", re.sub(r"\.\d+", "", t))

    assert form(ingest) == form(core)


def test_migration_at_head(archive: Archive) -> None:
    assert current(archive.index.url) == HEAD


def test_migrations_match_models(archive: Archive) -> None:
    """`alembic check`: no model change without its migration."""
    from alembic import command

    from storage.migrate import alembic_config

    command.check(alembic_config(archive.index.url))


def test_object_store_roundtrip(archive: Archive, tmp_path: Path) -> None:
    store = archive.store
    src = tmp_path / "x.bin"
    src.write_bytes(b"hello" * 1000)
    store.put_file("dicom/1.2/3.4/5.6.dcm", src)
    assert store.exists("dicom/1.2/3.4/5.6.dcm")
    assert store.read("dicom/1.2/3.4/5.6.dcm") == b"hello" * 1000
    with store.local_copy("dicom/1.2/3.4/5.6.dcm") as p:
        assert p.read_bytes() == b"hello" * 1000
    store.delete("dicom/1.2/3.4/5.6.dcm")
    assert not store.exists("dicom/1.2/3.4/5.6.dcm")
    with pytest.raises(ObjectNotFound):
        store.open("dicom/1.2/3.4/5.6.dcm")


class _Stream:
    """`total` bytes in 1 MiB reads; raises after `fail_after` bytes, as an aborted upload."""

    def __init__(self, total: int, fail_after: int | None = None) -> None:
        self.total, self.fail_after, self.sent = total, fail_after, 0
        self.block = bytes(range(256)) * 4096

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise ConnectionError("client went away")
        n = min(len(self.block), self.total - self.sent, n if n >= 0 else len(self.block))
        self.sent += n
        return self.block[:n]


def _leftovers(store: ObjectStore, prefix: str) -> list[str]:
    if isinstance(store, FileObjectStore):
        return [str(p) for p in store.root.rglob("*") if p.is_file()
                and (p.is_relative_to(store.root / prefix) or p.parent == store.root / ".tmp")]
    s3 = store.client  # type: ignore[attr-defined]
    return [o.object_name for o in s3.list_objects(store.bucket, prefix=prefix,  # type: ignore[attr-defined]
                                                   recursive=True)] + [
        u.object_name for u in s3._list_multipart_uploads(  # noqa: SLF001
            store.bucket, prefix=prefix).uploads]  # type: ignore[attr-defined]


def test_put_stream_and_ranges(archive: Archive) -> None:
    """A stream of unknown length larger than one S3 part, then byte ranges of it."""
    store = archive.store
    key = f"documents/test/{uuid.uuid4()}"
    total = 40 << 20
    store.put_stream(key, _Stream(total), content_type="video/mp4")
    expected = (bytes(range(256)) * 4096)
    with store.open_range(key, (1 << 20) - 10, 20) as f:
        assert f.read() == expected[-10:] + expected[:10]
    with store.open(key) as f:
        size = 0
        while chunk := f.read(1 << 20):
            size += len(chunk)
    assert size == total
    store.delete(key)


def test_aborted_put_stream_leaves_nothing(archive: Archive) -> None:
    prefix = f"documents/aborted-{uuid.uuid4()}/"
    for fail_after in (3 << 20, 40 << 20):  # within the first part, and after parts went up
        with pytest.raises(ConnectionError):
            archive.store.put_stream(prefix + str(fail_after), _Stream(100 << 20, fail_after),
                                     content_type="video/mp4")
    assert _leftovers(archive.store, prefix) == []


def test_stale_temp_files_of_dead_writers_are_swept(tmp_path: Path) -> None:
    import os
    import time

    store = FileObjectStore(tmp_path / "objects")
    stale, fresh = store.root / ".tmp" / "tmpdead", store.root / ".tmp" / "tmpbusy"
    stale.write_bytes(b"half an upload")
    fresh.write_bytes(b"being written")
    old = time.time() - 2 * FileObjectStore.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    FileObjectStore(tmp_path / "objects")  # as at the next start of any vna process
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize("put", ["put_new", "put_file", "batch"])
def test_new_folders_are_flushed_with_the_object(tmp_path: Path, put: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A new series folder is durable only once its study folder (and theirs) are; so is
    one that another writer made and may not have flushed yet."""
    from storage import objectstore

    flushed: list[str] = []
    real = objectstore._fsync_dir
    monkeypatch.setattr(objectstore, "_fsync_dir", lambda d: (flushed.append(str(d)), real(d)))
    store = FileObjectStore(tmp_path / "objects")
    root = str(store.root)
    src = tmp_path / "x"

    def put(key: str) -> None:
        flushed.clear()
        src.write_bytes(key.encode())
        if put == "put_new":
            assert store.put_new(key, src)
        elif put == "put_file":
            store.put_file(key, src)
        else:
            store.put_file(key, src, durable=False)
            assert flushed == []
            store.make_durable([key])

    put("dicom/1.2/1.2.3/1.2.3.4.dcm")
    assert set(flushed) >= {f"{root}/dicom/1.2/1.2.3", f"{root}/dicom/1.2", f"{root}/dicom"}
    put("dicom/1.2/1.2.3/1.2.3.5.dcm")
    assert flushed == [f"{root}/dicom/1.2/1.2.3"]  # known folder: its own entry only
    put("dicom/1.2/1.2.9/1.2.9.1.dcm")
    assert flushed == [f"{root}/dicom/1.2/1.2.9", f"{root}/dicom/1.2"]  # new series
    (store.root / "dicom" / "1.2" / "1.2.7").mkdir()  # made by another process
    put("dicom/1.2/1.2.7/1.2.7.1.dcm")
    assert flushed == [f"{root}/dicom/1.2/1.2.7", f"{root}/dicom/1.2"]


def test_file_store_refuses_escaping_keys(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "objects")
    src = tmp_path / "x"
    src.write_bytes(b"x")
    with pytest.raises(ValueError):
        store.put_file("../outside", src)
    assert not (tmp_path / "outside").exists()


def test_store_and_duplicate(archive: Archive, tmp_path: Path) -> None:
    ds = make_instance()
    path = write(ds, tmp_path / "a.dcm")
    r1 = archive.store_file(path, source_aet="MOD1")
    assert r1.outcome == "stored"
    r2 = archive.store_file(path, source_aet="MOD1")
    assert r2.outcome == "duplicate"
    assert counts(archive) == {"patient": 1, "study": 1, "series": 1, "instance": 1}
    with archive.index.read_session() as s:
        inst = s.execute(select(Instance)).scalar_one()
    assert inst.source_aet == "MOD1"
    assert inst.size == path.stat().st_size
    assert len(inst.sha256) == 64
    assert inst.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    stored = archive.store.read(inst.storage_key)
    assert stored[inst.dataset_offset:] == dataset_bytes(path)


def test_conflicting_content_same_uid_is_refused(archive: Archive, tmp_path: Path) -> None:
    ds = make_instance()
    a = write(ds, tmp_path / "a.dcm")
    ds.StudyDescription = "SOMETHING ELSE"
    b = write(ds, tmp_path / "b.dcm")
    assert archive.store_file(a, source_aet="X").outcome == "stored"
    r = archive.store_file(b, source_aet="X")
    assert r.outcome == "conflict"
    with archive.index.read_session() as s:
        inst = s.execute(select(Instance)).scalar_one()
    assert archive.store.read(inst.storage_key)[inst.dataset_offset:] == dataset_bytes(a)


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_leaves_nothing(archive: Archive, tmp_path: Path, missing: str) -> None:
    ds = make_instance()
    delattr(ds, missing)
    path = tmp_path / "bad.dcm"
    ds.preamble = b"\0" * 128
    ds.save_as(path, enforce_file_format=False)
    r = archive.store_file(path, source_aet="X")
    assert r.outcome == "refused" and missing in (r.reason or "") and not r.unreadable
    assert counts(archive) == {"patient": 0, "study": 0, "series": 0, "instance": 0}


@pytest.mark.parametrize("keyword,value", [
    ("SOPInstanceUID", "1.2.abc"), ("StudyInstanceUID", "1.2.3\\1.2.4"),
    ("SeriesInstanceUID", "1." + "2" * 70), ("SOPClassUID", "")])
def test_malformed_uid_is_refused(archive: Archive, tmp_path: Path, keyword: str,
                                  value: str) -> None:
    ds = make_instance()
    setattr(ds, keyword, value)
    path = write(ds, tmp_path / "bad.dcm")
    r = archive.store_file(path, source_aet="X")
    assert r.outcome == "refused" and keyword in (r.reason or "") and not r.unreadable
    assert counts(archive) == {"patient": 0, "study": 0, "series": 0, "instance": 0}


def test_not_dicom_is_refused(archive: Archive, tmp_path: Path) -> None:
    p = tmp_path / "x.dcm"
    p.write_bytes(b"this is not DICOM at all" * 10)
    r = archive.store_file(p, source_aet="X")
    assert r.outcome == "refused" and r.unreadable  # answered 0xC000, not 0xA900
    assert counts(archive)["instance"] == 0


def test_batch_store(archive: Archive, tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.1"
    paths = [write(make_instance(study_uid=study, series_uid=study + ".1",
                                 instance_number=i), tmp_path / f"{i}.dcm") for i in range(20)]
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 300)
    results = archive.store_files([*paths, paths[0], bad], source_aet="IMPORT")
    assert [r.outcome for r in results] == ["stored"] * 20 + ["duplicate", "refused"]
    assert counts(archive) == {"patient": 1, "study": 1, "series": 1, "instance": 20}


def _populate(archive: Archive, tmp_path: Path) -> dict[str, str]:
    uids = {"s1": "1.2.3.1", "s2": "1.2.3.2", "s3": "1.2.3.3"}
    specs = [
        # patient, name, study, series, modality, date, time, n
        ("P1", "Doe^John", "s1", "1.2.3.1.1", "CT", "20240110", "083000", 3),
        ("P1", "Doe^John", "s1", "1.2.3.1.2", "SR", "20240110", "083000", 1),
        ("P1", "Doe^John", "s2", "1.2.3.2.1", "MR", "20240220", "141500", 2),
        ("P2", "Smith^Anna", "s3", "1.2.3.3.1", "CT", "20231231", "235959", 1),
    ]
    i = 0
    for pid, name, study, series, mod, date, time, n in specs:
        for k in range(n):
            i += 1
            ds = make_instance(patient_id=pid, patient_name=name, study_uid=uids[study],
                               series_uid=series, sop_uid=f"{series}.{k + 1}", modality=mod,
                               study_date=date, study_time=time, accession=f"A{study}")
            assert archive.store_file(write(ds, tmp_path / f"{i}.dcm"),
                                      source_aet="T").outcome == "stored"
    return uids


def q(archive: Archive, level: Level, **keys: object) -> list[dict[str, object]]:
    with archive.index.read_session() as s:
        return find(s, FindQuery.from_identifier(level, list(keys.items())))


def test_find_levels_and_counts(archive: Archive, tmp_path: Path) -> None:
    uids = _populate(archive, tmp_path)
    pats = q(archive, Level.PATIENT, PatientID="P1", PatientName=None,
             NumberOfPatientRelatedStudies=None, NumberOfPatientRelatedSeries=None,
             NumberOfPatientRelatedInstances=None)
    assert pats == [{"PatientID": "P1", "PatientName": "Doe^John",
                     "NumberOfPatientRelatedStudies": 2, "NumberOfPatientRelatedSeries": 3,
                     "NumberOfPatientRelatedInstances": 6}]
    studies = q(archive, Level.STUDY, PatientID="P1", StudyInstanceUID=None,
                ModalitiesInStudy=None, NumberOfStudyRelatedSeries=None,
                NumberOfStudyRelatedInstances=None)
    assert studies == [
        {"PatientID": "P1", "StudyInstanceUID": uids["s1"], "ModalitiesInStudy": ["CT", "SR"],
         "NumberOfStudyRelatedSeries": 2, "NumberOfStudyRelatedInstances": 4},
        {"PatientID": "P1", "StudyInstanceUID": uids["s2"], "ModalitiesInStudy": ["MR"],
         "NumberOfStudyRelatedSeries": 1, "NumberOfStudyRelatedInstances": 2},
    ]
    series = q(archive, Level.SERIES, StudyInstanceUID=uids["s1"], SeriesInstanceUID=None,
               Modality=None, NumberOfSeriesRelatedInstances=None)
    assert [(s["Modality"], s["NumberOfSeriesRelatedInstances"]) for s in series] == \
        [("CT", 3), ("SR", 1)]
    images = q(archive, Level.IMAGE, SeriesInstanceUID="1.2.3.1.1", SOPInstanceUID=None)
    assert [i["SOPInstanceUID"] for i in images] == ["1.2.3.1.1.1", "1.2.3.1.1.2", "1.2.3.1.1.3"]


def test_find_matching_rules(archive: Archive, tmp_path: Path) -> None:
    uids = _populate(archive, tmp_path)

    def study_uids(**keys: object) -> list[object]:
        keys.setdefault("StudyInstanceUID", None)
        return [r["StudyInstanceUID"] for r in q(archive, Level.STUDY, **keys)]

    assert study_uids(PatientName="doe^*") == [uids["s1"], uids["s2"]]  # PN case-insensitive
    assert study_uids(PatientName="D?E^JOHN") == [uids["s1"], uids["s2"]]
    assert study_uids(PatientID="p1") == []  # LO is case-sensitive
    assert study_uids(StudyDate="20240101-20241231") == [uids["s1"], uids["s2"]]
    assert study_uids(StudyDate="-20231231") == [uids["s3"]]
    assert study_uids(StudyDate="20240220") == [uids["s2"]]
    assert study_uids(StudyTime="14") == [uids["s2"]]
    assert study_uids(StudyTime="2300-") == [uids["s3"]]
    assert study_uids(StudyInstanceUID=f"{uids['s1']}\\{uids['s3']}") == [uids["s1"], uids["s3"]]
    assert study_uids(ModalitiesInStudy="MR") == [uids["s2"]]
    assert study_uids(ModalitiesInStudy=["SR", "MR"]) == [uids["s1"], uids["s2"]]
    assert study_uids(AccessionNumber="As*") == [uids["s1"], uids["s2"], uids["s3"]]


def test_find_injection_is_just_a_value(archive: Archive, tmp_path: Path) -> None:
    _populate(archive, tmp_path)
    assert q(archive, Level.PATIENT, PatientID="' OR '1'='1") == []
    assert q(archive, Level.PATIENT, PatientID="P%") == []  # % is not a DICOM wildcard
    assert q(archive, Level.PATIENT, PatientID="P_") == []
    assert len(q(archive, Level.PATIENT, PatientID="P?")) == 2
    assert counts(archive)["patient"] == 2


def test_put_new_only_when_absent(archive: Archive, tmp_path: Path) -> None:
    """Create-if-absent: a hard link on files, a PUT with If-None-Match: * on S3."""
    store = archive.store
    key = f"dicom/9.9/9.9/9.{uuid.uuid4().int}.dcm"  # the S3 bucket lives for the session
    src = tmp_path / "a"
    src.write_bytes(b"first")
    assert store.put_new(key, src) is True and not src.exists()
    src.write_bytes(b"second")
    assert store.put_new(key, src) is False
    assert store.read(key) == b"first" and src.exists()
    if isinstance(store, S3ObjectStore):  # too big for one conditional PUT: nothing done
        store.PUT_NEW_LIMIT = 4
        assert store.put_new(key + ".big", src) is None and src.exists()
        assert not store.exists(key + ".big")


def test_orphan_object_without_index_row_is_replaced(archive: Archive, tmp_path: Path) -> None:
    """An object left by a crash before its index commit does not block the re-send."""
    ds = make_instance()
    path = write(ds, tmp_path / "a.dcm")
    from storage.archive import prepare

    prepared = prepare(path)
    junk = tmp_path / "junk"
    junk.write_bytes(b"half-written leftovers")
    archive.store.put_file(prepared.key, junk)
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(path.read_bytes())
    assert archive.store_file(copy, source_aet="X", move=True).outcome == "stored"
    with archive.index.read_session() as s:
        inst = s.execute(select(Instance)).scalar_one()
    assert archive.store.read(inst.storage_key)[inst.dataset_offset:] == dataset_bytes(path)


def test_same_patient_id_other_issuer_is_another_patient(archive: Archive,
                                                         tmp_path: Path) -> None:
    a = write(make_instance(patient_id="1234", IssuerOfPatientID="HOSP_A"), tmp_path / "a.dcm")
    b = write(make_instance(patient_id="1234", IssuerOfPatientID="HOSP_B"), tmp_path / "b.dcm")
    c = write(make_instance(patient_id="1234"), tmp_path / "c.dcm")
    d = write(make_instance(patient_id="1234", IssuerOfPatientID="HOSP_A"), tmp_path / "d.dcm")
    for f in (a, b, c, d):
        assert archive.store_file(f, source_aet="X").outcome == "stored"
    assert counts(archive)["patient"] == 3
    res = q(archive, Level.PATIENT, PatientID="1234", IssuerOfPatientID=None,
            NumberOfPatientRelatedStudies=None)
    assert sorted((r["IssuerOfPatientID"] or "", r["NumberOfPatientRelatedStudies"])
                  for r in res) == [("", 1), ("HOSP_A", 2), ("HOSP_B", 1)]


def _two_versions(tmp_path: Path) -> tuple[Path, Path]:
    """One SOP Instance UID, two contents (another patient name); new UIDs each time (the
    S3 bucket is shared by the session's tests)."""
    study = f"2.25.{uuid.uuid4().int}"
    a, b = (write(make_instance(study_uid=study, series_uid=f"{study}.1", sop_uid=f"{study}.1.1",
                                patient_name=name), tmp_path / f"{n}.dcm")
            for n, name in (("a", "First^Sender"), ("b", "Second^Sender")))
    return a, b


def test_store_in_flight_is_not_overwritten(archive: Archive, tmp_path: Path) -> None:
    """Another content under a UID whose first store is between object and index row:
    refused as a conflict once that row lands, and the first store's bytes stay."""
    import threading

    from storage.archive import prepare

    a, b = _two_versions(tmp_path)
    first, a_bytes = prepare(a), a.read_bytes()
    assert archive.store.put_new(first.key, a)  # the first store, in flight
    results = []
    second = threading.Thread(target=lambda: results.append(
        archive.store_file(b, source_aet="SECOND", move=True)))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # waiting for the first store's row
    assert archive._commit([(first, "FIRST", None)])[0].ok  # type: ignore[union-attr]
    second.join(10)
    assert results[0].outcome == "conflict"
    assert archive.store.read(first.key) == a_bytes


def test_object_left_by_a_crash_is_replaced(archive: Archive, tmp_path: Path) -> None:
    """An object without an index row that nobody commits (a crash between the two): the
    next store of that instance replaces it and is indexed."""
    from storage.archive import prepare

    a, b = _two_versions(tmp_path)
    leftover = prepare(a)
    assert archive.store.put_new(leftover.key, a)
    b_bytes = b.read_bytes()
    archive.IN_FLIGHT_SECONDS = 0.3
    assert archive.store_file(b, source_aet="RESEND", move=True).outcome == "stored"
    assert archive.store.read(leftover.key) == b_bytes
    assert counts(archive)["instance"] == 1


def test_an_identical_leftover_is_taken_at_once(archive: Archive, tmp_path: Path) -> None:
    """What a crash left at the key is the very instance being sent again: no waiting for
    a row that will not come; the object is taken as it is."""
    import time

    from storage.archive import prepare

    a, _ = _two_versions(tmp_path)
    sent = a.read_bytes()
    leftover = prepare(a)
    assert archive.store.put_new(leftover.key, a)  # a crash's leftover: no row
    again = tmp_path / "again.dcm"
    again.write_bytes(sent)
    t0 = time.monotonic()
    assert archive.store_file(again, source_aet="RESEND", move=True).outcome == "stored"
    assert time.monotonic() - t0 < archive.IN_FLIGHT_SECONDS / 2
    assert archive.store.read(leftover.key) == sent
    assert counts(archive)["instance"] == 1


def test_ingest_survives_a_dropped_database_connection(archive: Archive, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest path keeps one connection (Index.run_write). When the database drops
    it (a restart), the store finds out before it did anything and runs again on a new
    connection; a failure later in the transaction fails the store (never acknowledged)
    and drops the connection; nothing is half written."""
    if archive.index.dialect != "postgresql":
        pytest.skip("a SQLite connection cannot be dropped from outside")
    import sqlalchemy as sa

    files = [write(make_instance(), tmp_path / f"{i}.dcm") for i in range(4)]
    assert archive.store_file(files[0], source_aet="X").ok

    def drop_connections() -> None:
        admin = sa.create_engine(archive.index.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        admin.dispose()

    drop_connections()  # used just now: no ping; its first statement fails, run again
    assert archive.store_file(files[1], source_aet="X").ok

    real = archive.writer.write
    calls = []

    def write_then_lose_the_connection(cursor: Any, *args: Any) -> Any:
        done = real(cursor, *args)
        calls.append(1)
        drop_connections()  # half-way: the transaction's statements ran; it is not retried
        return done

    monkeypatch.setattr(archive.writer, "write", write_then_lose_the_connection)
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver says
        archive.store_file(files[2], source_aet="X")
    assert len(calls) == 1
    monkeypatch.undo()
    drop_connections()
    monkeypatch.setattr(archive.index, "CURSOR_PING_AFTER", 0.0)  # idle: pinged, reconnects
    assert archive.store_file(files[3], source_aet="X").ok
    assert counts(archive)["instance"] == 3
    assert not archive.store.exists(archive_key(files[2]))


def archive_key(path: Path) -> str:
    from storage.archive import prepare

    return prepare(path).key


def test_one_bad_instance_fails_alone_in_a_shared_commit(archive: Archive, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Instances of several associations commit together (group commit); one that the
    database refuses fails alone: the others are indexed, its object is removed."""
    from storage.archive import prepare

    sent = []
    for i in range(3):
        f = write(make_instance(), tmp_path / f"{i}.dcm")
        p = prepare(f)
        archive.store.put_file(p.key, f)
        sent.append((p, f"AE{i}", None))
    bad = sent[1][0].header.sop_instance_uid
    real = archive.writer._insert_instance.execute

    def execute(cursor: object, values: dict[str, object]) -> object:
        if values["sop_instance_uid"] == bad:
            raise ValueError("a value the database refuses")
        return real(cursor, values)

    monkeypatch.setattr(archive.writer._insert_instance, "execute", execute)
    results = archive._commit(sent)
    assert isinstance(results[1], ValueError)
    assert all(not isinstance(r, Exception) and r.outcome == "stored"
               for r in (results[0], results[2]))
    assert counts(archive)["instance"] == 2
    assert not archive.store.exists(sent[1][0].key)
    assert archive.store.exists(sent[0][0].key) and archive.store.exists(sent[2][0].key)
