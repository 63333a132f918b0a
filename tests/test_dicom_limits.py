"""Limits against abuse on the DICOM port: association limits in total and per calling AE
(A-ASSOCIATE-RJ transient / service-provider presentation-related / local-limit-exceeded,
PS3.8 9.3.4), ARTIM for a connection that never sends its A-ASSOCIATE-RQ, the idle
timeout, and a modality that still stores while 500 connections and associations sit
idle and a sender writes one byte a second."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pynetdicom.sop_class import Verification

from tests.abuse_client import Crowd, SlowSender, read_pdu, request
from tests.conftest import Backend, running_scp
from tests.factory import make_instance, write

pytestmark = pytest.mark.timeout(300)

LOCAL_LIMIT = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), limit


def _rj(body: bytes) -> tuple[int, int, int]:
    return body[1], body[2], body[3]


def _closed(sock: socket.socket) -> bool:
    """The SCP closed the connection (a reset when our bytes were left unread)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def index_count(backend: Backend) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(backend.data_dir / "index.sqlite3")) as db:
        return int(db.execute("SELECT count(*) FROM instance").fetchone()[0])


def test_limits_in_total_and_per_calling_aet(embedded: Backend) -> None:
    """One process, at most 5 associations and 3 per AE title: the 4th of HOG and the 6th
    of all are rejected with the local-limit reason, over both of the service's paths
    (storage associations and pynetdicom's), and a place freed is taken again."""
    with running_scp(embedded, VNA_DICOM_PROCESSES="1", VNA_DICOM_MAX_ASSOCIATIONS="5",
                     VNA_DICOM_MAX_ASSOCIATIONS_PER_AET="3") as scp:
        held: list[socket.socket] = []
        try:
            for abstract in ((), (str(Verification),), ()):  # storage loop, pynetdicom, loop
                sock, pdu_type, _ = request(scp.port, "HOG", *abstract)
                held.append(sock)
                assert pdu_type == 0x02
            time.sleep(0.2)  # pynetdicom's association counts once its thread runs
            sock, pdu_type, body = request(scp.port, "HOG")
            assert (pdu_type, _rj(body)) == (0x03, LOCAL_LIMIT)
            sock.close()
            for calling in ("CT1", "MR1"):
                sock, pdu_type, _ = request(scp.port, calling, str(Verification))
                held.append(sock)
                assert pdu_type == 0x02
            time.sleep(0.2)
            sock, pdu_type, body = request(scp.port, "US1")
            assert (pdu_type, _rj(body)) == (0x03, LOCAL_LIMIT)
            sock.close()
            held.pop(0).close()  # one of HOG's storage associations goes away
            time.sleep(0.5)
            sock, pdu_type, _ = request(scp.port, "US1")
            held.append(sock)
            assert pdu_type == 0x02
        finally:
            for s in held:
                s.close()
        assert "local limit exceeded" in scp.logtext()


def test_artim_and_idle_timeouts(embedded: Backend) -> None:
    """A connection that sends no A-ASSOCIATE-RQ, or half of one, is closed after ARTIM; an
    association that goes silent is aborted after the idle timeout, on both paths."""
    with running_scp(embedded, VNA_DICOM_ARTIM_TIMEOUT="1.5",
                     VNA_DICOM_IDLE_TIMEOUT="2") as scp:
        silent = socket.create_connection(("127.0.0.1", scp.port), timeout=10)
        half = socket.create_connection(("127.0.0.1", scp.port), timeout=10)
        half.sendall(b"\x01\x00\x00\x00\x01\x00\x00\x01")  # the start of an RQ, then nothing
        start = time.monotonic()
        assert _closed(silent) and _closed(half)
        assert time.monotonic() - start < 4
        sessions = []
        for abstract in ((), (str(Verification),)):
            sock, pdu_type, _ = request(scp.port, "IDLE", *abstract)
            assert pdu_type == 0x02
            sessions.append(sock)
        start = time.monotonic()
        for sock in sessions:
            pdu_type, _ = read_pdu(sock)  # A-ABORT (0x07), or closed
            assert pdu_type in (0x07, 0)
            sock.close()
        assert time.monotonic() - start < 8


def test_a_modality_stores_through_an_abusive_client(
        embedded: Backend, dcmtk_env: dict[str, str], tmp_path: Path) -> None:
    """500 idle connections, HOG's associations up to its limit (the rest refused), and a
    sender writing one byte a second: storescu still stores 20 instances, quickly."""
    for i in range(20):
        write(make_instance(patient_id="ABUSE", instance_number=i, size=64),
              tmp_path / "in" / f"{i}.dcm")
    with running_scp(embedded, VNA_DICOM_ARTIM_TIMEOUT="5") as scp:
        slow = SlowSender(scp.port)
        slow.start()
        idle = Crowd(scp.port, 500)
        hogs = Crowd(scp.port, 60, associate=True, calling="HOG")
        try:
            assert hogs.refused > 0  # 2 processes x 16 per AE title
            assert hogs.accepted <= 2 * 16
            start = time.monotonic()
            r = subprocess.run(["storescu", "-aec", "VNA", "-aet", "MODALITY", "+sd",
                                "127.0.0.1", str(scp.port), str(tmp_path / "in")],
                               env=dcmtk_env, capture_output=True, text=True, timeout=60)
            elapsed = time.monotonic() - start
            assert r.returncode == 0, r.stderr
            assert elapsed < 10, elapsed
            assert index_count(embedded) == 20
        finally:
            slow.stop()
            idle.close()
            hogs.close()
        assert "Traceback" not in scp.logtext()
