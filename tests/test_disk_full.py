"""A full disk under VNA_DATA_DIR: every C-STORE is answered (0xA700 when it cannot be
kept) on an association that stays usable, every upload gets 507, nothing partial stays,
and the archive takes data again as soon as there is room, without a restart."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from services.runtime import open_archive
from storage.index.models import Document, Instance
from tests import dicom_client as dc
from tests.conftest import Backend, running_scp
from tests.factory import make_instance, write

DISK_MB = 48
FREE_MB = 6


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MB tmpfs (root only; CI runs as root on the machines of this kind)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs",
                        str(mount)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_mb: float) -> Path:
    """A filler file that leaves `leave_mb` MB free."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free + (filler.stat().st_size if filler.exists() else 0)
    with open(filler, "wb") as f:
        f.truncate(0)
        left = max(free - int(leave_mb * 2**20), 0)
        block = b"\xff" * (1 << 20)
        while left > 0:  # written, not sparse: tmpfs counts written pages
            left -= f.write(block[:min(left, len(block))])
    return filler


def instances(tmp: Path, n: int, kb: int = 128) -> list[Path]:
    side = int((kb * 1024 / 2) ** 0.5)
    study = "1.2.826.0.1.3680043.8.498.3131"
    out = []
    for i in range(n):
        ds = make_instance(study_uid=study, series_uid=f"{study}.1", sop_uid=f"{study}.1.{i}",
                           size=side, instance_number=i)
        ds.PixelData = np.random.default_rng(i).integers(0, 4096, side * side,
                                                         dtype=np.uint16).tobytes()
        out.append(write(ds, tmp / f"{i}.dcm"))
    return out


def leftovers(data_dir: Path, archived: set[str]) -> list[str]:
    """Receive files, temp files, and objects the index does not know."""
    out = [str(p) for p in (data_dir / "incoming").rglob("*") if p.is_file()]
    out += [str(p) for p in (data_dir / "objects" / ".tmp").rglob("*") if p.is_file()]
    out += [str(p) for p in (data_dir / "objects" / "dicom").rglob("*.dcm")
            if p.stem not in archived]
    return out


def archived_uids(backend: Backend) -> set[str]:
    archive = open_archive(backend.settings())  # type: ignore[arg-type]
    try:
        with archive.index.read_session() as s:
            return set(s.scalars(select(Instance.sop_instance_uid)))
    finally:
        archive.index.dispose()


@pytest.mark.parametrize("also_query", [False, True], ids=["fastpath", "pynetdicom"])
def test_c_store_on_a_full_disk(small_disk: Path, tmp_path: Path, request: pytest.FixtureRequest,
                                also_query: bool) -> None:
    from tests.conftest import _backend_env

    data_dir = small_disk / "vna-data"
    backend = Backend("file-sqlite", _backend_env("file-sqlite", data_dir, request), data_dir)
    files = instances(tmp_path / "in", 60)
    with running_scp(backend, VNA_DICOM_PROCESSES="1") as scp:
        assert dc.store(scp.port, files[:1], also_query=also_query) == [0]
        filler = fill(small_disk, FREE_MB)
        statuses = dc.store(scp.port, files, also_query=also_query)
        # every C-STORE answered, on one association that lived to its release
        assert -1 not in statuses, statuses
        assert set(statuses) <= {0x0000, 0xA700}, statuses
        assert 0xA700 in statuses and statuses[0] == 0
        archived = archived_uids(backend)
        stored = {f"1.2.826.0.1.3680043.8.498.3131.1.{i}" for i, s in enumerate(statuses)
                  if s == 0}
        assert stored <= archived  # every Success is in the index
        assert leftovers(data_dir, archived) == []
        # DCMTK hears the same on its own association, which it releases
        p = subprocess.run(["storescu", "-v", "-aec", "VNA", "127.0.0.1", str(scp.port),
                            *map(str, files)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "TCP_NODELAY": "1"})
        out = p.stdout + p.stderr
        assert "Refused: OutOfResources" in out and "Releasing Association" in out, out
        assert "Abort" not in out, out
        # room again: taken at once, no restart
        filler.unlink()
        assert dc.store(scp.port, files, also_query=also_query) == [0] * len(files)
        assert len(archived_uids(backend)) == len(files)
        assert "Traceback" not in scp.logtext()
    assert leftovers(data_dir, archived_uids(backend)) == []


def test_upload_on_a_full_disk_is_507(small_disk: Path, tmp_path: Path,
                                      request: pytest.FixtureRequest) -> None:
    from tests.api_client import start_api, stop_api, upload
    from tests.conftest import _backend_env
    from tests.media import make_pdf

    data_dir = small_disk / "vna-data"
    backend = Backend("file-sqlite", _backend_env("file-sqlite", data_dir, request), data_dir)
    api = start_api(backend)
    meta = {"patientId": "191212121212", "classCode": "report", "practiceSettingCode": "lung"}
    try:
        client = api.client()
        pdf = make_pdf()
        assert upload(client, pdf, meta, filename="a.pdf", content_type="application/pdf"
                      ).status_code == 201
        filler = fill(small_disk, 2)
        big = pdf + b"%" + os.urandom(4 << 20)  # a PDF with 4 MiB after its end: still a PDF
        codes = [upload(client, big, meta, filename="b.pdf", content_type="application/pdf"
                        ).status_code for _ in range(3)]
        assert 507 in codes and set(codes) <= {201, 507}, codes
        r = upload(client, big, meta, filename="b.pdf", content_type="application/pdf")
        assert r.status_code == 507 and "detail" in r.json()
        tmp = data_dir / "objects" / ".tmp"
        assert [p for p in tmp.iterdir()] == []
        filler.unlink()
        assert upload(client, big, meta, filename="b.pdf", content_type="application/pdf"
                      ).status_code == 201
    finally:
        stop_api(api)
    archive = open_archive(backend.settings())  # type: ignore[arg-type]
    try:
        with archive.index.read_session() as s:
            keys = set(s.scalars(select(Document.storage_key)))
    finally:
        archive.index.dispose()
    on_disk = {str(p.relative_to(data_dir / "objects"))
               for p in (data_dir / "objects" / "documents").rglob("*") if p.is_file()}
    assert on_disk == keys
