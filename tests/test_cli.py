"""The command line as users run it: `vna import`, `vna up`, `vna db upgrade`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from storage.migrate import HEAD
from tests import dicom_client as dc
from tests.conftest import VNA, Backend, free_port, vna_env, wait_port
from tests.factory import make_instance, write


def vna(backend: Backend, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VNA, *args], env=vna_env(backend.env), capture_output=True,
                          text=True, timeout=timeout, cwd=backend.data_dir.parent)


def test_db_upgrade(backend: Backend) -> None:
    p = vna(backend, "db", "upgrade")
    assert p.returncode == 0, p.stderr
    assert HEAD in p.stderr + p.stdout
    assert vna(backend, "db", "upgrade").returncode == 0  # idempotent


def test_import_folder(backend: Backend, tmp_path: Path) -> None:
    src = tmp_path / "legacy"
    study = "1.2.826.0.1.3680043.8.498.4242"
    for i in range(30):
        write(make_instance(study_uid=study, series_uid=study + ".1", sop_uid=f"{study}.1.{i}",
                            instance_number=i), src / "a" / f"{i}.dcm")
    (src / "notes.txt").write_text("not dicom")
    bad = make_instance()
    del bad.StudyInstanceUID
    bad.preamble = b"\0" * 128
    bad.save_as(src / "bad.dcm", enforce_file_format=False)

    p = vna(backend, "import", str(src), "--batch", "8")
    assert p.returncode == 1, p.stderr
    out = p.stdout + p.stderr
    assert "imported" in out and "30" in out
    assert "notes.txt" in out and "bad.dcm" in out and "StudyInstanceUID is missing" in out

    p = vna(backend, "import", str(src / "a"))
    assert p.returncode == 0, p.stderr
    assert "duplicates" in p.stdout + p.stderr

    from services.runtime import open_archive
    from storage.index.query import FindQuery, find
    from vna.dicom.attributes import Level

    a = open_archive(backend.settings())
    with a.index.read_session() as s:
        res = find(s, FindQuery.from_identifier(Level.STUDY, [
            ("StudyInstanceUID", study), ("NumberOfStudyRelatedInstances", None)]))
    a.index.dispose()
    assert res == [{"StudyInstanceUID": study, "NumberOfStudyRelatedInstances": 30}]


def test_import_missing_path_is_an_error(embedded: Backend) -> None:
    embedded.data_dir.mkdir(parents=True)
    p = vna(embedded, "import", "/nonexistent/folder")
    assert p.returncode != 0
    assert "does not exist" in p.stderr + p.stdout


def _upload_a_pdf(http_port: int, token: str) -> None:
    """The printed admin token works on the document API of `vna up`."""
    import httpx

    from tests.media import make_pdf

    r = httpx.post(f"http://127.0.0.1:{http_port}/api/v1/documents",
                   headers={"Authorization": f"Bearer {token}"},
                   data={"metadata": json.dumps({"patientId": "191212121212",
                                                 "classCode": "report",
                                                 "practiceSettingCode": "lung"})},
                   files={"file": ("r.pdf", make_pdf(), "application/pdf")})
    assert r.status_code == 201, r.text


def test_up_runs_everything_and_ctrl_c_stops_it(embedded: Backend, tmp_path: Path) -> None:
    dport, hport = free_port(), free_port()
    env = vna_env({**embedded.env, "VNA_DICOM_PORT": str(dport), "VNA_HTTP_PORT": str(hport),
                   "VNA_DICOM_HOST": "127.0.0.1", "VNA_DICOM_PROCESSES": "1"})
    embedded.data_dir.mkdir(parents=True)
    log = tmp_path / "up.log"
    proc = subprocess.Popen([*VNA, "up"], env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_port(dport, 90)
        wait_port(hport, 90)
        deadline = time.monotonic() + 30
        while "Ctrl-C" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        token = (embedded.data_dir / "admin-token").read_text().strip()
        assert token in text  # printed once, at first start
        assert f":{dport}" in text and f":{hport}" in text
        health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{hport}/health"))
        assert health["status"] == "ok"
        assoc = dc.echo(dport)
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        # The printed admin token works on the document API.
        _upload_a_pdf(hport, token)
        # The worker is a real Celery process on the serverless broker.
        from services.worker.app import make_celery

        celery = make_celery(embedded.settings())
        assert celery.send_task("vna.ping").get(timeout=60) == "pong"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("vna up did not stop on Ctrl-C:\n" + log.read_text())
    assert rc == 0, log.read_text()
    for port in (dport, hport):
        with pytest.raises(TimeoutError):
            wait_port(port, 1)
    assert "vna stopped" in log.read_text()


def test_up_console_shows_what_a_person_needs(embedded: Backend, tmp_path: Path) -> None:
    """Where it listens, the token and errors; not Celery's banner, its superuser warning or
    three lines for every outbox poll (those are logged at DEBUG)."""
    dport, hport = free_port(), free_port()
    env = vna_env({**embedded.env, "VNA_DICOM_PORT": str(dport), "VNA_HTTP_PORT": str(hport),
                   "VNA_DICOM_HOST": "127.0.0.1", "VNA_DICOM_PROCESSES": "1",
                   "VNA_LOG_LEVEL": "INFO", "VNA_OUTBOX_POLL_SECONDS": "1"})
    embedded.data_dir.mkdir(parents=True)
    log = tmp_path / "up.log"
    started = time.monotonic()
    proc = subprocess.Popen([*VNA, "up"], env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_port(hport, 90)
        token = (embedded.data_dir / "admin-token").read_text().strip()
        _upload_a_pdf(hport, token)
        from services.runtime import open_runtime
        from storage.outbox import lag

        with open_runtime(embedded.settings()) as rt:  # type: ignore[arg-type]
            deadline = time.monotonic() + 60
            while lag(rt.index)[0] and time.monotonic() < deadline:
                time.sleep(0.5)
            assert lag(rt.index)[0] == 0, "the polls did not run"
        time.sleep(max(0.0, 12 - (time.monotonic() - started)))  # a dozen polls at least
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = log.read_text()
    assert f"admin token (printed once): {token}" in text
    assert f"VNA@127.0.0.1:{dport}" in text and f"http://127.0.0.1:{hport}/health" in text
    for noise in ("-------------- celery@", "[tasks]", "[config]",  # the banner
                  "superuser privileges",
                  "Sending due task", "vna.outbox.drain[",  # beat, received, succeeded
                  "No hostname was supplied", "exited with 'signal"):
        assert noise not in text, f"{noise!r} on the console:\n{text}"
    assert "vna stopped" in text


def test_only_the_routine_poll_goes_to_debug() -> None:
    """A poll that fails or is retried, and other tasks, still show at INFO and above."""
    import logging

    from celery.app.trace import LOG_FAILURE, LOG_RECEIVED, LOG_RETRY, LOG_SUCCESS

    from services.worker.app import ROUTINE_POLL_AT_DEBUG

    def shown(level: int, msg: str, args: object, logger: str = "celery.app.trace") -> bool:
        logging.getLogger(logger).setLevel(logging.INFO)
        try:
            record = logging.LogRecord(logger, level, __file__, 1, msg, args, None)
            record.args = args  # type: ignore[assignment]  # a dict, as Celery passes it
            return ROUTINE_POLL_AT_DEBUG.filter(record)
        finally:
            logging.getLogger(logger).setLevel(logging.NOTSET)

    poll = {"name": "vna.outbox.drain", "id": "1", "runtime": 0.01, "return_value": 0,
            "description": "raised unexpected", "exc": "OperationalError"}
    assert not shown(logging.INFO, LOG_SUCCESS, poll)
    assert not shown(logging.INFO, LOG_RECEIVED, poll, "celery.worker.strategy")
    assert not shown(logging.INFO, "Scheduler: Sending due task %s (%s)",
                     ("drain-outbox", "vna.outbox.drain"), "celery.beat")
    assert shown(logging.ERROR, LOG_FAILURE, poll)
    assert shown(logging.INFO, LOG_RETRY, poll)
    assert shown(logging.INFO, LOG_SUCCESS, {**poll, "name": "vna.fixity.run"})
    assert shown(logging.INFO, "Scheduler: Sending due task %s (%s)",
                 ("fixity", "vna.fixity.run"), "celery.beat")


@pytest.mark.parametrize("after", [0.5, 1.0, 1.5, 2.0])
def test_scp_stopped_while_starting_leaves_no_process(embedded: Backend, after: float) -> None:
    """SIGTERM while the SCP processes are still starting stops all of them (it used to
    kill the supervisor alone and orphan its children)."""
    env = vna_env({**embedded.env, "VNA_DICOM_PORT": str(free_port()),
                   "VNA_DICOM_HOST": "127.0.0.1", "VNA_DICOM_PROCESSES": "2"})
    proc = subprocess.Popen([*VNA, "scp"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(after)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) in (0, -signal.SIGTERM)  # still importing: no children yet

    def session() -> list[str]:
        out = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
        return out.stdout.split()

    deadline = time.monotonic() + 15
    while session() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session() == []
