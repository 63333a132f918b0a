"""Fixity: re-hash a random sample of archived objects and compare with the index.

Bit rot, a bad disk, an object someone overwrote or deleted behind the archive's back:
the SHA-256 recorded at ingest says. Every check is recorded (`fixity_check`), so a
mismatch is kept until someone looks, and `vna fixity run` exits 1 when it finds one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, insert, select

from storage.index.db import Index
from storage.index.models import Document, FixityCheck, Instance
from storage.objectstore import STREAM_CHUNK, ObjectNotFound, ObjectStore

log = logging.getLogger("vna.fixity")


@dataclass
class FixityResult:
    checked: int
    mismatches: list[dict[str, str | None]]


def _sha256(store: ObjectStore, key: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with store.open(key) as f:
            while chunk := f.read(STREAM_CHUNK):
                digest.update(chunk)
    except ObjectNotFound:
        return None
    return digest.hexdigest()


def run_fixity(index: Index, store: ObjectStore, *, sample: int = 100) -> FixityResult:
    """Re-hash `sample` random instances and `sample` random documents."""
    with index.read_session() as s:
        targets = [("instance", *r) for r in s.execute(
            select(Instance.sop_instance_uid, Instance.storage_key, Instance.sha256)
            .order_by(func.random()).limit(sample))]
        targets += [("document", *r) for r in s.execute(
            select(Document.unique_id, Document.storage_key, Document.sha256)
            .order_by(func.random()).limit(sample))]
    rows, mismatches = [], []
    for kind, subject, key, expected in targets:
        found = _sha256(store, key)
        ok = found == expected
        rows.append({"checked_at": datetime.now(UTC), "kind": kind, "subject": subject,
                     "storage_key": key, "expected_sha256": expected,
                     "found_sha256": found, "ok": ok})
        if not ok:
            log.error("fixity: %s %s at %s: %s", kind, subject, key,
                      "missing" if found is None else "content changed")
            mismatches.append({"kind": kind, "subject": subject, "key": key,
                               "found": found})
    if rows:
        with index.begin() as conn:
            conn.execute(insert(FixityCheck), rows)
    return FixityResult(len(rows), mismatches)
