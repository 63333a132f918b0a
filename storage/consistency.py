"""Are index and object store one archive? `vna check`, and the worker's orphan sweep.

Every ingest path writes the object first and its index row second, and acknowledges
nothing before both are durable. A process killed in between (kill -9, a power cut)
leaves an object without a row: invisible, harmless, but it takes space, and so does an
upload cut off mid-way (an unfinished S3 multipart upload, a temp file). The opposite, a
row whose object is missing or changed, is a loss: only a backup can mend it; it must be
found and shown.

- `sweep` (the worker, daily): removes objects without a row and partial writes older
  than a grace period (an object is written milliseconds before its row; an upload in
  progress touches its parts all the time).
- `check` (`vna check`): lists every inconsistency: objects without rows, partial writes,
  rows without objects, and (with `hashes`) objects whose SHA-256 is not the one recorded
  at ingest; with `repair` it mends what can be mended (the first two). Missing and
  changed objects are also recorded as failed fixity checks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

from sqlalchemy import insert, select

from storage.index.db import Index, batches
from storage.index.models import Document, FixityCheck, Instance
from storage.keys import subject_of_key
from storage.objectstore import (
    STREAM_CHUNK,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PartialWrite,
)

log = logging.getLogger("vna.check")
T = TypeVar("T")

ORPHAN_GRACE = timedelta(hours=1)
# An upload of many GB on a slow link stays unfinished for hours; MinIO's own default
# expiry of unfinished multipart uploads is a day.
PARTIAL_GRACE = timedelta(hours=24)

PREFIXES = ("dicom/", "documents/")
_PAGE = 500
_THREADS = 8

Kind = Literal["orphan_object", "partial_write", "missing_object", "hash_mismatch"]
MENDABLE: frozenset[Kind] = frozenset({"orphan_object", "partial_write"})


@dataclass
class Finding:
    kind: Kind
    key: str
    subject: str | None = None  # SOP Instance UID or uniqueId, where there is a row
    mended: bool = False


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    objects: int = 0  # objects listed
    rows: int = 0  # index rows checked

    @property
    def unmended(self) -> list[Finding]:
        return [f for f in self.findings if not f.mended]


# -- objects without rows ---------------------------------------------------------------------

def _indexed_keys(index: Index, page: list[ObjectInfo]) -> set[str]:
    """The keys of `page` that an index row names (looked up by the subject the key
    names: SOP Instance UID, entryUUID; both have unique indexes)."""
    instances: set[str] = set()
    documents: set[str] = set()
    for info in page:
        subject = subject_of_key(info.key)
        if subject is not None:
            (instances if subject[0] == "instance" else documents).add(subject[1])
    keys: set[str] = set()
    with index.read_session() as s:
        if instances:
            keys.update(s.scalars(select(Instance.storage_key)
                                  .where(Instance.sop_instance_uid.in_(instances))))
        if documents:
            keys.update(s.scalars(select(Document.storage_key)
                                  .where(Document.entry_uuid.in_(documents))))
    return keys


def orphans(index: Index, store: ObjectStore, report: CheckReport, *,
            older_than: datetime) -> Iterator[ObjectInfo]:
    """Objects no index row names, last written before `older_than`."""
    for prefix in PREFIXES:
        for page in batches(store.list_objects(prefix), _PAGE):
            report.objects += len(page)
            known = _indexed_keys(index, page)
            yield from (info for info in page
                        if info.key not in known and info.modified < older_than)


def _remove_orphan(index: Index, store: ObjectStore, info: ObjectInfo) -> bool:
    """Delete an orphan unless a row for it appeared since it was found."""
    if _indexed_keys(index, [info]):
        return False
    return store.remove_orphan(info)


def _stale_partials(store: ObjectStore, older_than: datetime) -> Iterator[PartialWrite]:
    return (p for p in store.partial_writes() if p.started < older_than)


# -- rows without objects, and changed objects -----------------------------------------------

def _rows(index: Index) -> Iterator[tuple[str, str, str, str]]:
    """(kind, subject, storage key, SHA-256) of every instance and document, by id."""
    for kind, model, subject in (("instance", Instance, Instance.sop_instance_uid),
                                 ("document", Document, Document.unique_id)):
        last = 0
        while True:
            with index.read_session() as s:
                page = s.execute(select(model.id, subject, model.storage_key, model.sha256)
                                 .where(model.id > last).order_by(model.id)
                                 .limit(_PAGE * 4)).all()
            if not page:
                break
            last = page[-1][0]
            for _id, subj, key, sha in page:
                yield kind, subj, key, sha


def _found_sha256(store: ObjectStore, key: str, hashes: bool) -> str | None:
    """The object's SHA-256 ('' when not hashed but present); None when it is missing."""
    try:
        if not hashes:
            return "" if store.exists(key) else None
        digest = hashlib.sha256()
        with store.open(key) as f:
            while chunk := f.read(STREAM_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()
    except ObjectNotFound:
        return None


def _row_findings(index: Index, store: ObjectStore, report: CheckReport,
                  hashes: bool) -> Iterator[tuple[Finding, str, str, str | None]]:
    """Findings about rows, with what fixity keeps of them (kind, expected, found)."""
    with ThreadPoolExecutor(_THREADS, thread_name_prefix="vna-check") as pool:
        for batch in batches(_rows(index), _PAGE):
            report.rows += len(batch)
            found = pool.map(lambda r: _found_sha256(store, r[2], hashes), batch)
            for (kind, subject, key, expected), sha in zip(batch, found, strict=True):
                if sha is None:
                    yield Finding("missing_object", key, subject), kind, expected, None
                elif hashes and sha != expected:
                    yield Finding("hash_mismatch", key, subject), kind, expected, sha


# -- the two entry points -----------------------------------------------------------------------

def check(index: Index, store: ObjectStore, *, repair: bool = False, hashes: bool = True,
          grace: timedelta = ORPHAN_GRACE, partial_grace: timedelta = PARTIAL_GRACE,
          now: datetime | None = None) -> CheckReport:
    """Everything that makes index and store disagree; with `repair`, what can be mended
    is (orphans deleted, partial writes discarded)."""
    now = now or datetime.now(UTC)
    report = CheckReport()
    for info in list(orphans(index, store, report, older_than=now - grace)):
        finding = Finding("orphan_object", info.key)
        if repair:
            finding.mended = _remove_orphan(index, store, info)
        report.findings.append(finding)
    for partial in list(_stale_partials(store, now - partial_grace)):
        finding = Finding("partial_write", partial.key)
        if repair:
            store.discard_partial(partial)
            finding.mended = True
        report.findings.append(finding)
    fixity = []
    for finding, kind, expected, found in _row_findings(index, store, report, hashes):
        report.findings.append(finding)
        fixity.append({"checked_at": now, "kind": kind, "subject": finding.subject,
                       "storage_key": finding.key, "expected_sha256": expected,
                       "found_sha256": found, "ok": False})
    if fixity:  # kept until someone looks, like the fixity runs' findings
        with index.begin() as conn:
            conn.execute(insert(FixityCheck), fixity)
    for f in report.findings:
        log.warning("check: %s %s%s%s", f.kind, f.key, f" ({f.subject})" if f.subject else "",
                    " - mended" if f.mended else "")
    return report


def sweep(index: Index, store: ObjectStore, *, grace: timedelta = ORPHAN_GRACE,
          partial_grace: timedelta = PARTIAL_GRACE) -> int:
    """Remove objects without rows and partial writes past their grace (the worker's
    periodic task); how many were removed."""
    now = datetime.now(UTC)
    report = CheckReport()
    removed = sum(_remove_orphan(index, store, info)
                  for info in list(orphans(index, store, report, older_than=now - grace)))
    for partial in list(_stale_partials(store, now - partial_grace)):
        store.discard_partial(partial)
        removed += 1
    if removed:
        log.warning("removed %d object(s) without index row and unfinished write(s)", removed)
    return removed
