"""The audit trail's export to an IHE ATNA audit record repository over syslog.

Where: a thread of the Celery worker's main process (`AtnaExporter`), as the Storage
Commitment reporter, so that exporting never waits behind the pool's outbox work.

Durable: the queue is the `audit_event` table itself, the rows whose `exported_at` is
still NULL (a partial index keeps finding them cheap). Every VNA_AUDIT_EXPORT_SECONDS the
exporter sends them oldest first, as DICOM audit messages (`vna.atna`) in RFC 5424 frames,
and marks each batch exported once it was written to the collector's connection; a
collector that is down is tried again on the next round, and the records wait in the index
meanwhile. A worker killed between sending and marking sends those records again (at least
once; over UDP, RFC 5426, a datagram may be lost on the way, which syslog over UDP accepts).
With PostgreSQL several workers may run: an advisory lock lets one export at a time.
Logs name counts and the collector, never a record's content.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
from datetime import UTC, datetime

from storage.index.db import Index
from storage.index.models import AuditEvent
from storage.index.tokens import AuditTrail
from vna.atna import AuditEntry, AuditSource, SyslogTarget, message, octet_counted, syslog_message
from vna.settings import Settings

log = logging.getLogger("vna.worker.atna")

BATCH = 200
TIMEOUT_SECONDS = 10.0
UDP_LARGEST = 65_000  # a datagram's payload (RFC 5426 asks receivers for 2048 at least)


def entry_of(e: AuditEvent) -> AuditEntry:
    return AuditEntry(at=e.at, action=e.action, method=e.method, outcome=e.outcome,
                      protocol=e.protocol or "http", token_id=e.token_id, role=e.role,
                      calling_aet=e.calling_aet, client=e.client, tls_identity=e.tls_identity,
                      patient_id=e.patient_id, studies=tuple(e.studies or ()),
                      instances=e.instances, resource=e.resource, route=e.route)


class SyslogSender:
    """One connection to the collector, opened when needed and kept between batches."""

    def __init__(self, target: SyslogTarget, settings: Settings) -> None:
        self.target = target
        self.settings = settings
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        t = self.target
        if t.transport == "udp":
            family = socket.AF_INET6 if ":" in t.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect((t.host, t.port))
            return sock
        sock = socket.create_connection((t.host, t.port), timeout=TIMEOUT_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if t.transport == "tcp+tls":
            ctx = ssl.create_default_context(cafile=self.settings.audit_syslog_ca)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.settings.audit_syslog_cert:
                ctx.load_cert_chain(self.settings.audit_syslog_cert,
                                    self.settings.audit_syslog_key)
            try:
                sock = ctx.wrap_socket(sock, server_hostname=t.host)
            except BaseException:
                sock.close()
                raise
        return sock

    def send(self, msg: bytes) -> None:
        if self._sock is None:
            self._sock = self._connect()
        try:
            if self.target.transport == "udp":
                self._sock.send(msg[:UDP_LARGEST])
            else:
                self._sock.sendall(octet_counted(msg))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class AtnaExporter:
    """Sends the records not exported yet, every VNA_AUDIT_EXPORT_SECONDS, until stopped."""

    def __init__(self, settings: Settings, index: Index) -> None:
        self.settings = settings
        self.index = index
        self.trail = AuditTrail(index)
        self.target = SyslogTarget.parse(settings.audit_syslog)
        self.sender = SyslogSender(self.target, settings)
        self.hostname = socket.gethostname()
        self.source = AuditSource(settings.dicom_aet, self.hostname, settings.audit_site_id)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="atna-export", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT_SECONDS * 2)
        self.sender.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.export_pending()
            self._stop.wait(self.settings.audit_export_seconds)

    def export_pending(self) -> int:
        """Send every record not exported yet; how many went out. Never raises."""
        sent = 0
        try:
            with self.trail.exporting() as mine:
                if not mine:
                    return 0
                while not self._stop.is_set():
                    batch = self.trail.unexported(BATCH)
                    if not batch:
                        break
                    done = self._send(batch)
                    self.trail.mark_exported([e.id for e in batch[:done]])
                    sent += done
                    if done < len(batch):
                        break
        except Exception as exc:  # the index is away: next round
            log.warning("audit export: %s", exc.__class__.__name__)
        if sent:
            log.info("%d audit record(s) sent to %s://%s:%d", sent, self.target.transport,
                     self.target.host, self.target.port)
        return sent

    def _send(self, batch: list[AuditEvent]) -> int:
        """How many of `batch` (from the first) were written to the collector."""
        procid = str(os.getpid())
        for i, event in enumerate(batch):
            msg = syslog_message(message(entry_of(event), self.source), hostname=self.hostname,
                                 at=event.at or datetime.now(UTC), procid=procid)
            try:
                self.sender.send(msg)
            except (OSError, ssl.SSLError) as exc:
                if not self._failing:
                    log.warning("audit collector %s://%s:%d unreachable (%s); the records "
                                "wait in the index", self.target.transport, self.target.host,
                                self.target.port, exc.__class__.__name__)
                self._failing = True
                return i
        if self._failing:
            log.info("audit collector %s:%d reachable again", self.target.host,
                     self.target.port)
        self._failing = False
        return len(batch)


_exporter: AtnaExporter | None = None


def start_exporter(settings: Settings, index: Index) -> AtnaExporter | None:
    """The worker process's exporter, when VNA_AUDIT_SYSLOG is set."""
    global _exporter
    if _exporter is None and settings.audit_syslog:
        _exporter = AtnaExporter(settings, index)
        _exporter.start()
    return _exporter


def stop_exporter() -> None:
    global _exporter
    if _exporter is not None:
        _exporter.stop()
        _exporter = None
