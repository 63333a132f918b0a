"""A lean acceptor for storage associations: C-STORE and C-ECHO on one blocking loop.

Most associations a modality opens do nothing but store. pynetdicom serves each in two
threads (the association's DIMSE loop and its DUL reactor) that hand every PDU through
queues and decode every command set with pydicom: measured with DCMTK storescu, about
3.5 ms of CPU per instance, more than archiving the instance costs. An association
whose requestor proposes only storage and verification contexts, and nothing else
(no role selection, user identity or extended negotiation), is served here instead, in
the thread that accepted the connection:

- pynetdicom still decodes the A-ASSOCIATE-RQ, negotiates its presentation contexts
  against the AE's supported contexts (`negotiate_as_acceptor`) and encodes the
  A-ASSOCIATE-AC, so both paths accept exactly the same contexts and transfer syntaxes;
- P-DATA-TF PDUs are read into one reused buffer; dataset fragments are written straight
  to the receive file and hashed on the way (`vna.dicom.part10.Part10Writer`); the command
  set is read field by field and responses are encoded directly (`vna.dicom.dimse`);
- the archive gets the file with its transfer syntax, hash, size and first bytes
  (`ReceivedFile`) and reads nothing back before it answers.

The file written is what pynetdicom writes (preamble, the file meta from the C-STORE-RQ
and the context's transfer syntax, `pynetdicom_compat.received_file_meta`, then the
dataset bytes as received), so what is
archived does not depend on the path. Everything else (Query/Retrieve, C-GET's role
selection, rejections of calling AE titles) goes to pynetdicom unchanged: see `accepts`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any, Protocol

from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor
from pynetdicom.sop_class import Verification

from services.dicom_scp.admission import timeval
from services.dicom_scp.audit import base_record
from services.dicom_scp.pynetdicom_compat import received_file_meta
from services.dicom_scp.tls import socket_identity
from storage.audit import AssociationAudit
from storage.index.tokens import AuditRecord
from vna.dicom.attributes import is_valid_uid
from vna.dicom.dimse import (
    A_ABORT_PDU,
    A_RELEASE_RP_PDU,
    A_RELEASE_RQ_PDU,
    ARCHIVE_UNAVAILABLE,
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    INVALID_AFFECTED_UIDS,
    KNOWN_PDU_TYPES,
    P_DATA_TF_PDU,
    REASON_NOT_SPECIFIED,
    SERVICE_PROVIDER,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    UNEXPECTED_PDU,
    UNRECOGNIZED_PDU,
    UNRECOGNIZED_PDU_PARAMETER,
    Command,
    ProtocolError,
    encode_response_command,
    parse_command,
    pdata_pdus,
)
from vna.dicom.part10 import FileMeta, Part10Writer, ReceivedFile

log = logging.getLogger("vna.scp")

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = str(Verification)

LARGEST_FAST_RQ = 64 << 10  # a larger request (hundreds of contexts) goes to pynetdicom
LARGEST_PDU = 64 << 20  # a peer that sends more than this in one PDU is aborted


class PeerGone(Exception):
    """The connection closed while a PDU was expected."""


def decode_associate_rq(pdu: bytes) -> A_ASSOCIATE | None:
    """The request as pynetdicom's primitive, or None if pynetdicom had better see it."""
    try:
        rq = A_ASSOCIATE_RQ()
        rq.decode(pdu)
        return rq.to_primitive()
    except Exception:  # malformed: pynetdicom aborts it in its own way
        return None


_PLAIN_USER_ITEMS = (MaximumLengthNotification, ImplementationClassUIDNotification,
                     ImplementationVersionNameNotification)


def accepts(rq: A_ASSOCIATE, storage_syntaxes: frozenset[str], ae: AE) -> bool:
    """Whether this path serves the request: storage and verification contexts only,
    no negotiation items beyond the plain ones, and nothing `ae` would reject (pynetdicom
    rejects, and logs, what it does not allow)."""
    contexts = rq.presentation_context_definition_list
    if not contexts or str(rq.application_context_name) != APPLICATION_CONTEXT:
        return False
    if any(str(cx.abstract_syntax) not in storage_syntaxes
           and str(cx.abstract_syntax) != VERIFICATION for cx in contexts):
        return False
    if not all(isinstance(item, _PLAIN_USER_ITEMS) for item in rq.user_information):
        return False
    allowed = [a.strip() for a in ae.require_calling_aet]
    if allowed and str(rq.calling_ae_title).strip() not in allowed:
        return False
    return not ae.require_called_aet or \
        str(rq.called_ae_title).strip() == str(ae.ae_title).strip()


class PDUReader:
    """PDUs from a socket through one reused buffer: a recv takes whatever has arrived (often
    the next PDU too), and each PDU's body is a view of the buffer, valid until `next`."""

    def __init__(self, sock: socket.socket, capacity: int) -> None:
        self.sock = sock
        self.buf = bytearray(capacity)
        self.start = self.end = 0  # the bytes received and not handed out yet

    def next(self) -> tuple[int, memoryview]:
        """The next PDU's type and body."""
        if self.start == self.end:
            self.start = self.end = 0
        self._have(6)
        s = self.start
        pdu_type, length = self.buf[s], int.from_bytes(self.buf[s + 2:s + 6], "big")
        if length > LARGEST_PDU:
            raise ProtocolError(f"PDU of {length} bytes")
        self._have(6 + length)
        s = self.start
        self.start = s + 6 + length
        return pdu_type, memoryview(self.buf)[s + 6:s + 6 + length]

    def _have(self, n: int) -> None:
        """Receive until `n` bytes from `start` are in the buffer."""
        if self.start + n > len(self.buf):  # make room: what is pending goes to the front
            pending = self.buf[self.start:self.end]
            if n > len(self.buf):
                self.buf = bytearray(n + (64 << 10))
            self.buf[:len(pending)] = pending
            self.start, self.end = 0, len(pending)
        while self.end - self.start < n:
            got = self.sock.recv_into(memoryview(self.buf)[self.end:])
            if not got:
                raise PeerGone()
            self.end += got


class IncomingFile:
    """One incoming C-STORE dataset, written as a Part 10 file and hashed while it arrives.

    Its folder is the SCP process's own (see `server.configure_process`), so a counter
    names the files. With a `refusal` (a request that cannot be archived, or a file that
    cannot be written) the fragments are only read, to be answered with that status.
    """

    _counter = itertools.count()

    def __init__(self, directory: str, meta: FileMeta,
                 refusal: tuple[int, str] | None = None) -> None:
        self.path = f"{directory}/in-{next(self._counter)}.dcm"
        self.refusal = refusal
        self.error: OSError | None = None  # why the file could not be written
        self._file: Part10Writer | None = None
        if refusal is not None:
            return
        try:
            try:
                self._file = Part10Writer(self.path, meta)
            except FileNotFoundError:  # the folder was removed under us: make it again
                os.makedirs(directory, exist_ok=True)
                self._file = Part10Writer(self.path, meta)
        except OSError as exc:  # e.g. no inodes left
            self._cannot_write(exc)

    def _cannot_write(self, exc: OSError) -> None:
        self.error = exc
        self.refusal = (STATUS_OUT_OF_RESOURCES, ARCHIVE_UNAVAILABLE)

    def write(self, fragment: memoryview) -> None:
        if self.refusal is not None or self._file is None:
            return  # read to be answered; nothing kept
        try:
            self._file.write(fragment)
        except OSError as exc:  # e.g. disk full
            self._cannot_write(exc)

    def finish(self) -> ReceivedFile:
        """The file, complete (only without refusal)."""
        assert self._file is not None
        return self._file.finish()

    def discard(self) -> None:
        if self._file is not None:
            self._file.discard()
        else:  # none, if it was refused before being made
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class StorageService(Protocol):
    """What the loop serves through: `DicomService` in the SCP."""

    def store(self, received: ReceivedFile, calling_aet: str, sop_instance_uid: str,
              audit: AssociationAudit | None = None) -> tuple[int, str | None]:
        """Archive a received instance: the C-STORE status and error comment."""

    def association_accepted(self, base: AuditRecord) -> AssociationAudit | None:
        """The association's audit (written when it ends)."""

    def association_ended(self, audit: AssociationAudit | None, outcome: str) -> None: ...


class StorageAssociation:
    """One accepted storage association, served until release, abort or disconnect."""

    def __init__(self, sock: socket.socket, rq: A_ASSOCIATE, *, contexts: list[PresentationContext],
                 service: StorageService, incoming: Path, max_pdu: int, implementation_uid: str,
                 implementation_version: str, timeout: float) -> None:
        self.sock = sock
        self.rq = rq
        self.service = service
        self.incoming = incoming
        self.max_pdu = max_pdu
        self.calling_aet = str(rq.calling_ae_title).strip()
        self.timeout = timeout
        self.peer_max_pdu = next((int(i.maximum_length_received or 0) for i in rq.user_information
                                  if isinstance(i, MaximumLengthNotification)), 0)
        result, _roles = negotiate_as_acceptor(rq.presentation_context_definition_list,
                                               contexts, {})
        self.results = result
        self.accepted = {int(cx.context_id): cx for cx in result  # type: ignore[arg-type]
                         if cx.result == 0x00}
        self._implementation = (implementation_uid, implementation_version)
        self._command = bytearray()
        self._command_cx: int | None = None
        self._receiving: IncomingFile | None = None
        self._pending: tuple[Command, int] | None = None  # a C-STORE-RQ whose dataset comes
        self.audit: AssociationAudit | None = None
        self._released = False

    # -- association setup and release --------------------------------------------------

    def accept(self) -> None:
        ac = A_ASSOCIATE()
        ac.application_context_name = self.rq.application_context_name
        ac.calling_ae_title = self.rq.calling_ae_title
        ac.called_ae_title = self.rq.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = self.results
        max_length = MaximumLengthNotification()
        # what this loop takes (LARGEST_PDU) even when the AE announces "unlimited" (0)
        max_length.maximum_length_received = min(self.max_pdu or LARGEST_PDU, LARGEST_PDU)
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = self._implementation[0]
        impl_version = ImplementationVersionNameNotification()
        impl_version.implementation_version_name = self._implementation[1]
        ac.user_information = [max_length, impl_uid, impl_version]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        self.sock.sendall(pdu.encode())

    def _abort(self, reason: int) -> None:
        pdu = A_ABORT_RQ()
        pdu.source, pdu.reason_diagnostic = SERVICE_PROVIDER, reason
        with contextlib.suppress(OSError):
            self.sock.sendall(pdu.encode())

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Accept, then serve PDUs until the association ends; always closes the socket."""
        # Blocking, with the timeout in the kernel: a Python-level timeout would cost a
        # poll() before every recv and send.
        self.sock.settimeout(None)
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            self.sock.setsockopt(socket.SOL_SOCKET, option, timeval(self.timeout))
        try:
            self.accept()
            self._serve()
        except ProtocolError as exc:
            log.warning("association from %s aborted: %s", self.calling_aet, exc)
            self._abort(exc.reason)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            # SO_RCVTIMEO/SO_SNDTIMEO expired (under TLS, OpenSSL reports it as "want")
            log.warning("association from %s aborted: no PDU for %.0f s", self.calling_aet,
                        self.timeout)
            self._abort(REASON_NOT_SPECIFIED)
        except (PeerGone, OSError):
            pass  # the requestor went away: nothing it was not answered for is kept
        finally:
            if self._receiving is not None:
                self._receiving.discard()
            with contextlib.suppress(OSError):
                self.sock.close()
            self.service.association_ended(self.audit,
                                           "success" if self._released else "aborted")

    def _serve(self) -> None:
        pdus = PDUReader(self.sock, max(self.max_pdu, 16 << 10) + (64 << 10))
        while True:
            pdu_type, body = pdus.next()
            if pdu_type == P_DATA_TF_PDU:
                self._p_data(body)
            elif pdu_type == A_RELEASE_RQ_PDU:
                if self._receiving is not None or self._command:
                    raise ProtocolError("release requested in the middle of a message",
                                        UNEXPECTED_PDU)
                self.sock.sendall(struct.pack(">BxI4x", A_RELEASE_RP_PDU, 4))
                self._released = True
                return
            elif pdu_type == A_ABORT_PDU:
                return
            elif pdu_type in KNOWN_PDU_TYPES:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02x}", UNEXPECTED_PDU)
            else:
                raise ProtocolError(f"unknown PDU type 0x{pdu_type:02x}", UNRECOGNIZED_PDU)

    def _p_data(self, body: memoryview) -> None:
        pos, end = 0, len(body)
        while pos < end:
            if pos + 6 > end:
                raise ProtocolError("truncated presentation data value")
            item_length = int.from_bytes(body[pos:pos + 4], "big")
            context_id, control = body[pos + 4], body[pos + 5]
            if item_length < 2 or pos + 4 + item_length > end:
                raise ProtocolError("presentation data value length out of range")
            fragment = body[pos + 6:pos + 4 + item_length]
            pos += 4 + item_length
            if context_id not in self.accepted:
                raise ProtocolError(f"presentation context {context_id} was not accepted")
            if control & 1:
                self._command_fragment(context_id, fragment, last=bool(control & 2))
            else:
                self._dataset_fragment(context_id, fragment, last=bool(control & 2))

    def _command_fragment(self, context_id: int, fragment: memoryview, *, last: bool) -> None:
        if self._pending is not None or (self._command_cx not in (None, context_id)):
            raise ProtocolError("command fragment where a dataset was expected")
        self._command_cx = context_id
        self._command += fragment
        if last:
            command = parse_command(bytes(self._command))
            self._command.clear()
            self._command_cx = None
            self._request(context_id, command)

    def _request(self, context_id: int, command: Command) -> None:
        cx = self.accepted[context_id]
        if command.command_field == C_ECHO_RQ and not command.has_dataset:
            self._respond(context_id, C_ECHO_RSP, command.message_id, STATUS_SUCCESS,
                          sop_class_uid=VERIFICATION)
        elif (command.command_field == C_STORE_RQ and command.has_dataset
              and str(cx.abstract_syntax) != VERIFICATION):
            self._pending = (command, context_id)
            meta = received_file_meta(command.sop_class_uid, command.sop_instance_uid,
                                      str(cx.transfer_syntax[0]))
            refusal = None
            if not (is_valid_uid(meta.sop_class_uid) and is_valid_uid(meta.sop_instance_uid)):
                refusal = (STATUS_CANNOT_UNDERSTAND, INVALID_AFFECTED_UIDS)
            self._receiving = IncomingFile(str(self.incoming), meta, refusal)
        else:
            raise ProtocolError(f"unsupported DIMSE command 0x{command.command_field:04x} "
                                "on a storage association", UNRECOGNIZED_PDU_PARAMETER)

    def _dataset_fragment(self, context_id: int, fragment: memoryview, *, last: bool) -> None:
        if self._pending is None or self._receiving is None or self._pending[1] != context_id:
            raise ProtocolError("dataset fragment without its C-STORE-RQ")
        self._receiving.write(fragment)
        if last:
            command, _ = self._pending
            receiving, self._receiving, self._pending = self._receiving, None, None
            self._stored(context_id, command, receiving)

    def _stored(self, context_id: int, command: Command, receiving: IncomingFile) -> None:
        status: int
        comment: str | None
        if receiving.refusal is not None:
            status, comment = receiving.refusal
            if receiving.error is not None:
                log.error("C-STORE from %s: could not write the received file: %s",
                          self.calling_aet, receiving.error)
            else:
                log.warning("C-STORE from %s refused: %s", self.calling_aet, comment)
            receiving.discard()
        else:
            status, comment = self.service.store(receiving.finish(), self.calling_aet,
                                                 command.sop_instance_uid, self.audit)
        self._respond(context_id, C_STORE_RSP, command.message_id, status,
                      sop_class_uid=_uid_or_none(command.sop_class_uid),
                      sop_instance_uid=_uid_or_none(command.sop_instance_uid),
                      error_comment=comment)

    def _respond(self, context_id: int, command_field: int, message_id: int, status: int,
                 **fields: Any) -> None:
        encoded = encode_response_command(command_field, message_id, status, **fields)
        self.sock.sendall(pdata_pdus(context_id, True, encoded, self.peer_max_pdu))


def _peer_address(sock: socket.socket) -> str | None:
    try:
        return str(sock.getpeername()[0])
    except (OSError, IndexError):
        return None


def _uid_or_none(uid: str) -> str | None:
    return uid if is_valid_uid(uid) else None  # never echo what cannot be encoded


class StorageAcceptor:
    """Takes the connections whose association this module serves (`serve`); admission
    (limits, ARTIM, TLS) happened before (`admission.py`)."""

    def __init__(self, ae: AE, contexts: list[PresentationContext], service: StorageService,
                 incoming: Path) -> None:
        self.ae = ae
        self.contexts = contexts
        self.service = service
        self.incoming = incoming
        self.storage_syntaxes = frozenset(
            str(cx.abstract_syntax) for cx in AllStoragePresentationContexts) & frozenset(
            str(cx.abstract_syntax) for cx in contexts)

    def serve(self, sock: socket.socket, pdu: bytes, *, consumed: bool) -> bool:
        """Serve the association requested by `pdu` on `sock` to its end, or return False
        at once for pynetdicom to serve it. `consumed`: the request was read already (TLS)
        rather than peeked at (plain TCP)."""
        rq = decode_associate_rq(pdu) if len(pdu) <= LARGEST_FAST_RQ else None
        if rq is None or not accepts(rq, self.storage_syntaxes, self.ae):
            log.debug("association request left to pynetdicom")
            return False
        if not consumed:
            sock.recv(len(pdu), socket.MSG_WAITALL)  # now ours
        who = base_record(str(rq.calling_ae_title).strip(), _peer_address(sock),
                          socket_identity(sock))
        assoc = StorageAssociation(
            sock, rq, contexts=self.contexts, service=self.service,
            incoming=self.incoming, max_pdu=int(self.ae.maximum_pdu_size),
            implementation_uid=str(self.ae.implementation_class_uid),
            implementation_version=str(self.ae.implementation_version_name or ""),
            timeout=float(self.ae.network_timeout or 120))
        assoc.audit = self.service.association_accepted(who)
        assoc.run()
        return True
