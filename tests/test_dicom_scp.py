"""The DICOM service over the network, driven by a pynetdicom client, on both backends."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.dsutils import split_dataset
from sqlalchemy import func, select

from services.dicom_scp.server import TRANSFER_SYNTAXES
from services.runtime import open_archive
from storage.index.models import Instance
from tests import dicom_client as dc
from tests.conftest import Backend, RunningSCP, free_port, running_scp, start_scp, stop_scp
from tests.factory import dataset_bytes, make_instance, write

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def pydicom_corpus() -> list[list[Path]]:
    """pydicom's own test files that are valid storage instances, in rounds of unique UIDs.

    Several files are the same image in other transfer syntaxes with the same SOP Instance
    UID; an archive keeps one version per UID, so each round goes to a fresh archive.
    """
    sop_classes = {cx.abstract_syntax for cx in AllStoragePresentationContexts}
    rounds: list[list[Path]] = []
    seen: dict[str, int] = defaultdict(int)
    for p in sorted(PYDICOM_FILES.rglob("*.dcm")):
        try:
            meta, _ = split_dataset(p)
            ds = dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        ts = str(meta.get("TransferSyntaxUID", ""))
        uid = str(ds.get("SOPInstanceUID", ""))
        if ts not in TRANSFER_SYNTAXES or ds.get("SOPClassUID") not in sop_classes:
            continue
        if not (uid and ds.get("StudyInstanceUID") and ds.get("SeriesInstanceUID")):
            continue
        if uid != meta.get("MediaStorageSOPInstanceUID"):
            continue  # inconsistent file meta: refused by design (see test below)
        r = seen[uid]
        seen[uid] += 1
        while len(rounds) <= r:
            rounds.append([])
        rounds[r].append(p)
    return rounds


CORPUS = pydicom_corpus()


def index_count(backend: Backend) -> int:
    a = open_archive(backend.settings())
    try:
        with a.index.read_session() as s:
            return int(s.execute(select(func.count()).select_from(Instance)).scalar_one())
    finally:
        a.index.dispose()


def objects_on_disk(backend: Backend) -> list[Path]:
    root = backend.data_dir / "objects" / "dicom"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _roundtrip(scp: RunningSCP, files: list[Path], *, also_query: bool = False) -> None:
    statuses = dc.store(scp.port, files, also_query=also_query)
    assert statuses == [0] * len(files), dict(zip(files, statuses, strict=True))
    pairs = set(dc.file_pairs(files).values())
    studies = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files}
    final, received = dc.get(scp.port, "STUDY", {"StudyInstanceUID": list(studies)}, pairs)
    assert final is not None and final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == len(files)
    assert final.NumberOfFailedSuboperations == 0
    for p in files:
        uid = str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        assert received.datasets[uid] == dataset_bytes(p), f"{p.name} changed"


# Both receive paths: the storage fast path (storage-only associations) and pynetdicom's
# (an association that also proposes C-FIND).
PATHS = pytest.mark.parametrize("also_query", [False, True], ids=["fastpath", "pynetdicom"])


@PATHS
def test_pydicom_files_roundtrip_byte_for_byte(scp: RunningSCP, also_query: bool) -> None:
    """Round 1 (one file per SOP Instance UID) on both backends."""
    _roundtrip(scp, CORPUS[0], also_query=also_query)
    assert index_count(scp.backend) == len(CORPUS[0])


@pytest.mark.parametrize("round_no", range(1, len(CORPUS)))
def test_pydicom_variants_roundtrip_byte_for_byte(embedded: Backend, round_no: int) -> None:
    """The other transfer-syntax variants, each round in a fresh embedded archive."""
    with running_scp(embedded) as scp:
        _roundtrip(scp, CORPUS[round_no])


def test_corpus_covers_the_spec_transfer_syntaxes() -> None:
    syntaxes = {ts for r in CORPUS for _, ts in dc.file_pairs(r).values()}
    for ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
               "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
               "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
               "1.2.840.10008.1.2.5"):
        assert ts in syntaxes


def test_echo_and_duplicate(scp: RunningSCP, tmp_path: Path) -> None:
    assoc = dc.echo(scp.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    f = write(make_instance(), tmp_path / "a.dcm")
    assert dc.store(scp.port, [f]) == [0]
    assert dc.store(scp.port, [f, f]) == [0, 0]
    assert index_count(scp.backend) == 1


@PATHS
@pytest.mark.parametrize("missing", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_store_without_uid_refused_and_nothing_left(embedded: Backend, tmp_path: Path,
                                                     missing: str, also_query: bool) -> None:
    with running_scp(embedded) as scp:
        ds = make_instance()
        sop_uid = ds.SOPInstanceUID
        delattr(ds, missing)
        ds.preamble = b"\0" * 128
        f = tmp_path / "bad.dcm"
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.save_as(f, enforce_file_format=False)
        [status] = dc.store(scp.port, [f], also_query=also_query)
        assert status == 0xA900
        assert index_count(embedded) == 0
        assert objects_on_disk(embedded) == []
        assert [p for p in (embedded.data_dir / "incoming").rglob("*") if p.is_file()] == []


@PATHS
def test_store_uid_mismatch_and_conflict(embedded: Backend, tmp_path: Path,
                                         also_query: bool) -> None:
    with running_scp(embedded) as scp:
        ds = make_instance()
        good = write(ds, tmp_path / "good.dcm")
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"  # C-STORE request says otherwise
        ds.preamble = b"\0" * 128
        bad = tmp_path / "mismatch.dcm"
        ds.save_as(bad, enforce_file_format=False)
        # the SOP Instance UID again, other content: of another patient (tests/
        # test_patient_identity.py says more), or of the same one
        ds2 = make_instance(sop_uid=str(ds.SOPInstanceUID), patient_id="OTHER")
        other_patient = write(ds2, tmp_path / "other-patient.dcm")
        ds3 = make_instance(sop_uid=str(ds.SOPInstanceUID), study_uid=str(ds.StudyInstanceUID),
                            series_uid=str(ds.SeriesInstanceUID), accession="CHANGED")
        conflict = write(ds3, tmp_path / "conflict.dcm")
        assert dc.store(scp.port, [good, bad, other_patient, conflict],
                        also_query=also_query) == [0, 0xA900, 0xA778, 0xC001]
        assert index_count(embedded) == 1


@PATHS
def test_store_garbage_dataset_refused(embedded: Backend, tmp_path: Path,
                                       also_query: bool) -> None:
    """A dataset that cannot be parsed: refused, nothing archived, association survives."""
    with running_scp(embedded) as scp:
        ds = make_instance()
        f = write(ds, tmp_path / "x.dcm")
        meta, off = split_dataset(f)
        raw = f.read_bytes()
        broken = tmp_path / "broken.dcm"
        broken.write_bytes(raw[:off] + b"\x08\x00\x18\x00UI\xff\xff" + b"garbage" * 20)
        first, second = dc.store(scp.port, [broken, f], also_query=also_query)
        assert first in (0xA900, 0xC000) and second == 0
        assert index_count(embedded) == 1


def test_find_over_the_wire(scp: RunningSCP, tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.77"
    files = [write(make_instance(patient_id="FINDME", patient_name="Ström^Åsa",
                                 study_uid=study, series_uid=f"{study}.{s}",
                                 sop_uid=f"{study}.{s}.{i}", modality=m,
                                 instance_number=i), tmp_path / f"{s}-{i}.dcm")
             for s, m in ((1, "CT"), (2, "PR")) for i in range(1, 4)]
    assert dc.store(scp.port, files) == [0] * 6
    status, res = dc.find(scp.port, "STUDY", {
        "PatientID": "FINDME", "PatientName": "", "StudyInstanceUID": "",
        "ModalitiesInStudy": "", "NumberOfStudyRelatedSeries": None,
        "NumberOfStudyRelatedInstances": None, "StudyDate": "20240101-20241231",
    })
    assert status == 0
    assert len(res) == 1
    r = res[0]
    assert r.StudyInstanceUID == study
    assert str(r.PatientName) == "Ström^Åsa"
    assert list(r.ModalitiesInStudy) == ["CT", "PR"]
    assert r.NumberOfStudyRelatedSeries == 2
    assert r.NumberOfStudyRelatedInstances == 6
    status, pats = dc.find(scp.port, "PATIENT", {"PatientName": "ström*",
                                                 "NumberOfPatientRelatedInstances": None,
                                                 "PatientID": ""}, model="PATIENT")
    assert status == 0 and [p.PatientID for p in pats] == ["FINDME"]
    assert pats[0].NumberOfPatientRelatedInstances == 6
    status, imgs = dc.find(scp.port, "IMAGE", {"StudyInstanceUID": study,
                                               "SeriesInstanceUID": f"{study}.2",
                                               "SOPInstanceUID": "", "InstanceNumber": ""})
    assert status == 0 and sorted(i.SOPInstanceUID for i in imgs) == \
        [f"{study}.2.{i}" for i in range(1, 4)]


def test_find_bad_identifiers(scp: RunningSCP) -> None:
    status, res = dc.find(scp.port, "BOGUS", {"PatientID": ""})
    assert status == 0xA900 and res == []
    status, res = dc.find(scp.port, "PATIENT", {"PatientID": ""}, model="STUDY")
    assert status == 0xA900  # no PATIENT level in Study Root
    status, res = dc.find(scp.port, "STUDY", {"StudyDate": "2024-99"})
    assert status == 0xC000
    status, res = dc.find(scp.port, "STUDY", {"PatientID": "x' OR 1=1 --"})
    assert status == 0 and res == []


def test_move_counts_and_unknown_destination(backend: Backend, tmp_path: Path) -> None:
    peer_port = free_port()
    peer = dc.StoragePeer(peer_port, "PEER")
    scp = start_scp(backend, VNA_DICOM_PEERS=f"PEER@127.0.0.1:{peer_port}")
    try:
        study = "1.2.826.0.1.3680043.8.498.88"
        files = [write(make_instance(study_uid=study, series_uid=study + ".1",
                                     sop_uid=f"{study}.1.{i}"), tmp_path / f"{i}.dcm")
                 for i in range(5)]
        assert dc.store(scp.port, files) == [0] * 5
        final = dc.move(scp.port, "STUDY", {"StudyInstanceUID": study}, "PEER")
        assert final is not None and final.Status == 0
        assert final.NumberOfCompletedSuboperations == 5
        assert final.NumberOfFailedSuboperations == 0
        assert {u: b for u, b in peer.received.datasets.items()} == \
            {f"{study}.1.{i}": dataset_bytes(files[i]) for i in range(5)}
        final = dc.move(scp.port, "STUDY", {"StudyInstanceUID": study}, "NOBODY")
        assert final is not None and final.Status == 0xA801
        final = dc.move(scp.port, "SERIES", {"StudyInstanceUID": study,
                                             "SeriesInstanceUID": study + ".1"}, "PEER")
        assert final.NumberOfCompletedSuboperations == 5
        final = dc.move(scp.port, "STUDY", {"StudyInstanceUID": "1.2.3.4.404"}, "PEER")
        assert final.Status == 0 and final.NumberOfCompletedSuboperations == 0
    finally:
        stop_scp(scp)
        peer.close()


def test_get_converts_when_stored_syntax_not_accepted(scp: RunningSCP, tmp_path: Path) -> None:
    f = write(make_instance(), tmp_path / "a.dcm")  # explicit VR little endian
    assert dc.store(scp.port, [f]) == [0]
    ds = dcmread(f)
    final, received = dc.get(scp.port, "IMAGE", {
        "StudyInstanceUID": ds.StudyInstanceUID, "SeriesInstanceUID": ds.SeriesInstanceUID,
        "SOPInstanceUID": ds.SOPInstanceUID}, {(str(ds.SOPClassUID), "1.2.840.10008.1.2")})
    assert final.Status == 0 and final.NumberOfCompletedSuboperations == 1
    assert received.syntaxes[ds.SOPInstanceUID] == "1.2.840.10008.1.2"


def test_get_requires_unique_key(scp: RunningSCP) -> None:
    final, _ = dc.get(scp.port, "STUDY", {"PatientID": "X"}, {("1.2.840.10008.5.1.4.1.1.2",
                                                              "1.2.840.10008.1.2.1")})
    assert final is not None and final.Status == 0xA900


def test_allowed_aets_reject_at_association(embedded: Backend) -> None:
    with running_scp(embedded, VNA_DICOM_ALLOWED_AETS="GOODAE,OTHER") as scp:
        bad = dc.echo(scp.port, calling="EVIL")
        assert bad.is_rejected
        good = dc.echo(scp.port, calling="GOODAE")
        assert good.is_established
        good.release()
    assert "EVIL" in scp.logtext()


def test_concurrent_associations(scp: RunningSCP, tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.99"
    batches = [[write(make_instance(study_uid=study, series_uid=f"{study}.{t}",
                                    sop_uid=f"{study}.{t}.{i}"), tmp_path / f"{t}-{i}.dcm")
                for i in range(15)] for t in range(6)]
    results: dict[int, list[int]] = {}

    def send(t: int) -> None:
        results[t] = dc.store(scp.port, batches[t])

    threads = [threading.Thread(target=send, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert all(results[t] == [0] * 15 for t in range(6))
    status, res = dc.find(scp.port, "STUDY", {"StudyInstanceUID": study,
                                              "NumberOfStudyRelatedInstances": None})
    assert res[0].NumberOfStudyRelatedInstances == 90


def test_kill_9_mid_transfer_loses_nothing_acknowledged(backend: Backend,
                                                        tmp_path: Path) -> None:
    """kill -9 of every SCP process while a modality is sending: each instance that got
    Success is archived (index and bytes) after a restart; nothing half-written remains."""
    import os
    import signal

    study = "1.2.826.0.1.3680043.8.498.911"
    files = [write(make_instance(study_uid=study, series_uid=study + ".1",
                                 sop_uid=f"{study}.1.{i}", size=64), tmp_path / f"{i}.dcm")
             for i in range(300)]
    scp = start_scp(backend)
    acknowledged: list[str] = []
    pairs = dc.file_pairs(files[:1])
    assoc = dc.associate(scp.port, [dc._cx(sc, [ts]) for sc, ts in set(pairs.values())])
    assert assoc.is_established
    try:
        for i, f in enumerate(files):
            if i == 120:
                os.killpg(scp.proc.pid, signal.SIGKILL)
            try:
                rsp = assoc.send_c_store(f)
            except Exception:
                break
            if not assoc.is_established or "Status" not in rsp:
                break
            if rsp.Status == 0:
                acknowledged.append(f"{study}.1.{i}")
    finally:
        if assoc.is_established:
            assoc.abort()
        scp.proc.wait(10)
    assert 100 <= len(acknowledged) < 300
    with running_scp(backend) as scp:
        status, res = dc.find(scp.port, "IMAGE", {"StudyInstanceUID": study,
                                                  "SeriesInstanceUID": study + ".1",
                                                  "SOPInstanceUID": ""})
        archived = {str(r.SOPInstanceUID) for r in res}
        assert set(acknowledged) <= archived
        final, received = dc.get(scp.port, "STUDY", {"StudyInstanceUID": study},
                                 set(pairs.values()))
        assert final.NumberOfFailedSuboperations == 0
        for uid in acknowledged:
            i = int(uid.rsplit(".", 1)[1])
            assert received.datasets[uid] == dataset_bytes(files[i])
    incoming = backend.data_dir / "incoming"
    assert [p for p in incoming.rglob("*") if p.is_file()] == []
    # Every archived instance has its outbox event (same transaction): the workers' follow-up
    # work survives the kill too.
    import sqlalchemy as sa

    from storage.index.db import Index

    index = Index(backend.settings().resolved_database_url)  # type: ignore[attr-defined]
    try:
        with index.read_session() as s:
            events = set(s.scalars(sa.text(
                "SELECT subject FROM outbox_event WHERE kind = 'instance.stored'")))
    finally:
        index.dispose()
    assert events == archived
