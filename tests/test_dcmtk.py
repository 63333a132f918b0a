"""The DICOM service driven by DCMTK, the independent reference implementation."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from pydicom import dcmread

from tests.conftest import Backend, RunningSCP, free_port, start_scp, stop_scp, wait_port
from tests.factory import dataset_bytes, make_instance, write

STUDY = "1.2.826.0.1.3680043.8.498.555"


def run(args: list[str], env: dict[str, str],
        check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"{args[0]} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def corpus(tmp_path: Path) -> list[Path]:
    return [write(make_instance(patient_id="DCMTK1", patient_name="Tool^Kit", study_uid=STUDY,
                                series_uid=f"{STUDY}.{s}", sop_uid=f"{STUDY}.{s}.{i}",
                                modality=m, study_date="20230505"),
                  tmp_path / "in" / f"{s}-{i}.dcm")
            for s, m in ((1, "MR"), (2, "MR"), (3, "SR")) for i in range(1, 4)]


def storescu(scp: RunningSCP, env: dict[str, str], paths: list[Path] | Path) -> None:
    targets = [str(paths)] if isinstance(paths, Path) else [str(p) for p in paths]
    run(["storescu", "-aec", "VNA", "-aet", "DCMTKSCU", "+sd", "+r", "127.0.0.1",
         str(scp.port), *targets], env)


def findscu(scp: RunningSCP, env: dict[str, str], out: Path, model: str, *keys: str) -> list:
    out.mkdir(parents=True, exist_ok=True)
    run(["findscu", model, "-aec", "VNA", "-X", "-od", str(out),
         *[a for k in keys for a in ("-k", k)], "127.0.0.1", str(scp.port)], env)
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_echoscu(scp: RunningSCP, dcmtk_env: dict[str, str]) -> None:
    p = run(["echoscu", "-v", "-aec", "VNA", "127.0.0.1", str(scp.port)], dcmtk_env)
    assert "Received Echo Response (Success)" in p.stdout + p.stderr


def test_storescu_findscu(scp: RunningSCP, dcmtk_env: dict[str, str], tmp_path: Path) -> None:
    files = corpus(tmp_path)
    storescu(scp, dcmtk_env, tmp_path / "in")
    storescu(scp, dcmtk_env, files[:2])  # re-sent: still success, nothing twice
    studies = findscu(scp, dcmtk_env, tmp_path / "f1", "-S", "QueryRetrieveLevel=STUDY",
                      "PatientID=DCMTK1", "StudyInstanceUID", "ModalitiesInStudy",
                      "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                      "StudyDate=20230101-20231231", "PatientName")
    assert len(studies) == 1
    s = studies[0]
    assert s.StudyInstanceUID == STUDY
    assert list(s.ModalitiesInStudy) == ["MR", "SR"]
    assert int(s.NumberOfStudyRelatedSeries) == 3
    assert int(s.NumberOfStudyRelatedInstances) == 9
    patients = findscu(scp, dcmtk_env, tmp_path / "f2", "-P", "QueryRetrieveLevel=PATIENT",
                       "PatientName=tool*", "PatientID", "NumberOfPatientRelatedStudies")
    assert [(p.PatientID, int(p.NumberOfPatientRelatedStudies)) for p in patients] == \
        [("DCMTK1", 1)]
    series = findscu(scp, dcmtk_env, tmp_path / "f3", "-S", "QueryRetrieveLevel=SERIES",
                     f"StudyInstanceUID={STUDY}", "SeriesInstanceUID", "Modality=MR",
                     "NumberOfSeriesRelatedInstances")
    assert sorted(x.SeriesInstanceUID for x in series) == [f"{STUDY}.1", f"{STUDY}.2"]
    assert all(int(x.NumberOfSeriesRelatedInstances) == 3 for x in series)
    images = findscu(scp, dcmtk_env, tmp_path / "f4", "-S", "QueryRetrieveLevel=IMAGE",
                     f"StudyInstanceUID={STUDY}", f"SeriesInstanceUID={STUDY}.3",
                     "SOPInstanceUID")
    assert sorted(x.SOPInstanceUID for x in images) == [f"{STUDY}.3.{i}" for i in (1, 2, 3)]


def test_getscu(scp: RunningSCP, dcmtk_env: dict[str, str], tmp_path: Path) -> None:
    files = corpus(tmp_path)
    storescu(scp, dcmtk_env, files)
    out = tmp_path / "got"
    out.mkdir()
    p = run(["getscu", "-S", "-aec", "VNA", "-od", str(out), "-k", "QueryRetrieveLevel=SERIES",
             "-k", f"StudyInstanceUID={STUDY}", "-k", f"SeriesInstanceUID={STUDY}.1",
             "127.0.0.1", str(scp.port)], dcmtk_env)
    got = sorted(out.iterdir())
    assert len(got) == 3, p.stdout + p.stderr
    assert {str(dcmread(g).SOPInstanceUID) for g in got} == {f"{STUDY}.1.{i}" for i in (1, 2, 3)}


def test_movescu_to_storescp(backend: Backend, dcmtk_env: dict[str, str],
                             tmp_path: Path) -> None:
    dest_port = free_port()
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    storescp = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(dest_dir), "+xa",
                                 str(dest_port)], env=dcmtk_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scp = start_scp(backend, VNA_DICOM_PEERS=f"DEST@127.0.0.1:{dest_port}")
    try:
        wait_port(dest_port)
        files = corpus(tmp_path)
        storescu(scp, dcmtk_env, files)
        p = run(["movescu", "-v", "-S", "-aec", "VNA", "-aem", "DEST", "-k",
                 "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                 "127.0.0.1", str(scp.port)], dcmtk_env)
        deadline = time.monotonic() + 10
        while len(list(dest_dir.iterdir())) < 9 and time.monotonic() < deadline:
            time.sleep(0.1)
        got = sorted(dest_dir.iterdir())
        assert len(got) == 9, p.stdout + p.stderr
        by_uid = {str(dcmread(g).SOPInstanceUID): g for g in got}
        for f in files:
            uid = str(dcmread(f).SOPInstanceUID)
            assert dataset_bytes(by_uid[uid]) == dataset_bytes(f)  # sent as archived
        bad = run(["movescu", "-S", "-aec", "VNA", "-aem", "UNKNOWN", "-k",
                   "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                   "127.0.0.1", str(scp.port)], dcmtk_env, check=False)
        assert "MoveDestinationUnknown" in bad.stdout + bad.stderr  # 0xA801
    finally:
        stop_scp(scp)
        storescp.terminate()
        storescp.wait(10)


def test_scp_metrics(backend: Backend, dcmtk_env: dict[str, str], tmp_path: Path) -> None:
    """C-STORE durations by outcome and the associations, added up over the SCP processes,
    on `vna scp`'s metrics port and through `vna api` on the same data dir."""
    import httpx

    from tests.api_client import start_api, stop_api

    port = free_port()
    scp = start_scp(backend, VNA_DICOM_METRICS_PORT=str(port))
    api = None
    try:
        files = corpus(tmp_path)
        storescu(scp, dcmtk_env, files[:4])
        storescu(scp, dcmtk_env, files[:1])  # a duplicate
        storescu(scp, dcmtk_env, files[4:6])  # a third association
        wait_port(port)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        lines = text.splitlines()
        assert 'vna_dicom_store_seconds_count{outcome="stored"} 6.0' in lines, text
        assert 'vna_dicom_store_seconds_count{outcome="duplicate"} 1.0' in lines, text
        assert "vna_dicom_associations_total 3.0" in lines, text
        api = start_api(backend)
        from_api = api.client().get("/metrics").text.splitlines()
        assert 'vna_dicom_store_seconds_count{outcome="stored"} 6.0' in from_api
        assert not any("PatientID" in line or "DCMTK1" in line for line in lines)
    finally:
        if api is not None:
            stop_api(api)
        stop_scp(scp)
