"""Lead times and data-quality rules: each rule finds the bad data planted for it, and only
that; the facts come from real headers through the worker's deriver, the answers over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from services.runtime import open_archive
from storage.archive import Archive
from storage.derive import Deriver
from storage.index.models import Instance, InstanceFact, StudyFact
from storage.migrate import upgrade
from storage.outbox import pending
from tests.api_client import RunningAPI, start_api, stop_api
from tests.conftest import Backend
from tests.factory import make_instance, write
from vna.quality import percentiles, valid_personnummer

TZ = ZoneInfo("Europe/Stockholm")
ROOT = "1.2.826.0.1.3680043.8.498.77"


def test_personnummer_check() -> None:
    for good in ("19121212-1212", "811228-9874", "701063-2391", "191212121212"):
        assert valid_personnummer(good), good
    for bad in ("19121212-1213", "811328-9874", "701093-2391", "PAT1"):
        assert not valid_personnummer(bad), bad


def _dt(t: datetime) -> tuple[str, str]:
    local = t.astimezone(TZ)
    return local.strftime("%Y%m%d"), local.strftime("%H%M%S")


def _instance(tmp: Path, archive: Archive, n: int, *, study: str, modality: str = "CT",
              patient_id: str = "PAT1", patient_name: str = "Doe^John",
              acquired: datetime, pps: tuple[datetime, datetime] | None = None,
              **extra: Any) -> str:
    uid = f"{study}.1.{n}"
    adate, atime = _dt(acquired)
    ds = make_instance(study_uid=study, series_uid=f"{study}.1", sop_uid=uid,
                       modality=modality, patient_id=patient_id, patient_name=patient_name,
                       AcquisitionDate=adate, AcquisitionTime=atime, **extra)
    if pps:
        (sd, st), (ed, et) = _dt(pps[0]), _dt(pps[1])
        ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = sd, st
        ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = ed, et
    assert archive.store_file(write(ds, tmp / f"{uid}.dcm"), source_aet="Q").ok
    return uid


@pytest.fixture(scope="module")
def planted(module_backend: Backend, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[tuple[RunningAPI, dict[str, Any]]]:
    settings = module_backend.settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[attr-defined]
    upgrade(settings.resolved_database_url)  # type: ignore[attr-defined]
    archive = open_archive(settings)  # type: ignore[arg-type]
    tmp = tmp_path_factory.mktemp("quality")
    now = datetime.now(TZ).replace(microsecond=0)
    hour = timedelta(hours=1)
    p: dict[str, Any] = {"delays": []}
    # A CT "done" in 30 s: start/stop misused. An MR of 25 minutes and a 20 s ultrasound
    # (not CT/MR) are fine.
    p["short"] = f"{ROOT}.1"
    _instance(tmp, archive, 1, study=p["short"], acquired=now - hour,
              pps=(now - hour, now - hour + timedelta(seconds=30)))
    _instance(tmp, archive, 1, study=f"{ROOT}.2", modality="MR", acquired=now - 2 * hour,
              pps=(now - 3 * hour, now - 3 * hour + timedelta(minutes=25)))
    _instance(tmp, archive, 1, study=f"{ROOT}.3", modality="US", acquired=now - hour,
              pps=(now - hour, now - hour + timedelta(seconds=20)))
    # Missing referrer, missing accession number.
    p["no_referrer"] = f"{ROOT}.4"
    _instance(tmp, archive, 1, study=p["no_referrer"], acquired=now - hour,
              ReferringPhysicianName="")
    p["no_accession"] = f"{ROOT}.5"
    _instance(tmp, archive, 1, study=p["no_accession"], acquired=now - hour,
              AccessionNumber="")
    # A personnummer with a wrong check digit; a valid one sent under two names.
    _instance(tmp, archive, 1, study=f"{ROOT}.6", patient_id="19121212-1213",
              acquired=now - hour)
    _instance(tmp, archive, 1, study=f"{ROOT}.7", patient_id="19121212-1212",
              patient_name="Tolvansson^Tolvan", acquired=now - hour)
    _instance(tmp, archive, 2, study=f"{ROOT}.7", patient_id="19121212-1212",
              patient_name="Tolvansson^Tolva", acquired=now - hour)
    # One patient ID under two names in two studies.
    for n, name in ((10, "Berg^Anna"), (11, "Berg^Ana")):
        _instance(tmp, archive, 1, study=f"{ROOT}.{n}", patient_id="PAT9", patient_name=name,
                  acquired=now - hour)
    # Arrived three days after it was acquired.
    p["late"] = _instance(tmp, archive, 1, study=f"{ROOT}.8", acquired=now - 72 * hour)
    # Another patient's instance in a known study; a known instance with other content.
    p["patient_conflict"] = f"{ROOT}.4"
    other = make_instance(patient_id="PAT-OTHER", study_uid=p["patient_conflict"],
                          series_uid=f"{ROOT}.4.1", sop_uid=f"{ROOT}.4.1.2")
    assert archive.store_file(write(other, tmp / "other.dcm"), source_aet="Q").outcome == \
        "patient_conflict"
    p["uid_conflict"] = f"{ROOT}.12"
    changed = make_instance(study_uid=p["uid_conflict"], sop_uid=p["late"])
    assert archive.store_file(write(changed, tmp / "changed.dcm"), source_aet="Q").outcome \
        == "conflict"
    deriver = Deriver(archive.index, archive.store, TZ)
    deriver.process(pending(archive.index))
    archive.index.dispose()
    api = start_api(module_backend)
    try:
        yield api, p
    finally:
        stop_api(api)


def _get(api: RunningAPI, path: str) -> dict[str, Any]:
    r = api.client().get(f"/api/v1/stats/{path}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_each_rule_finds_what_was_planted(planted: tuple[RunningAPI, dict[str, Any]]) -> None:
    api, p = planted
    rules = {r["rule"]: r for r in _get(api, "quality")["rules"]}
    assert rules["short_ct_mr_exam"]["examples"] == [p["short"]]
    assert rules["missing_referrer"]["examples"] == [p["no_referrer"]]
    assert rules["missing_accession_number"]["examples"] == [p["no_accession"]]
    assert rules["invalid_personnummer"]["examples"] == ["19121212-1213"]
    # within one study, and between two
    assert rules["several_names"]["examples"] == ["19121212-1212", "PAT9"]
    assert rules["late_arrival"]["examples"] == [p["late"]]
    assert rules["patient_conflict"]["examples"] == [p["patient_conflict"]]
    assert rules["uid_conflict"]["examples"] == [p["uid_conflict"]]
    assert rules.pop("several_names")["count"] == 2
    workflow = {"order_not_performed", "mpps_completed_without_images",
                "images_without_mpps", "short_mpps_exam", "report_missing", "patient_merge"}
    assert all(rules.pop(name)["count"] == 0 for name in workflow)  # no orders, MPPS here
    assert all(r["count"] == 1 for r in rules.values()), rules


def test_late_arrivals_use_their_own_index(tmp_path: Path) -> None:
    """The late-arrival query repeats its partial index's condition, so that SQLite uses
    the index (it cannot with a bound threshold)."""
    from sqlalchemy import create_engine

    from storage.index.stats import late_arrival_condition
    from vna.stats import Period

    url = f"sqlite:///{tmp_path / 'index.db'}"
    upgrade(url)
    now = datetime.now(TZ)
    stmt = select(InstanceFact.sop_instance_uid).where(
        late_arrival_condition(Period(now - timedelta(days=365), now, TZ)))
    engine = create_engine(url)
    with engine.connect() as conn:
        compiled = stmt.compile(conn)
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled),
                                    tuple(compiled.params.values())).all()
    engine.dispose()
    assert "ix_instance_fact_late" in str(plan)


def test_study_exam_merges_instances_in_any_order(archive: Archive, tmp_path: Path) -> None:
    """A study's exam spans its instances' procedure steps, whichever arrives (or is
    derived) first; a second name for its patient is remembered; deriving an instance
    again changes nothing."""
    study, t0 = f"{ROOT}.90", datetime(2026, 3, 2, 9, 0, tzinfo=TZ)
    minute = timedelta(minutes=1)
    deriver = Deriver(archive.index, archive.store, TZ)
    _instance(tmp_path, archive, 1, study=study, acquired=t0, pps=(t0, t0 + 20 * minute),
              AccessionNumber="A1", InstitutionalDepartmentName="CT-Dept")
    first = pending(archive.index)
    deriver.process(first)
    _instance(tmp_path, archive, 2, study=study, acquired=t0, patient_name="Doe^Johnny",
              pps=(t0 - 10 * minute, t0 + 10 * minute))
    deriver.process(pending(archive.index))
    deriver.process(first)  # a redelivery
    with archive.index.read_session() as s:
        (start, end, name, several), = s.execute(select(
            StudyFact.pps_start, StudyFact.pps_end, StudyFact.patient_name,
            StudyFact.several_names).where(StudyFact.study_instance_uid == study)).all()
        fact = s.execute(select(StudyFact).where(
            StudyFact.study_instance_uid == study)).scalar_one()
        received = s.execute(select(func.min(Instance.received_at),
                                    func.max(Instance.received_at))).one()
    assert (start, end) == (t0 - 10 * minute, t0 + 20 * minute)
    assert (name, several) == ("DOE^JOHN", True)
    # what the lead-time chain reads: first and last arrival, where it came from
    assert (fact.first_received_at, fact.last_received_at) == tuple(received)
    assert (fact.source_aet, fact.department, fact.accession_number) == ("Q", "CT-Dept", "A1")


def test_leadtimes(planted: tuple[RunningAPI, dict[str, Any]]) -> None:
    api, _p = planted
    body = _get(api, "leadtimes")
    arrivals = body["acquisitionToArchive"]
    assert arrivals["n"] == 11
    # nine instances acquired an hour before they arrived, one two hours, one 72 hours:
    # nearest-rank p50 is the 6th (an hour and the seconds the test took), p90 the 10th,
    # each read from its histogram bin (within 0.55 %)
    res = 1 + arrivals["relativeResolution"]
    assert 3600 / res <= arrivals["p50"] < 3900 * res
    assert 7200 / res <= arrivals["p90"] < 7500 * res
    assert arrivals["byModality"]["MR"]["n"] == 1
    exams = body["examDuration"]
    assert exams["n"] == 3
    assert exams["byModality"]["MR"]["p50"] == 25 * 60
    assert exams["byModality"]["CT"]["p50"] == 30
    assert body["scheduledToPerformed"]["n"] == 0 and body["examsWithMpps"] == 0


def test_percentiles_nearest_rank() -> None:
    assert percentiles(list(range(1, 11))) == {"p50": 5, "p90": 9}
    assert percentiles([7.0]) == {"p50": 7.0, "p90": 7.0}
    assert percentiles([]) == {}
