"""The DICOM service: one AE, served by several processes on one port.

A pynetdicom SCP does not scale with threads (the GIL), so `serve` starts
VNA_DICOM_PROCESSES processes that each bind the port with SO_REUSEPORT; the kernel
spreads incoming associations over them. Every accepted socket gets TCP_NODELAY
(pynetdicom sets none, which costs ~40 ms per message with Nagle's algorithm).

Each process serves the plain port (VNA_DICOM_PORT) and the TLS port (VNA_DICOM_TLS_PORT),
either of them off when 0, with the same AE, handlers and association limits. Every
connection is admitted first, in its own thread (`admission`: TLS handshake, ARTIM,
association limits, AE title bound to a certificate), then served.

Each process has its own receive folder, `VNA_DATA_DIR/incoming/<host>-<pid>/`, on the
archive's disk: a storage association is served by vna's own loop
(`storage_association`), which writes each dataset there as it arrives; any other
association goes to pynetdicom, whose chunked receive writes there too
(`pynetdicom_compat`). The archive renames a received file into place instead of copying
it. What a process leaves in its folder was never acknowledged: the folder is swept while
it runs and removed when it stops, and `serve` removes those of dead processes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, cast

import pydicom.config
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from services import incoming as receive_folders
from services.dicom_scp import metrics, pynetdicom_compat, tls
from services.dicom_scp.admission import (
    REJECT_CALLING_AET,
    REJECT_LOCAL_LIMIT,
    Admission,
    Refused,
    ReplaySocket,
    calling_aet,
    peek_associate_rq,
    read_associate_rq_tls,
    reject_pdu,
    tls_handshake,
)
from services.dicom_scp.audit import DicomAudit, base_record
from services.dicom_scp.handlers import DicomService
from services.dicom_scp.storage_association import StorageAcceptor
from services.runtime import open_archive
from services.supervision import configure_logging, die_with_parent, wait_for_free_port
from storage.objectstore import remove_stale_files
from vna.dicom.part10 import ACCEPTED_TRANSFER_SYNTAXES
from vna.settings import Settings

log = logging.getLogger("vna.scp")


def _preference(ts: UID) -> int:
    """Our order of preference when a sender offers several syntaxes in one context.

    Explicit VR first (keeps VRs), then lossless compression (smaller, exact), then what is
    lossy or video (accepted as the sender has it, never asked for), implicit VR last.
    """
    if ts == ExplicitVRLittleEndian:
        return 0
    name = ts.name.lower()
    if ts.is_compressed and "lossless" in name and "lossy" not in name or ts == RLELossless:
        return 1
    if ts == ImplicitVRLittleEndian:
        return 4
    if ts.is_compressed:
        return 2
    return 3


TRANSFER_SYNTAXES = sorted(ACCEPTED_TRANSFER_SYNTAXES, key=lambda ts: _preference(UID(ts)))

QR_MODELS = [
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
]

# The modality workflow: worklist query, performed procedure steps, storage commitment.
WORKFLOW_SOP_CLASSES = [
    ModalityWorklistInformationFind,
    ModalityPerformedProcedureStep,
    StorageCommitmentPushModel,
]


class ReusePortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, sharing its port with sibling processes. Each
    connection is admitted first (`admission`: TLS handshake, ARTIM, limits, AE-to-
    certificate binding), in its own thread; then storage associations are served by
    `storage_association` when `storage` is set, the rest by pynetdicom."""

    # socketserver's default listen backlog is 5: under a connection flood, a modality's
    # SYN was dropped and retried after 1 s, 3 s... (500 connections took 47 s to open)
    request_queue_size = 512
    storage: StorageAcceptor | None = None
    admission: Admission | None = None
    audit: DicomAudit | None = None  # records the associations refused here
    tls_context: ssl.SSLContext | None = None  # set: this is the TLS port
    artim: float = 10.0

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock = cast(socket.socket, request)
        deadline = time.monotonic() + self.artim
        pdu: bytes | None
        cert: dict[str, Any] | None = None
        try:
            if self.tls_context is not None:
                sock = self.tls_context.wrap_socket(sock, server_side=True,
                                                    do_handshake_on_connect=False)
                tls_handshake(cast(ssl.SSLSocket, sock), deadline)
                pdu = read_associate_rq_tls(cast(ssl.SSLSocket, sock), deadline)
                cert = cast(ssl.SSLSocket, sock).getpeercert()
                sock.setblocking(True)
            else:
                pdu = peek_associate_rq(sock, self.artim)
        except Refused as exc:  # a failed handshake is worth a warning; a probe is not
            (log.warning if self.tls_context is not None else log.info)(
                "connection from %s closed: %s", client_address[0], exc)
            _close(sock)
            return
        if pdu is None:  # not an A-ASSOCIATE-RQ: pynetdicom answers (and logs) it
            super().finish_request(sock, client_address)
            return
        consumed = self.tls_context is not None
        aet = calling_aet(pdu)
        assert self.admission is not None
        if not self.admission.check_identity(aet, cert):
            log.warning("association from %s (%s) rejected: its AE title is bound to another "
                        "certificate subject (VNA_DICOM_TLS_AET_SUBJECTS)",
                        aet, client_address[0])
            _reject(sock, REJECT_CALLING_AET)
            self._audit_rejected(aet, client_address, sock, "AE title bound to another "
                                 "certificate subject")
            return
        with self.admission.hold(aet) as admitted:
            if not admitted:
                _reject(sock, REJECT_LOCAL_LIMIT)
                self._audit_rejected(aet, client_address, sock, "local limit exceeded")
                return
            if self.storage is not None and self.storage.serve(sock, pdu, consumed=consumed):
                return
            if consumed:  # pynetdicom reads the request again
                sock = cast(socket.socket, ReplaySocket(cast(ssl.SSLSocket, sock), pdu))
            super().finish_request(sock, client_address)

    def _audit_rejected(self, aet: str, client_address: Any, sock: Any, reason: str) -> None:
        if self.audit is not None:
            self.audit.rejected(base_record(aet, client_address[0], tls.socket_identity(sock)),
                                reason)

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # accept only: the TLS handshake is done in the connection's thread
        assert self.socket is not None
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


# How long a rejected requestor has to read the A-ASSOCIATE-RJ and close its end.
REJECT_LINGER = 2.0


def _reject(sock: socket.socket, reason: tuple[int, int, int]) -> None:
    """Send the A-ASSOCIATE-RJ, then wait (briefly) for the requestor to close the
    connection, as the upper layer's Sta13 does: closing first can reset the connection
    before the requestor has read why it was rejected."""
    with contextlib.suppress(OSError, ValueError):
        sock.sendall(reject_pdu(*reason))
        sock.settimeout(REJECT_LINGER)
        deadline = time.monotonic() + REJECT_LINGER
        while sock.recv(4096) and time.monotonic() < deadline:
            pass
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def build_ae(settings: Settings) -> AE:
    """The AE with everything the Conformance Statement lists."""
    ae = AE(ae_title=settings.dicom_aet)
    ae.maximum_pdu_size = settings.dicom_max_pdu
    # admission.py counts every association of the process against the limits first;
    # pynetdicom's own count (its associations only) is a backstop
    ae.maximum_associations = settings.dicom_max_associations
    ae.acse_timeout = settings.dicom_artim_timeout
    ae.network_timeout = settings.dicom_idle_timeout
    ae.dimse_timeout = settings.dicom_dimse_timeout
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        # scp_role: a C-GET requestor may act as Storage SCP on this association.
        ae.add_supported_context(str(cx.abstract_syntax), TRANSFER_SYNTAXES,
                                 scu_role=True, scp_role=True)
    for model in QR_MODELS:
        ae.add_supported_context(model)
    for workflow in WORKFLOW_SOP_CLASSES:
        ae.add_supported_context(workflow)
    allowed = settings.allowed_aets
    if allowed:
        ae.require_calling_aet = sorted(allowed)
    # Peers we connect to as SCU (C-MOVE destinations) are proposed per request.
    return ae


def listening_ports(settings: Settings) -> list[tuple[int, ssl.SSLContext | None]]:
    """The ports an SCP process serves: plain (VNA_DICOM_PORT) and TLS
    (VNA_DICOM_TLS_PORT), each unless 0."""
    ports: list[tuple[int, ssl.SSLContext | None]] = []
    if settings.dicom_port:
        ports.append((settings.dicom_port, None))
    if settings.dicom_tls_port:
        ports.append((settings.dicom_tls_port, tls.server_context(settings)))
    return ports


def tls_to_peers(ae: AE, settings: Settings) -> None:
    """Associations this AE opens to a peer marked `/tls` in VNA_DICOM_PEERS (C-MOVE
    destinations) go over TLS: the peer is found by its address, which is all pynetdicom's
    C-MOVE service passes to `associate`."""
    by_address = {(p.host, p.port): p for p in settings.peers.values() if p.tls}
    if not by_address:
        return
    context = tls.client_context(settings)
    associate = ae.associate

    def associate_tls(addr: str, port: int, *args: Any, **kwargs: Any) -> Any:
        peer = by_address.get((addr, port))
        if peer is not None and kwargs.get("tls_args") is None:
            kwargs["tls_args"] = tls.peer_tls_args(settings, peer, context)
        return associate(addr, port, *args, **kwargs)

    ae.associate = associate_tls  # type: ignore[method-assign,assignment]


def configure_process(settings: Settings) -> Path:
    """Process-wide settings of an SCP process; returns its receive folder."""
    # Each process receives into its own folder, so a restart cleans only its own leftovers.
    receive_dir = receive_folders.own_folder(settings.incoming_dir)
    pynetdicom_compat.install(receive_dir)
    # The archive stores received bytes as they are and never re-encodes them.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    return receive_dir


def run_server_process(settings: Settings, ready: Any = None,
                       parent_pid: int | None = None) -> None:
    """One SCP process: serve associations until SIGTERM (or until its supervisor dies)."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    configure_logging(settings.log_level)
    incoming = configure_process(settings)
    archive = open_archive(settings)
    service = DicomService(settings, archive, incoming)
    ae = build_ae(settings)
    tls_to_peers(ae, settings)
    admission = Admission(ae, settings.dicom_max_associations,
                          settings.dicom_max_associations_per_aet, settings.aet_subjects)
    servers: list[ReusePortServer] = []
    for port, context in listening_ports(settings):
        server = cast(ReusePortServer, ae.make_server(
            (settings.dicom_host, port),
            evt_handlers=service.handlers(),  # type: ignore[arg-type]
            server_class=ReusePortServer))
        pynetdicom_compat.register_server(ae, server)  # so that server.shutdown() finds it
        pynetdicom_compat.share_contexts(server)
        server.storage = StorageAcceptor(ae, server.contexts, service, incoming)
        server.admission = admission
        server.audit = service.audit
        server.tls_context = context
        server.artim = settings.dicom_artim_timeout
        servers.append(server)

    stopping = threading.Event()

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever: run it off the signal frame, and only once.
        if not stopping.is_set():
            stopping.set()
            for server in servers:
                threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
    threading.Thread(target=_sweep_incoming, args=(incoming, stopping),
                     name="vna-sweep-incoming", daemon=True).start()
    # What start-up built (pynetdicom's and pydicom's tables, the AE's contexts) lives as
    # long as the process: keep it out of the collector's full passes, which took ~50 ms
    # each over ~105,000 objects, under the GIL, in the middle of someone's association.
    gc.collect()
    gc.freeze()
    if ready is not None:
        ready.set()
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                         name="vna-scp-tls", daemon=True).start()
    try:
        servers[0].serve_forever(poll_interval=0.2)
    finally:
        archive.index.dispose()
        # nothing in it was acknowledged; a restart need not find it
        shutil.rmtree(incoming, ignore_errors=True)


STALE_INCOMING_SECONDS = 600  # well past the network timeout: nobody writes it any more


def sweep_incoming(folder: Path, max_age: float = STALE_INCOMING_SECONDS) -> int:
    """Remove the receive files in `folder` nobody has written for `max_age` seconds: a
    C-STORE cut short that no handler saw end (a file being received is written with every
    fragment; a received one is archived or removed at once). Returns how many."""
    removed = remove_stale_files(folder, max_age)
    if removed:
        log.warning("removed %d stale receive file(s): C-STOREs cut short", removed)
    return removed


def _sweep_incoming(folder: Path, stopping: threading.Event) -> None:
    while not stopping.wait(60):
        sweep_incoming(folder)


def _clean_incoming(settings: Settings) -> None:
    """Drop what dead SCP processes of this host were receiving: never acknowledged."""
    receive_folders.remove_dead(settings.incoming_dir)


def serve(settings: Settings) -> int:
    """Supervise VNA_DICOM_PROCESSES SCP processes; restart any that dies; stop on a signal.
    Refuses to start (1) while another process listens on the port: with SO_REUSEPORT it
    would otherwise answer next to it."""
    try:
        ports = listening_ports(settings)  # a TLS port without certificate fails here
    except (tls.TLSNotConfigured, OSError, ssl.SSLError) as exc:
        log.error("DICOM TLS is not usable: %s; not starting", exc)
        return 1
    if not ports:
        log.error("VNA_DICOM_PORT and VNA_DICOM_TLS_PORT are both 0; not starting")
        return 1
    for port, _ in ports:
        if not wait_for_free_port(settings.dicom_host, port, "DICOM",
                                  settings.port_wait_seconds):
            log.error("DICOM port %s:%d is in use by another process; not starting",
                      settings.dicom_host, port)
            return 1
    _clean_incoming(settings)
    metrics_path = metrics.prepare(settings)
    if not settings.allowed_aets:
        log.warning("VNA_DICOM_ALLOWED_AETS is empty: any calling AE title may associate")
    ctx = multiprocessing.get_context("spawn")
    n = settings.scp_processes
    stopping = False

    def start_one() -> Any:
        ready = ctx.Event()
        proc = ctx.Process(target=run_server_process, args=(settings, ready, os.getpid()),
                           name="vna-scp", daemon=False)
        proc.start()
        return proc, ready

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    # Before any child starts: a signal during start-up must stop them too, not kill the
    # supervisor alone (the children would be orphans, one stuck signalling its start).
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    procs = [start_one() for _ in range(n)]
    deadline = time.monotonic() + 60
    for _proc, ready in procs:
        while not stopping and not ready.wait(0.2):
            if time.monotonic() > deadline:
                log.error("an SCP process did not start")
                break
    if not stopping:
        log.info("DICOM service %s listening on %s, ports %s (%d processes)",
                 settings.dicom_aet, settings.dicom_host,
                 ", ".join(f"{p}{' (TLS)' if c else ''}" for p, c in ports), n)
        metrics.serve(settings, metrics_path)
    while not stopping:
        time.sleep(0.2)
        for i, (proc, _ready) in enumerate(procs):
            if not proc.is_alive() and not stopping:
                log.error("SCP process %d exited with %s; restarting", proc.pid, proc.exitcode)
                procs[i] = start_one()
    for proc, _ in procs:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc, _ in procs:
        proc.join(max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
    return 0

