"""The Alembic migrations on SQLite and the real PostgreSQL: they build exactly the schema the
models declare, and 0004 fills the lead-time facts from the instance facts already there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from storage.index.models import Base, UTCDateTime
from storage.migrate import HEAD, alembic_config, current, ensure_current, upgrade
from vna.leadtimes import arrival_bin


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_head_is_the_newest_migration(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from alembic.script import ScriptDirectory

    import storage.migrate

    assert ScriptDirectory.from_config(alembic_config(db_url)).get_current_head() == HEAD
    assert current(db_url) is None  # no schema yet
    ensure_current(db_url)  # an empty database: migrated
    assert current(db_url) == HEAD

    def no_upgrade(*_: object, **__: object) -> None:
        raise AssertionError("upgrade ran on an index at head")

    monkeypatch.setattr(storage.migrate, "upgrade", no_upgrade)
    ensure_current(db_url)  # at head: nothing to do


def test_migrations_build_the_models_schema(db_url: str) -> None:
    upgrade(db_url)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_0004_fills_lead_time_facts_from_earlier_facts(db_url: str) -> None:
    upgrade(db_url, "0003")
    fact = sa.table("instance_fact", *(sa.column(c) for c in (
        "sop_instance_uid", "study_instance_uid", "modality", "patient_id", "patient_name")),
        *(sa.column(c, UTCDateTime()) for c in ("received_at", "acquired_at", "pps_start",
                                                "pps_end")))
    t0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
    minute = timedelta(minutes=1)
    rows = [  # one CT study of two instances (two names), one MR instance without
        # acquisition time
        ("1.9.1.1", "1.9.1", "CT", t0 + 5 * minute, t0, t0 - minute, t0 + 9 * minute, "A^B"),
        ("1.9.1.2", "1.9.1", "CT", t0 + 90 * minute, t0 + 3 * minute, t0 - 2 * minute,
         t0 + 4 * minute, "A^BB"),
        ("1.9.2.1", "1.9.2", "MR", t0 + 5 * minute, None, None, None, "A^B"),
    ]
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(fact), [
                {"sop_instance_uid": uid, "study_instance_uid": study, "modality": modality,
                 "patient_id": "P1", "patient_name": name, "received_at": received,
                 "acquired_at": acquired, "pps_start": start, "pps_end": end}
                for uid, study, modality, received, acquired, start, end, name in rows])
        upgrade(db_url)
        with engine.connect() as conn:
            delays = dict(conn.execute(sa.text(
                "SELECT sop_instance_uid, arrival_seconds FROM instance_fact")).all())
            histogram = conn.execute(sa.text(
                "SELECT modality, bin, count FROM stats_arrival_hourly ORDER BY bin")).all()
            studies = conn.execute(sa.select(
                sa.column("study_instance_uid"), sa.column("first_received_at", UTCDateTime()),
                sa.column("pps_start", UTCDateTime()), sa.column("pps_end", UTCDateTime()),
                sa.column("patient_name"), sa.column("several_names", sa.Boolean()))
                .select_from(sa.table("study_fact")).order_by("study_instance_uid")).all()
    finally:
        engine.dispose()
    assert delays == {"1.9.1.1": 300.0, "1.9.1.2": 87 * 60.0, "1.9.2.1": None}
    assert [tuple(r) for r in histogram] == [("CT", arrival_bin(300), 1),
                                             ("CT", arrival_bin(87 * 60), 1)]
    assert [tuple(r) for r in studies] == [
        ("1.9.1", t0 + 5 * minute, t0 - 2 * minute, t0 + 9 * minute, "A^B", True),
        ("1.9.2", t0 + 5 * minute, None, None, "A^B", False)]


def test_0006_fills_the_chain_facts_of_studies_there_are(db_url: str) -> None:
    """The last arrival, department, source AE and accession number of each study_fact,
    from the study's instances in the index."""
    upgrade(db_url, "0005")
    t0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
    engine = sa.create_engine(db_url)

    def table(name: str, *columns: str, times: tuple[str, ...] = ()) -> sa.TableClause:
        return sa.table(name, *(sa.column(c) for c in columns),
                        *(sa.column(c, UTCDateTime()) for c in times))

    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(table("patient", "id", "patient_id",
                                         "issuer_of_patient_id")),
                         [{"id": 1, "patient_id": "P1", "issuer_of_patient_id": ""}])
            conn.execute(sa.insert(table("study", "id", "patient_fk", "study_instance_uid",
                                         "accession_number", times=("created_at",))),
                         [{"id": 1, "patient_fk": 1, "study_instance_uid": "1.9.1",
                           "accession_number": "A1", "created_at": t0}])
            conn.execute(sa.insert(table("series", "id", "study_fk", "series_instance_uid",
                                         "institutional_department_name")),
                         [{"id": 1, "study_fk": 1, "series_instance_uid": "1.9.1.1",
                           "institutional_department_name": ""},
                          {"id": 2, "study_fk": 1, "series_instance_uid": "1.9.1.2",
                           "institutional_department_name": "Radiology"}])
            conn.execute(sa.insert(table(
                "instance", "series_fk", "sop_instance_uid", "sop_class_uid",
                "transfer_syntax_uid", "source_aet", "size", "sha256", "dataset_offset",
                "storage_key", times=("received_at",))), [
                {"series_fk": series, "sop_instance_uid": uid, "sop_class_uid": "1.2",
                 "transfer_syntax_uid": "1.2.840.10008.1.2.1", "source_aet": "CT1",
                 "size": 1, "sha256": "0" * 64, "dataset_offset": 132,
                 "storage_key": uid, "received_at": t0 + timedelta(minutes=minutes)}
                for series, uid, minutes in ((1, "1.9.1.1.1", 0), (2, "1.9.1.2.1", 7))])
            conn.execute(sa.insert(table("study_fact", "study_instance_uid", "patient_id",
                                         "several_names", times=("first_received_at",))),
                         [{"study_instance_uid": "1.9.1", "patient_id": "P1",
                           "several_names": False, "first_received_at": t0}])
        upgrade(db_url)
        with engine.connect() as conn:
            row = conn.execute(sa.select(
                sa.column("last_received_at", UTCDateTime()), sa.column("department"),
                sa.column("source_aet"), sa.column("accession_number"))
                .select_from(sa.table("study_fact"))).one()
    finally:
        engine.dispose()
    assert tuple(row) == (t0 + timedelta(minutes=7), "Radiology", "CT1", "A1")
