"""Fuzz harnesses: each takes arbitrary bytes and feeds them to one parser of hostile input
the way the archive does. What the parser documents as its refusal (ProtocolError,
MalformedBody, Hl7Error, InvalidInstance, StowError...) is caught here; anything else, an
assertion about what must stay true (no receive file left behind), or a hang is a crash.

Run under atheris by `tests/fuzz/run.py`; the crashing inputs found are kept in
`tests/fuzz/corpus/<harness>/` and replayed by `tests/test_fuzz.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

HARNESSES: dict[str, Callable[[bytes], None]] = {}
_SCRATCH = Path(tempfile.mkdtemp(prefix="vna-fuzz-"))


def harness(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
    HARNESSES[fn.__name__] = fn
    return fn


def _split(data: bytes) -> tuple[bytes, bytes]:
    """Two chunks, cut where the first byte says (data arrives in pieces)."""
    if not data:
        return b"", b""
    cut = data[0] % (len(data) + 1)
    return data[1:cut + 1], data[cut + 1:]


# -- the raw header scan (vna/dicom/part10.py) ---------------------------------------------------

@harness
def part10(data: bytes) -> None:
    from vna.dicom.attributes import HEADER_ELEMENTS, InvalidInstance, header_from_elements
    from vna.dicom.part10 import lacks_preamble, parse_file_meta

    parse_file_meta(data)
    lacks_preamble(data[:132])
    flags, body = (data[0], data[1:]) if data else (0, b"")
    implicit, little = bool(flags & 1), not flags & 2
    elements = HEADER_ELEMENTS.read(body, implicit_vr=implicit, little_endian=little,
                                    complete=bool(flags & 4))
    if elements is not None:
        with contextlib.suppress(InvalidInstance):
            header_from_elements(elements, implicit_vr=implicit, little_endian=little)


# -- the PDU reader and the DIMSE command parser (storage_association, vna/dicom/dimse) ----------

def _socketpair_with(data: bytes) -> socket.socket:
    """The reading end of a connection whose peer sent `data` and closed."""
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(len(data) * 2, 1 << 16))
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, max(len(data) * 2, 1 << 16))
    theirs.sendall(data)
    theirs.close()
    return ours


@harness
def pdu(data: bytes) -> None:
    from services.dicom_scp.storage_association import PDUReader, PeerGone
    from vna.dicom.dimse import P_DATA_TF_PDU, ProtocolError, parse_command

    sock = _socketpair_with(data)
    reader = PDUReader(sock, 256)
    try:
        for _ in range(10_000):
            pdu_type, body = reader.next()
            if pdu_type == P_DATA_TF_PDU and len(body) > 6:
                with contextlib.suppress(ProtocolError):
                    parse_command(bytes(body[6:]))
    except (PeerGone, ProtocolError):
        pass
    finally:
        sock.close()


class _Service:
    """What the storage loop archives through: reads the header as the archive does."""

    audit: Any = None

    def store(self, received: Any, calling_aet: str, sop_instance_uid: str,
              audit: Any = None) -> tuple[int, str | None]:
        from storage.archive import prepare_received
        from vna.dicom.attributes import InvalidInstance

        try:
            prepare_received(received)
            return 0, None
        except InvalidInstance as exc:
            return 0xA900, str(exc)
        finally:
            os.unlink(received.path)

    def association_accepted(self, base: Any) -> None:
        return None

    def association_ended(self, audit: Any, outcome: str) -> None:
        return None


_ASSOC: dict[str, Any] = {}


def _storage_request() -> tuple[Any, list[Any]]:
    """An A-ASSOCIATE-RQ proposing CT storage and verification, and the AE's contexts."""
    if not _ASSOC:
        from pynetdicom import AE, AllStoragePresentationContexts
        from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
        from pynetdicom.presentation import PresentationContext

        ae = AE("VNA")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        ae.add_supported_context("1.2.840.10008.1.1")
        rq = A_ASSOCIATE()
        rq.application_context_name = "1.2.840.10008.3.1.1.1"
        rq.calling_ae_title, rq.called_ae_title = "FUZZ", "VNA"
        contexts = []
        for i, uid in ((1, "1.2.840.10008.5.1.4.1.1.2"), (3, "1.2.840.10008.1.1")):
            cx = PresentationContext()
            cx.context_id, cx.abstract_syntax = i, uid
            cx.transfer_syntax = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
            contexts.append(cx)
        rq.presentation_context_definition_list = contexts
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = 16384
        rq.user_information = [max_length]
        _ASSOC.update(rq=rq, contexts=ae.supported_contexts)
    return _ASSOC["rq"], _ASSOC["contexts"]


@harness
def storage_loop(data: bytes) -> None:
    """The bytes a peer sends after the association is accepted."""
    from services.dicom_scp.storage_association import StorageAssociation

    rq, contexts = _storage_request()
    incoming = _SCRATCH / "incoming"
    incoming.mkdir(exist_ok=True)
    sock = _socketpair_with(data)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    assoc = StorageAssociation(sock, rq, contexts=contexts, service=_Service(),  # type: ignore[arg-type]
                               incoming=incoming, max_pdu=16384,
                               implementation_uid="1.2.3", implementation_version="FUZZ",
                               timeout=5.0)
    assoc.run()  # never raises: every ending is handled
    left = os.listdir(incoming)
    assert not left, f"receive files left behind: {left}"


# -- the multipart parser (services/multipart.py) ------------------------------------------------

@harness
def multipart(data: bytes) -> None:
    from services.multipart import MultipartError, MultipartReader, boundary_of

    boundary_of(data[:80].decode("latin-1"), "multipart/related")
    first, second = _split(data)
    try:
        reader = MultipartReader(b"XyZ-boundary")
        for chunk in (first, second):
            for _event in reader.feed(chunk):
                pass
    except MultipartError:
        pass


# -- the HL7 v2 parser (vna/hl7.py) ---------------------------------------------------------------

@harness
def hl7(data: bytes) -> None:
    from vna import hl7 as h
    from vna.orders import InvalidOrder

    text = data.decode("utf-8", "replace")
    try:
        message = h.parse(text)
    except h.Hl7Error:
        return
    opened = h.open_message(message, "Europe/Stockholm")
    with contextlib.suppress(h.Hl7Error, InvalidOrder):
        opened.read()
    h.ack(message, "AA")


# -- the STOW-RS part reader (services/xds_api/dicomweb/stow.py) ----------------------------------

@harness
def stow(data: bytes) -> None:
    from services.xds_api.dicomweb.stow import StowError, StowReceiver
    from storage.archive import prepare_received
    from vna.dicom.attributes import InvalidInstance
    from vna.dicom.stow import FailedInstance, StoredInstance

    folder = _SCRATCH / "stow"
    folder.mkdir(exist_ok=True)

    def archive_part(received: Any) -> Any:
        try:
            h = prepare_received(received).header
            return StoredInstance(h.sop_class_uid, h.sop_instance_uid, h.study_instance_uid,
                                  h.series_instance_uid)
        except InvalidInstance as exc:
            return FailedInstance(0xC000, str(exc))
        finally:
            os.unlink(received.path)

    async def body() -> AsyncIterator[bytes]:
        for chunk in _split(data):
            yield chunk

    receiver = StowReceiver(folder, archive_part, max_bytes=1 << 20, max_parts=20)
    with contextlib.suppress(StowError):
        asyncio.run(receiver.receive(body(), b"XyZ-boundary"))
    left = os.listdir(folder)
    assert not left, f"receive files left behind: {left}"
