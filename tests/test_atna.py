"""The audit trail exported to an ATNA collector: DICOM PS3.15 A.5 messages in RFC 5424
syslog frames, over TLS (RFC 5425, a self-made certificate) and UDP (RFC 5426), received by
a local listener and checked against the schema; a collector that is down gets everything
once it is up again, once."""

from __future__ import annotations

import base64
import re
import socket
import ssl
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from storage.archive import Archive
from storage.index.models import AuditEvent
from tests.atna_schema import check
from tests.conftest import Backend, free_port, running_scp
from tests.dicom_client import find, store
from tests.factory import make_instance, write
from tests.test_commitment import broker_for, running_worker
from vna import atna
from vna.atna import AuditEntry, AuditSource, DicomAction, SyslogTarget

SYSLOG = re.compile(rb"^<85>1 (\S+) (\S+) vna (\S+) IHE\+RFC-3881 - \xef\xbb\xbf(<\?xml.*)$",
                    re.DOTALL)
SOURCE = AuditSource("VNA", "archive.example", "SITE1")


# -- the messages, alone ------------------------------------------------------------------------

ENTRIES = [
    AuditEntry(datetime(2026, 12, 5, 10, 0, tzinfo=UTC), DicomAction.STORE, "C-STORE",
               "success", "dicom", calling_aet="CT01", client="10.0.0.5",
               patient_id="P1", studies=("1.2.3",), instances=12),
    AuditEntry(datetime.now(UTC), DicomAction.FIND, "C-FIND", "success", "dicom",
               calling_aet="WS1", client="10.0.0.6", patient_id="P1", studies=("1.2.3",),
               resource="STUDY PatientID", route="1.2.840.10008.5.1.4.1.2.2.1"),
    AuditEntry(datetime.now(UTC), DicomAction.MOVE, "C-MOVE", "success", "dicom",
               calling_aet="WS1", tls_identity="CN=ws1,O=Hospital", patient_id="P2",
               studies=("1.2.4", "1.2.5"), instances=40),
    AuditEntry(datetime.now(UTC), DicomAction.ASSOCIATION, "A-ASSOCIATE-RJ", "denied",
               "dicom", calling_aet="INTRUDER", client="10.9.9.9"),
    AuditEntry(datetime.now(UTC), DicomAction.MPPS, "N-CREATE", "success", "dicom",
               calling_aet="CT01", patient_id="P1"),
    AuditEntry(datetime.now(UTC), "document.read", "GET", "success", token_id="t1",
               role="viewer", client="10.0.0.7", patient_id="P3"),
    AuditEntry(datetime.now(UTC), "document.create", "POST", "refused", token_id="t2",
               role="uploader"),
    AuditEntry(datetime.now(UTC), "session.create", "POST", "success", token_id="t1"),
    AuditEntry(datetime.now(UTC), "audit.list", "GET", "success", token_id="admin"),
    AuditEntry(datetime.now(UTC), "stats.read", "GET", "error", token_id="admin"),
]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.action}-{e.outcome}")
def test_message_follows_the_schema(entry: AuditEntry) -> None:
    root = check(atna.message(entry, SOURCE))
    ident = root.find("EventIdentification")
    assert ident is not None
    event = atna.event_for(entry.action, entry.method)
    assert root.find("EventIdentification/EventID").attrib["csd-code"] == \
        event.event_id.code  # type: ignore[union-attr]
    assert ident.attrib["EventOutcomeIndicator"] == str(atna.OUTCOMES[entry.outcome])
    requestor, archive = root.findall("ActiveParticipant")
    assert requestor.attrib["UserIsRequestor"] == "true"
    assert requestor.attrib["UserID"] == (entry.calling_aet or entry.token_id)
    assert archive.attrib["UserID"] == "VNA" and archive.attrib["UserIsRequestor"] == "false"
    assert root.find("AuditSourceIdentification").attrib == {  # type: ignore[union-attr]
        "AuditSourceID": "VNA", "AuditEnterpriseSiteID": "SITE1"}
    objects = root.findall("ParticipantObjectIdentification")
    patients = [o.attrib["ParticipantObjectID"] for o in objects
                if o.attrib["ParticipantObjectTypeCodeRole"] == "1"]
    assert patients == ([entry.patient_id] if entry.patient_id else [])
    studies = [o.attrib["ParticipantObjectID"] for o in objects
               if o.find("ParticipantObjectIDTypeCode").attrib["csd-code"] == "110180"]  # type: ignore[union-attr]
    assert studies == list(entry.studies)
    if event.event_id == atna.INSTANCES_TRANSFERRED:
        roles = {p.attrib["UserID"]: p.find("RoleIDCode").attrib["csd-code"]  # type: ignore[union-attr]
                 for p in (requestor, archive)}
        sender = "110153" if entry.action == DicomAction.STORE else "110152"
        assert roles[requestor.attrib["UserID"]] == sender
    if event.event_id == atna.QUERY:
        query = [o for o in objects if o.find("ParticipantObjectQuery") is not None]
        assert base64.b64decode(query[0].find("ParticipantObjectQuery").text or "") == \
            (entry.resource or "").encode()  # type: ignore[union-attr]


def test_syslog_frames() -> None:
    xml = atna.message(ENTRIES[0], SOURCE)
    msg = atna.syslog_message(xml, hostname="archive host", at=ENTRIES[0].at, procid="42")
    m = SYSLOG.match(msg)
    assert m is not None
    assert m.group(1) == b"2026-12-05T10:00:00.000Z" and m.group(2) == b"archivehost"
    assert m.group(4) == xml
    framed = atna.octet_counted(msg)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) and rest == msg


def test_syslog_target() -> None:
    assert SyslogTarget.parse("tcp+tls://audit.example:6514") == \
        SyslogTarget("tcp+tls", "audit.example", 6514)
    assert SyslogTarget.parse("udp://10.0.0.1") == SyslogTarget("udp", "10.0.0.1", 514)
    for bad in ("audit.example:514", "http://x:1", "udp://:514", "tcp://x:99999", "tcp://x:y"):
        with pytest.raises(ValueError):
            SyslogTarget.parse(bad)


# -- a local collector ----------------------------------------------------------------------------

class SyslogListener:
    """A syslog collector: RFC 5425 (octet counting over TLS), RFC 6587 over TCP, or
    RFC 5426 (one message a datagram); keeps what it received."""

    def __init__(self, transport: str, port: int, cert: Path | None = None,
                 key: Path | None = None) -> None:
        self.transport = transport
        self.messages: list[bytes] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.ctx: ssl.SSLContext | None = None
        if transport == "tcp+tls":
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(str(cert), str(key))
        if kind == socket.SOCK_STREAM:
            self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.transport == "udp":
                    data = self.sock.recv(70_000)
                    with self.lock:
                        self.messages.append(data)
                    continue
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        if self.ctx is not None:
            conn = self.ctx.wrap_socket(conn, server_side=True)
        buf = b""
        with conn:
            while not self._stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b" " in buf:
                    length, _, rest = buf.partition(b" ")
                    n = int(length)
                    if len(rest) < n:
                        break
                    with self.lock:
                        self.messages.append(rest[:n])
                    buf = rest[n:]

    def received(self) -> list[bytes]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "collector.pem", d / "collector.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _trail(archive: Archive) -> list[AuditEvent]:
    from sqlalchemy import select

    with archive.index.read_session() as s:
        return list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def _accesses(scp_port: int, tmp: Path, patient: str) -> None:
    study = generate_uid()
    files = [write(make_instance(patient_id=patient, study_uid=study, instance_number=i),
                   tmp / f"{patient}-{i}.dcm") for i in range(2)]
    assert store(scp_port, files) == [0, 0]
    status, _ = find(scp_port, "STUDY", {"PatientID": patient})
    assert status == 0


def _wait(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


def _parsed(messages: list[bytes]) -> list[bytes]:
    out = []
    for msg in messages:
        m = SYSLOG.match(msg)
        assert m is not None, msg[:120]
        check(m.group(4))
        out.append(m.group(4))
    return out


def test_tls_collector_down_then_up(archive: Archive, backend: Backend, tmp_path: Path,
                                    certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    port = free_port()
    env = {"VNA_AUDIT_SYSLOG": f"tcp+tls://127.0.0.1:{port}", "VNA_AUDIT_SYSLOG_CA": str(cert),
           "VNA_AUDIT_EXPORT_SECONDS": "0.5", "VNA_LOG_LEVEL": "INFO"}
    broker = broker_for(backend)
    if broker:
        env["VNA_BROKER_URL"] = broker
    with running_scp(backend) as scp, running_worker(backend, env):
        _accesses(scp.port, tmp_path, "ATNA-1")
        def complete() -> list[AuditEvent] | None:  # the store association's counts too
            done = [e for e in _trail(archive)
                    if e.instances is not None or e.action != DicomAction.STORE]
            return done if len(done) >= 4 else None

        rows = _wait(complete, 20)
        time.sleep(3)  # the collector is down: several rounds fail
        assert all(e.exported_at is None for e in _trail(archive))
        listener = SyslogListener("tcp+tls", port, cert, key)
        try:
            n = len(_trail(archive))
            assert n >= len(rows) >= 4  # 2 associations, a C-STORE and a C-FIND record
            _wait(lambda: len(listener.received()) >= n, 30)
            # more accesses while it is up
            _accesses(scp.port, tmp_path, "ATNA-2")
            _wait(lambda: all(e.exported_at is not None for e in _trail(archive)), 30)
            time.sleep(1.5)  # nothing comes twice
            trail = _trail(archive)
            xmls = _parsed(listener.received())
        finally:
            listener.close()
        assert all(e.exported_at is not None for e in trail)
        assert len(xmls) == len(trail)
        store_msgs = [x for x in xmls if b'csd-code="110104"' in x]
        assert len(store_msgs) == 2 and all(b"NumberOfInstances" in x for x in store_msgs)
        assert sum(b'csd-code="110112"' in x for x in xmls) == 2
        assert any(b'ParticipantObjectID="ATNA-2"' in x for x in xmls)
    logs = scp.logtext()
    worker_logs = "".join(p.read_text(errors="replace")
                          for p in backend.data_dir.parent.glob("worker-*.log"))
    assert "audit record(s) sent" in worker_logs
    for text in (logs, worker_logs, *(x.decode() for x in xmls)):
        assert "Doe^John" not in text  # names never leave the index


@pytest.mark.parametrize("backend", ["file-sqlite"], indirect=True)
def test_udp_collector(archive: Archive, backend: Backend, tmp_path: Path) -> None:
    port = free_port()
    listener = SyslogListener("udp", port)
    env = {"VNA_AUDIT_SYSLOG": f"udp://127.0.0.1:{port}", "VNA_AUDIT_EXPORT_SECONDS": "0.5"}
    try:
        with running_scp(backend) as scp, running_worker(backend, env):
            _accesses(scp.port, tmp_path, "ATNA-U")
            _wait(lambda: _trail(archive) and all(e.exported_at is not None
                                                  for e in _trail(archive)), 30)
            trail = _trail(archive)
            xmls = _parsed(listener.received())
    finally:
        listener.close()
    assert trail and len(xmls) == len(trail)
    assert any(b'ParticipantObjectID="ATNA-U"' in x for x in xmls)
