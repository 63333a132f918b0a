"""Retention (gallring) on both backends: the dry run deletes nothing; the run deletes what
the rules select (objects, index rows, empty parents), records each deletion in the audit
trail, and keeps everything else."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from storage.archive import Archive
from tests.conftest import VNA, Backend, vna_env
from tests.factory import make_instance, store_document, write
from tests.media import make_jpeg, make_pdf
from vna.retention import load_rules

RULES = [
    {"name": "dermatology photos, 10 years", "target": "documents", "classCode": ["photo"],
     "practiceSettingCode": ["dermatology"], "keepDays": 3650},
    {"name": "ultrasound, 5 years", "target": "instances", "modality": ["US"],
     "keepDays": 1825},
]


def retention(backend: Backend, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VNA, "retention", "run", *args], env=vna_env(backend.env),
                          capture_output=True, text=True, timeout=120,
                          cwd=backend.data_dir.parent)


def q(a: Archive, sql: str) -> list[tuple[object, ...]]:
    with a.index.read_session() as s:
        return [tuple(r) for r in s.execute(sa.text(sql))]


def test_rules_are_validated(tmp_path: Path) -> None:
    f = tmp_path / "r.json"
    assert load_rules(f) == []  # no file, no rules
    for bad in ([{"name": "x", "target": "documents", "keepDays": 1}],  # selects nothing
                [{"name": "x", "target": "documents", "modality": ["US"], "keepDays": 1}],
                [{"name": "x", "target": "instances", "modality": ["US"], "keepDays": 0}],
                [{"name": "x", "target": "files", "modality": ["US"], "keepDays": 9}]):
        f.write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            load_rules(f)


def test_dry_run_then_run(archive: Archive, backend: Backend,  # noqa: F811
                          tmp_path: Path) -> None:
    (backend.data_dir / "retention.json").write_text(json.dumps(RULES))
    old = datetime.now(UTC) - timedelta(days=4000)
    photo_old = store_document(archive, make_jpeg(), "image/jpeg")
    photo_new = store_document(archive, make_jpeg(), "image/jpeg")
    report_old = store_document(archive, make_pdf(), "application/pdf")
    uids = {}
    for name, modality, study in (("us_old", "US", "1.2.3.66"), ("us_new", "US", "1.2.3.67"),
                                  ("ct_old", "CT", "1.2.3.68")):
        ds = make_instance(modality=modality, study_uid=study, series_uid=study + ".1",
                           sop_uid=study + ".1.1")
        assert archive.store_file(write(ds, tmp_path / f"{name}.dcm"), source_aet="T").ok
        uids[name] = study + ".1.1"
    with archive.index.begin() as conn:
        conn.execute(sa.text("UPDATE document SET class_code = 'photo', practice_setting_code"
                             " = 'dermatology' WHERE unique_id IN (:a, :b)"),
                     {"a": photo_old, "b": photo_new})
        conn.execute(sa.text("UPDATE document SET creation_time = :t WHERE unique_id IN "
                             "(:a, :b)"), {"t": old, "a": photo_old, "b": report_old})
        conn.execute(sa.text("UPDATE instance SET received_at = :t WHERE sop_instance_uid IN "
                             "(:a, :b)"), {"t": old, "a": uids["us_old"], "b": uids["ct_old"]})
    keys = dict(q(archive, "SELECT unique_id, storage_key FROM document"))
    keys |= dict(q(archive, "SELECT sop_instance_uid, storage_key FROM instance"))

    dry = retention(backend, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stderr and "dermatology photos" in dry.stderr
    assert len(q(archive, "SELECT * FROM document")) == 3
    assert all(archive.store.exists(k) for k in keys.values())

    run = retention(backend)
    assert run.returncode == 0, run.stderr
    assert "deleted 2 of 2" in run.stderr
    gone = (photo_old, uids["us_old"])
    assert not any(archive.store.exists(keys[g]) for g in gone)
    assert {r[0] for r in q(archive, "SELECT unique_id FROM document")} == \
        {photo_new, report_old}
    assert {r[0] for r in q(archive, "SELECT sop_instance_uid FROM instance")} == \
        {uids["us_new"], uids["ct_old"]}
    assert q(archive, "SELECT count(*) FROM study WHERE study_instance_uid = '1.2.3.66'") \
        == [(0,)]  # its only instance went, so did the study
    audit = q(archive, "SELECT resource, action, token_id FROM audit_event")
    assert sorted(audit) == sorted((g, "retention.delete", "retention") for g in gone)
    assert "deleted 0" not in retention(backend).stderr  # nothing left to select
