"""The ingest path every SOP Instance takes, whether it came by C-STORE or `vna import`.

Order of work, so that nothing acknowledged can be lost:
1. parse the header (identifying UIDs must be present and valid), hash and size the file;
2. an already archived instance with the same dataset bytes is a duplicate: nothing is written;
   one with other content, or archived for another patient, is a conflict;
3. write the object (atomic; fsynced when VNA_FSYNC=true);
4. write the index rows and the outbox event (work for the workers) in one transaction
   and commit (fsynced by the database); the same transaction refuses an instance whose
   study or series the archive holds for another patient or study (`IndexWriter`);
5. only then report success. A failure or refusal after 3 removes the object again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select

from storage.groupcommit import GroupCommit
from storage.index.db import Index
from storage.index.ingest import IndexWriter, InstanceRow, Written
from storage.index.models import Instance, Patient, Series, Study
from storage.keys import dicom_object_key
from storage.objectstore import ObjectStore
from storage.outbox import INSTANCE_STORED
from vna.dicom.attributes import (
    HEADER_ELEMENTS,
    InstanceHeader,
    InvalidInstance,
    UnreadableInstance,
    extract_header,
    header_from_elements,
)
from vna.dicom.dimse import refusal_status
from vna.dicom.identity import ConflictPolicy, IdentityConflict, PatientIdentity
from vna.dicom.part10 import (
    HEADER_BYTES,
    ReceivedFile,
    dataset_encoding,
    dataset_sha256,
    hash_file,
    read_header,
    read_transfer_syntax,
)

if TYPE_CHECKING:
    from storage.audit import AssociationAudit

log = logging.getLogger(__name__)

# conflict: the SOP Instance UID (or its series) is archived with other content or in
# another study; patient_conflict: the study or instance is archived for another patient.
Outcome = Literal["stored", "duplicate", "conflict", "patient_conflict", "refused"]


@dataclass
class StoreResult:
    outcome: Outcome
    sop_instance_uid: str | None = None
    reason: str | None = None
    size: int = 0
    unreadable: bool = False  # refused because the bytes are not DICOM at all
    conflict: IdentityConflict | None = None  # what a conflict contradicted
    archived_key: str | None = None  # a duplicate's or conflict's object, as archived

    @classmethod
    def refused_for(cls, conflict: IdentityConflict, size: int = 0,
                    archived_key: str | None = None) -> StoreResult:
        outcome: Outcome = "patient_conflict" if conflict.rule == "patient_conflict" \
            else "conflict"
        return cls(outcome, conflict.sop_instance_uid, conflict.reason, size,
                   conflict=conflict, archived_key=archived_key)

    @property
    def ok(self) -> bool:
        return self.outcome in ("stored", "duplicate")


@dataclass
class PreparedInstance:
    """A Part 10 file, parsed and hashed, ready to archive."""

    path: str | Path
    header: InstanceHeader
    transfer_syntax_uid: str
    sha256: str
    size: int
    dataset_offset: int

    @functools.cached_property
    def key(self) -> str:
        h = self.header
        return dicom_object_key(h.study_instance_uid, h.series_instance_uid, h.sop_instance_uid)


def _read_header(rf: ReceivedFile) -> InstanceHeader:
    """The index rows of the instance: from the head bytes when they can be read without
    pydicom (`vna.dicom.part10.ElementReader`), else from the file through pydicom."""
    encoding = dataset_encoding(rf.transfer_syntax_uid)
    if encoding is not None:
        implicit, little = encoding
        elements = HEADER_ELEMENTS.read(rf.dataset_head, implicit_vr=implicit,
                                        little_endian=little, complete=rf.whole_dataset)
        if elements is not None:
            return header_from_elements(elements, implicit_vr=implicit, little_endian=little)
    try:
        ds = read_header(rf.path, rf.transfer_syntax_uid, rf.dataset_offset)
    except Exception as exc:  # pydicom raises a variety of errors on malformed data
        raise UnreadableInstance(f"not readable as DICOM: {exc.__class__.__name__}") from exc
    return extract_header(ds)


def prepare_received(rf: ReceivedFile) -> PreparedInstance:
    """Parse a Part 10 file whose hash and head are known; raises InvalidInstance for what
    the archive refuses."""
    return PreparedInstance(rf.path, _read_header(rf), rf.transfer_syntax_uid, rf.sha256,
                            rf.size, rf.dataset_offset)


def prepare(path: Path) -> PreparedInstance:
    """Parse and hash a Part 10 file; raises InvalidInstance for what the archive refuses."""
    try:
        ts, offset = read_transfer_syntax(path)
    except Exception as exc:
        raise UnreadableInstance(f"not readable as DICOM: {exc.__class__.__name__}") from exc
    if not ts:
        raise UnreadableInstance("not a DICOM Part 10 file (no transfer syntax in file meta)")
    sha256, size, head = hash_file(path, head=(offset, HEADER_BYTES))
    return prepare_received(ReceivedFile(path, ts, offset, sha256, size, head))


class Archive:
    """The SOP Instance archive: object store + index, and the one ingest path into them."""

    def __init__(self, index: Index, store: ObjectStore, *,
                 patient_conflict: ConflictPolicy = ConflictPolicy.REJECT) -> None:
        self.index = index
        self.store = store
        self.writer = IndexWriter(self.index.engine.dialect, INSTANCE_STORED,
                                  patient_conflict)
        # C-STOREs of concurrent associations share a transaction (storage.groupcommit)
        self._group: GroupCommit[Sent, StoreResult | Exception] = GroupCommit(self._commit)

    # -- ingest ---------------------------------------------------------------------------

    def store_file(self, source: Path | ReceivedFile | PreparedInstance, *,
                   source_aet: str | None, move: bool = False,
                   expected_sop_instance_uid: str | None = None,
                   audit: AssociationAudit | None = None) -> StoreResult:
        """Archive one Part 10 file durably; the result says what happened. `source` may
        come prepared already (STOW-RS reads the header for its own checks first). With
        `move` the file is consumed whatever happens: archived, or removed. With `audit` (a
        DICOM association's), the first instance of each study writes the study's audit
        record in its own transaction, and every result is counted."""
        try:
            return self._store_file(source, source_aet, move, expected_sop_instance_uid,
                                    audit)
        finally:
            if move:  # gone already when it was moved into place
                with contextlib.suppress(OSError):
                    os.unlink(source if isinstance(source, Path) else source.path)

    def _store_file(self, source: Path | ReceivedFile | PreparedInstance,
                    source_aet: str | None, move: bool,
                    expected_sop_instance_uid: str | None,
                    audit: AssociationAudit | None) -> StoreResult:
        try:
            if isinstance(source, PreparedInstance):
                prepared = source
            elif isinstance(source, ReceivedFile):
                prepared = prepare_received(source)
            else:
                prepared = prepare(source)
        except InvalidInstance as exc:
            if audit is not None:
                audit.refused_unreadable()
            return _refused(exc)
        result = self._store_prepared(prepared, source_aet, move, expected_sop_instance_uid,
                                      audit)
        if audit is not None:
            audit.ensure(prepared.header)  # nothing written: a duplicate or an early refusal
            audit.counted(prepared.header.study_instance_uid, result.ok,
                          0 if result.ok else refusal_status(result.outcome, result.unreadable))
        return result

    def _store_prepared(self, prepared: PreparedInstance, source_aet: str | None, move: bool,
                        expected_sop_instance_uid: str | None,
                        audit: AssociationAudit | None) -> StoreResult:
        path = prepared.path
        uid = prepared.header.sop_instance_uid
        sent = (prepared, source_aet, audit)
        if expected_sop_instance_uid and uid != expected_sop_instance_uid:
            return StoreResult("refused", uid, "SOPInstanceUID differs from the C-STORE request")
        # Fast path: no object at the key means a new instance, no index lookup needed.
        stored = self.store.put_new(prepared.key, path) if move else None
        if not stored:
            dup = self._duplicate_check([prepared]).get(uid)
            if dup is None and stored is False:
                # The key holds an object the index does not know. Our very bytes (a re-send
                # after a crash, a store of the same instance right now): take it as ours.
                if self.store.claim_identical(prepared.key, path, prepared.sha256):
                    return _raise_if_failed(self._group.submit(sent))
                dup = self._wait_for_index_row(prepared)
            if dup is not None:
                self._record_conflicts([(dup, source_aet)])
                return dup
            self.store.put_file(prepared.key, path, move=move)
        return _raise_if_failed(self._group.submit(sent))

    IN_FLIGHT_SECONDS = 5.0

    def _wait_for_index_row(self, p: PreparedInstance) -> StoreResult | None:
        """The key holds an object the index does not know: another association storing
        this instance right now (its row follows within milliseconds), or what a crash
        left. Replacing the first would put our bytes under its row; so wait for a row,
        and only after IN_FLIGHT_SECONDS take the object for a leftover."""
        deadline = time.monotonic() + self.IN_FLIGHT_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.02)
            dup = self._duplicate_check([p]).get(p.header.sop_instance_uid)
            if dup is not None:
                return dup
        return None

    def store_files(self, paths: Sequence[Path], *, source_aet: str | None) -> list[StoreResult]:
        """Archive a batch: one index lookup, one fsync pass and one transaction for all."""
        results: list[StoreResult | None] = [None] * len(paths)
        prepared: dict[int, PreparedInstance] = {}
        seen: set[str] = set()
        for i, path in enumerate(paths):
            try:
                p = prepare(path)
            except InvalidInstance as exc:
                results[i] = _refused(exc)
                continue
            if p.key in seen:  # the same instance twice in one batch
                results[i] = StoreResult("duplicate", p.header.sop_instance_uid, size=p.size)
                continue
            seen.add(p.key)
            prepared[i] = p
        duplicates = self._duplicate_check(list(prepared.values()))
        self._record_conflicts([(d, source_aet) for d in duplicates.values()])
        todo: list[tuple[int, PreparedInstance]] = []
        for i, p in prepared.items():
            dup = duplicates.get(p.header.sop_instance_uid)
            if dup is not None:
                results[i] = dup
            else:
                self.store.put_file(p.key, p.path, durable=False)
                todo.append((i, p))
        if todo:
            self.store.make_durable(p.key for _, p in todo)
            committed = self._commit([(p, source_aet, None) for _, p in todo])
            for (i, _), res in zip(todo, committed, strict=True):
                results[i] = _raise_if_failed(res)  # the database is down: so is the import
        return [r for r in results if r is not None]

    def _duplicate_check(self, batch: Sequence[PreparedInstance], *,
                         in_store: bool = False) -> dict[str, StoreResult]:
        """Duplicate or conflict results for the instances of `batch` already archived
        (`in_store`: the batch's bytes are in the store already, at their keys).

        Same SHA-256 of the object: duplicate. Otherwise the dataset bytes (without the file
        meta, which senders write differently) decide; they are hashed only in this case.
        Other content is a conflict: a patient conflict if the archived instance is another
        patient's, else a UID conflict that says where the instance is archived.
        """
        by_uid = {p.header.sop_instance_uid: p for p in batch}
        if not by_uid:
            return {}
        with self.index.read_engine.connect() as conn:
            rows = conn.execute(
                select(_I.c.sop_instance_uid, _I.c.sha256, _I.c.dataset_offset,
                       _I.c.storage_key, Series.series_instance_uid,
                       Study.study_instance_uid, Patient.patient_id,
                       Patient.issuer_of_patient_id)
                .join(Series, Series.id == _I.c.series_fk)
                .join(Study, Study.id == Series.study_fk)
                .join(Patient, Patient.id == Study.patient_fk)
                .where(_I.c.sop_instance_uid.in_(by_uid))).all()
        out: dict[str, StoreResult] = {}
        for row in rows:
            p = by_uid[row.sop_instance_uid]
            same = row.sha256 == p.sha256
            if not same:
                with self.store.open(row.storage_key) as stored, \
                        (self.store.open(p.key) if in_store else open(p.path, "rb")) as new:
                    same = dataset_sha256(stored, row.dataset_offset) == \
                        dataset_sha256(new, p.dataset_offset)
            if same:
                out[row.sop_instance_uid] = StoreResult(
                    "duplicate", row.sop_instance_uid, size=p.size,
                    archived_key=row.storage_key)
                continue
            h = p.header
            uids = (h.sop_instance_uid, h.study_instance_uid, h.series_instance_uid)
            sent = PatientIdentity(h.patient["patient_id"], h.patient["issuer_of_patient_id"])
            archived = PatientIdentity(row.patient_id, row.issuer_of_patient_id or "")
            if not archived.matches(sent):
                conflict = IdentityConflict.instance_of_another_patient(*uids, sent, archived)
            elif (row.study_instance_uid, row.series_instance_uid) != uids[1:]:
                conflict = IdentityConflict.instance_elsewhere(
                    *uids, sent, row.study_instance_uid, row.series_instance_uid)
            else:
                conflict = IdentityConflict.other_content(*uids, sent)
            out[row.sop_instance_uid] = StoreResult.refused_for(conflict, p.size,
                                                                row.storage_key)
        return out

    def _record_conflicts(self, results: Iterable[tuple[StoreResult, str | None]]) -> None:
        """Keep the conflicts found before any write (a known SOP Instance) for the
        statistics. Best effort: the refusal stands even if the index cannot take it."""
        found = [(r.conflict, aet) for r, aet in results if r.conflict is not None]
        if not found:
            return
        def record(cursor: Any) -> None:
            for conflict, aet in found:
                self.writer.record_conflict(cursor, conflict, rejected=True, source_aet=aet,
                                            at=datetime.now(UTC))

        try:
            self.index.run_write(record)
        except Exception:
            log.exception("could not record %d ingest conflict(s)", len(found))

    def _commit(self, batch: Sequence[Sent], *,
                retried: bool = False) -> list[StoreResult | Exception]:
        """Write the index rows of objects already stored, in one transaction. If that
        fails, instance by instance, so that one bad instance (from any association of a
        group commit) fails alone: its object is removed and its result is the error.
        A refused instance's object is removed too."""
        rows = [InstanceRow(p.header, p.transfer_syntax_uid, p.size, p.sha256,
                            p.dataset_offset, p.key, source_aet) for p, source_aet, _ in batch]
        now = datetime.now(UTC)
        audited: dict[tuple[int, str], tuple[AssociationAudit, int]] = {}

        def work(cursor: Any) -> Written:
            audited.clear()  # a transaction run again writes them again
            written = self.writer.write(cursor, rows, now)
            for p, _, audit in batch:
                study = p.header.study_instance_uid
                if audit is not None and (id(audit), study) not in audited and \
                        audit.needs_record(study):
                    audited[id(audit), study] = (audit, audit.write(cursor, p.header))
            return written

        try:
            written = self.index.run_write(work)
        except self.index.integrity_error:
            self.writer.forget()  # a cached parent may have been deleted meanwhile
            if not retried:
                return self._commit(batch, retried=True)
            if len(batch) > 1:  # someone else archived one of them meanwhile: go one by one
                return [r for sent in batch for r in self._commit([sent], retried=True)]
            # Another association archived this SOP Instance UID while we wrote it.
            p, source_aet, _ = batch[0]
            return [self._archived_meanwhile(p, source_aet)]
        except Exception as exc:
            if len(batch) > 1:
                return [r for sent in batch for r in self._commit([sent], retried=retried)]
            self._discard(batch[0][0])
            return [exc]
        except BaseException:
            for p, _, _ in batch:
                with contextlib.suppress(Exception):
                    self._discard(p)
            raise
        self.writer.committed(written)
        for (_, study), (audit, row_id) in audited.items():
            audit.written(study, row_id)
        results: list[StoreResult | Exception] = []
        for i, (p, _, _) in enumerate(batch):
            if i in written.rejected:
                self._discard(p)
                results.append(StoreResult.refused_for(written.conflicts[i], p.size))
            else:
                results.append(StoreResult("stored", p.header.sop_instance_uid, size=p.size))
        return results

    def _archived_meanwhile(self, p: PreparedInstance, source_aet: str | None) -> StoreResult:
        """The result for an instance whose row another writer committed first. Our object
        goes unless it is the one that row names."""
        result = self._duplicate_check([p], in_store=True).get(p.header.sop_instance_uid)
        if result is None:  # deleted again meanwhile: nothing to compare with
            result = StoreResult("conflict", p.header.sop_instance_uid,
                                 "archived and deleted concurrently; send it again")
        if result.archived_key != p.key:
            self.store.delete(p.key)
        self._record_conflicts([(result, source_aet)])
        return result

    def _discard(self, p: PreparedInstance) -> None:
        """Remove the object of an instance that was not archived, unless a row names it
        (a store of the same instance that took the object as its own, `claim_identical`).
        If the index cannot say (it is down), the object stays: an object without a row is
        invisible and swept later; a row without its object would be a loss."""
        try:
            with self.index.read_engine.connect() as conn:
                key = conn.execute(select(_I.c.storage_key).where(
                    _I.c.sop_instance_uid == p.header.sop_instance_uid)).scalar()
        except Exception:
            return
        if key != p.key:
            self.store.delete(p.key)


# an instance, the AE title that sent it and its association's audit
Sent = tuple[PreparedInstance, str | None, "AssociationAudit | None"]


def _raise_if_failed(result: StoreResult | Exception) -> StoreResult:
    if isinstance(result, Exception):
        raise result
    return result


def _refused(exc: InvalidInstance) -> StoreResult:
    return StoreResult("refused", reason=str(exc),
                       unreadable=isinstance(exc, UnreadableInstance))


_I = Instance.__table__


def iter_dicom_files(paths: Iterable[Path]) -> Iterable[Path]:
    """Every file under the given files and folders, in a stable order."""
    for p in paths:
        if p.is_dir():
            yield from sorted(x for x in p.rglob("*") if x.is_file())
        elif p.is_file():
            yield p
