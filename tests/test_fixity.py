"""Fixity on both backends: a changed and a missing object are found, a sound archive passes."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import sqlalchemy as sa

from storage.archive import Archive
from tests.conftest import VNA, Backend, vna_env
from tests.factory import make_instance, store_document, write
from tests.media import make_pdf


def fixity(backend: Backend) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VNA, "fixity", "run", "--sample", "50"],
                          env=vna_env(backend.env), capture_output=True, text=True,
                          timeout=120, cwd=backend.data_dir.parent)


def test_fixity_finds_changed_and_missing_objects(archive: Archive,
                                                  backend: Backend, tmp_path: Path) -> None:
    keys = []
    for i in range(3):
        ds = make_instance(sop_uid=f"1.2.3.55.{i}", study_uid="1.2.3.55", series_uid="1.2.3.55.0")
        assert archive.store_file(write(ds, tmp_path / f"{i}.dcm"), source_aet="T").ok
    store_document(archive, make_pdf(), "application/pdf")
    with archive.index.read_session() as s:
        keys = list(s.scalars(sa.text("SELECT storage_key FROM instance ORDER BY id")))
    ok = fixity(backend)
    assert ok.returncode == 0, ok.stderr
    assert "4 objects re-hashed, 0 mismatches" in ok.stderr

    changed, missing = keys[0], keys[1]
    data = bytearray(archive.store.read(changed))
    data[-1] ^= 0xFF  # one flipped byte
    if backend.name == "file-sqlite":
        Path(archive.store.path(changed)).write_bytes(bytes(data))  # type: ignore[attr-defined]
    else:
        archive.store.client.put_object(  # type: ignore[attr-defined]
            archive.store.bucket, changed, io.BytesIO(bytes(data)), len(data))  # type: ignore[attr-defined]
    archive.store.delete(missing)
    bad = fixity(backend)
    assert bad.returncode == 1
    assert "4 objects re-hashed, 2 mismatches" in bad.stderr
    assert "content changed" in bad.stderr and "missing" in bad.stderr
    with archive.index.read_session() as s:
        found = dict(s.execute(sa.text("SELECT storage_key, found_sha256 FROM fixity_check "
                                       "WHERE ok = :f"), {"f": False}).all())
    assert set(found) == {changed, missing} and found[missing] is None
