"""The ingest path every SOP Instance takes, whether it came by C-STORE or `vna import`.

Order of work, so that nothing acknowledged can be lost:
1. parse the header (identifying UIDs must be present and valid), hash and size the file;
2. an already archived instance with the same dataset bytes is a duplicate: nothing is written;
3. write the object (atomic; fsynced when VNA_FSYNC=true);
4. write the index rows in one transaction and commit (fsynced by the database);
5. only then report success. A failure after 3 removes the object again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom.dsutils import split_dataset
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.index.db import Index
from storage.index.models import Instance, Patient, Series, Study
from storage.keys import dicom_object_key
from storage.objectstore import ObjectStore, make_object_store
from vna.dicom.attributes import InstanceHeader, InvalidInstance, extract_header
from vna.settings import Settings

log = logging.getLogger(__name__)

Outcome = Literal["stored", "duplicate", "conflict", "refused"]


@dataclass
class StoreResult:
    outcome: Outcome
    sop_instance_uid: str | None = None
    reason: str | None = None
    size: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome in ("stored", "duplicate")


@dataclass
class PreparedInstance:
    """A Part 10 file, parsed and hashed, ready to archive."""

    path: Path
    header: InstanceHeader
    transfer_syntax_uid: str
    sha256: str
    size: int
    dataset_offset: int

    @property
    def key(self) -> str:
        h = self.header
        return dicom_object_key(h.study_instance_uid, h.series_instance_uid, h.sop_instance_uid)


def _hash_file(path: Path, offset: int) -> tuple[str, str, int]:
    """SHA-256 of the whole file and of its dataset part (after the file meta), and size."""
    whole = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        head = f.read(offset)
        whole.update(head)
        size += len(head)
        data = hashlib.sha256()
        while chunk := f.read(1 << 20):
            whole.update(chunk)
            data.update(chunk)
            size += len(chunk)
    return whole.hexdigest(), data.hexdigest(), size


def dataset_sha256(stream: Any, offset: int) -> str:
    h = hashlib.sha256()
    skip = offset
    while chunk := stream.read(1 << 20):
        if skip:
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        h.update(chunk)
    return h.hexdigest()


def prepare(path: Path) -> tuple[PreparedInstance, str]:
    """Parse and hash a Part 10 file; raises InvalidInstance for what the archive refuses."""
    try:
        meta, offset = split_dataset(path)
        ts = str(meta.get("TransferSyntaxUID", "") or "")
        if not ts:
            raise InvalidInstance("not a DICOM Part 10 file (no transfer syntax in file meta)")
        ds = dcmread(path, stop_before_pixels=True)
    except InvalidInstance:
        raise
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError,
            AttributeError, NotImplementedError) as exc:
        raise InvalidInstance(f"not readable as DICOM: {exc.__class__.__name__}") from exc
    except Exception as exc:  # pydicom raises a variety of errors on malformed data
        raise InvalidInstance(f"not readable as DICOM: {exc.__class__.__name__}") from exc
    header = extract_header(ds)
    whole, data, size = _hash_file(path, offset)
    return PreparedInstance(path, header, ts, whole, size, offset), data


class Archive:
    """The SOP Instance archive: object store + index, and the one ingest path into them."""

    def __init__(self, settings: Settings, *, index: Index | None = None,
                 store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.index = index or Index(settings.resolved_database_url, fsync=settings.fsync)
        self.store = store or make_object_store(settings)

    # -- ingest ---------------------------------------------------------------------------

    def store_file(self, path: Path, *, source_aet: str | None, move: bool = False,
                   expected_sop_instance_uid: str | None = None) -> StoreResult:
        """Archive one Part 10 file durably; the result says what happened."""
        try:
            prepared, data_sha = prepare(path)
        except InvalidInstance as exc:
            return StoreResult("refused", reason=str(exc))
        uid = prepared.header.sop_instance_uid
        if expected_sop_instance_uid and uid != expected_sop_instance_uid:
            return StoreResult("refused", uid, "SOPInstanceUID differs from the C-STORE request")
        dup = self._duplicate_check(prepared, data_sha)
        if dup is not None:
            return dup
        self.store.put_file(prepared.key, path, move=move)
        return self._commit([prepared], source_aet, {prepared.key: data_sha})[0]

    def store_files(self, paths: Sequence[Path], *, source_aet: str | None) -> list[StoreResult]:
        """Archive a batch: one fsync pass and one index transaction for all of them."""
        results: list[StoreResult | None] = [None] * len(paths)
        todo: list[tuple[int, PreparedInstance]] = []
        data_shas: dict[str, str] = {}
        for i, path in enumerate(paths):
            try:
                prepared, data_sha = prepare(path)
            except InvalidInstance as exc:
                results[i] = StoreResult("refused", reason=str(exc))
                continue
            if prepared.key in data_shas:  # the same instance twice in one batch
                results[i] = StoreResult("duplicate", prepared.header.sop_instance_uid,
                                         size=prepared.size)
                continue
            dup = self._duplicate_check(prepared, data_sha)
            if dup is not None:
                results[i] = dup
                continue
            self.store.put_file(prepared.key, path, durable=False)
            data_shas[prepared.key] = data_sha
            todo.append((i, prepared))
        if todo:
            self.store.make_durable(data_shas)
            committed = self._commit([p for _, p in todo], source_aet, data_shas)
            for (i, _), res in zip(todo, committed, strict=True):
                results[i] = res
        return [r for r in results if r is not None]

    def _duplicate_check(self, prepared: PreparedInstance, data_sha: str) -> StoreResult | None:
        uid = prepared.header.sop_instance_uid
        with self.index.read_session() as s:
            row = s.execute(
                select(Instance.sha256, Instance.dataset_offset, Instance.storage_key)
                .where(Instance.sop_instance_uid == uid)).first()
        if row is None:
            return None
        if row.sha256 == prepared.sha256:
            return StoreResult("duplicate", uid, size=prepared.size)
        with self.store.open(row.storage_key) as f:
            stored = dataset_sha256(f, row.dataset_offset)
        if stored == data_sha:
            return StoreResult("duplicate", uid, size=prepared.size)
        return StoreResult("conflict", uid,
                           "an instance with this SOPInstanceUID and other content is archived")

    def _commit(self, batch: list[PreparedInstance], source_aet: str | None,
                data_shas: dict[str, str]) -> list[StoreResult]:
        now = datetime.now(UTC)
        try:
            with self.index.session() as s:
                for p in batch:
                    write_index_rows(s, p, source_aet, now)
        except IntegrityError:
            if len(batch) > 1:  # someone else archived one of them meanwhile: go one by one
                return [self._commit([p], source_aet, data_shas)[0] for p in batch]
            p = batch[0]
            dup = self._duplicate_check(p, data_shas[p.key])
            return [dup or StoreResult("conflict", p.header.sop_instance_uid, "index conflict")]
        except BaseException:
            for p in batch:
                self.store.delete(p.key)
            raise
        return [StoreResult("stored", p.header.sop_instance_uid, size=p.size) for p in batch]


def _get_or_create(s: Session, model: Any, unique_col: str, values: dict[str, Any]) -> int:
    col = getattr(model, unique_col)
    found = s.execute(select(model.id).where(col == values[unique_col])).scalar()
    if found is not None:
        return int(found)
    insert = pg_insert if s.bind is not None and s.bind.dialect.name == "postgresql" \
        else sqlite_insert
    s.execute(insert(model).values(**values).on_conflict_do_nothing(index_elements=[unique_col]))
    return int(s.execute(select(model.id).where(col == values[unique_col])).scalar_one())


def write_index_rows(s: Session, p: PreparedInstance, source_aet: str | None,
                     received_at: datetime) -> None:
    """Insert the instance and, where new, its patient, study and series rows."""
    h = p.header
    patient_fk = _get_or_create(s, Patient, "patient_id", h.patient)
    study_fk = _get_or_create(s, Study, "study_instance_uid",
                              {**h.study, "patient_fk": patient_fk, "created_at": received_at})
    series_fk = _get_or_create(s, Series, "series_instance_uid",
                               {**h.series, "study_fk": study_fk})
    s.add(Instance(
        series_fk=series_fk, transfer_syntax_uid=p.transfer_syntax_uid, source_aet=source_aet,
        received_at=received_at, size=p.size, sha256=p.sha256,
        dataset_offset=p.dataset_offset, storage_key=p.key, **h.instance,
    ))
    s.flush()


def iter_dicom_files(paths: Iterable[Path]) -> Iterable[Path]:
    """Every file under the given files and folders, in a stable order."""
    for p in paths:
        if p.is_dir():
            yield from sorted(x for x in p.rglob("*") if x.is_file())
        elif p.is_file():
            yield p
