"""Synthetic DICOM instances for tests (and the benchmarks' corpus generator)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PYDICOM_TEST_FILES = Path(__import__("pydicom").__file__).parent / "data" / "test_files"


def make_instance(*, patient_id: str = "PAT1", patient_name: str = "Doe^John",
                  study_uid: str | None = None, series_uid: str | None = None,
                  sop_uid: str | None = None, modality: str = "CT",
                  study_date: str = "20240115", study_time: str = "101500",
                  accession: str = "ACC1", size: int = 8, instance_number: int = 1,
                  **extra: Any) -> Dataset:
    """A small, valid CT Image Storage instance with file meta."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDescription = "CT THORAX"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.BodyPartExamined = "CHEST"
    ds.StationName = "CT01"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(size * size, dtype=np.uint16) % 4096).tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, without preamble and file meta."""
    from pynetdicom.dsutils import split_dataset

    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def store_study(archive: Any, folder: Path, n: int, tag: str = "") -> list[str]:
    """A study of `n` small CT instances archived through `Archive.store_file` (as a
    C-STORE from AE T): their SOP Instance UIDs, in order."""
    study = f"2.25.{uuid.uuid4().int}"  # room below 64 characters for the suffixes
    uids = []
    for i in range(n):
        uid = f"{study}.1.{i}"
        ds = make_instance(study_uid=study, series_uid=study + ".1", sop_uid=uid,
                           instance_number=i)
        assert archive.store_file(write(ds, folder / f"{tag}{uid}.dcm"), source_aet="T").ok
        uids.append(uid)
    return uids


def store_document(archive: Any, content: bytes, mime_type: str) -> str:
    """A document stored the way the API stores it: object first, then the entry."""
    import hashlib
    import io
    from datetime import UTC, datetime

    from storage.index.documents import Documents, StoredObject
    from storage.keys import document_object_key
    from vna.documents.entry import DocumentMetadata, new_entry_uuid, new_unique_id

    entry_uuid, unique_id = new_entry_uuid(), new_unique_id()
    key = document_object_key(entry_uuid, datetime.now(UTC))
    archive.store.put_stream(key, io.BytesIO(content), content_type=mime_type)
    Documents(archive.index).add(
        DocumentMetadata(patientId="191212121212", classCode="c", practiceSettingCode="d"),
        StoredObject(key, hashlib.sha256(content).hexdigest(), len(content), mime_type, None),
        unique_id=unique_id, entry_uuid=entry_uuid, repository_unique_id="2.25.1",
        submitted_by="test")
    return unique_id
