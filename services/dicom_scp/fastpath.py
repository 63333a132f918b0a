"""A lean C-STORE receive path for pynetdicom 3.0.x (installed once per SCP process).

Measured with DCMTK storescu on 64x64 images, a bare pynetdicom 3.0.4 SCP spends most of
its time per message not in I/O but in (1) polling loops that sleep 1 ms between looks at
their queues, (2) building and encoding pydicom datasets for the file meta of every
received instance and for every C-STORE-RSP, and (3) validating those values. This
module changes exactly these, without touching the protocol logic:

- the association and DUL reactors wait on their queue or socket instead of sleeping a
  fixed millisecond, so a message is handled as soon as it is complete, and an idle DUL
  sleeps until its socket has data or the association gives it a PDU to send;
- the file meta pynetdicom writes in front of a received dataset and the C-STORE-RSP
  command set are encoded directly (their layout is fixed: PS3.10 7.1, PS3.7 9.3.1.2);
  `tests/test_fastpath.py` checks they are byte-identical to pynetdicom's own;
- pydicom's value validation is off in SCP processes: the archive stores received bytes
  as they are and never re-encodes them.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import select
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import IO, Any, NamedTuple

import pydicom.config
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom import association as _association
from pynetdicom import dimse as _dimse
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import dul as _dul
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.pdu_primitives import P_DATA

# -- file meta -----------------------------------------------------------------------------


class FileMeta(NamedTuple):
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    implementation_uid: str = PYNETDICOM_IMPLEMENTATION_UID
    implementation_version: str = PYNETDICOM_IMPLEMENTATION_VERSION


def _pad(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def _explicit(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2s2xI", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def encode_file_meta(meta: FileMeta) -> bytes:
    """Group 0002 as pynetdicom's create_file_meta + pydicom's write_file_meta_info write it."""
    body = b"".join((
        _explicit(2, 0x0001, b"OB", b"\x00\x01"),
        _explicit(2, 0x0002, b"UI", _pad(str(meta.sop_class_uid), b"\x00")),
        _explicit(2, 0x0003, b"UI", _pad(str(meta.sop_instance_uid), b"\x00")),
        _explicit(2, 0x0010, b"UI", _pad(str(meta.transfer_syntax), b"\x00")),
        _explicit(2, 0x0012, b"UI", _pad(str(meta.implementation_uid), b"\x00")),
        _explicit(2, 0x0013, b"SH", _pad(str(meta.implementation_version), b" ")),
    ))
    return _explicit(2, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def _create_file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                      **_: Any) -> FileMeta:
    return FileMeta(sop_class_uid, sop_instance_uid, transfer_syntax)


def _write_file_meta_info(fp: IO[bytes], meta: Any, enforce_standard: bool = True) -> None:
    if isinstance(meta, FileMeta):
        fp.write(encode_file_meta(meta))
    else:  # not ours: leave it to pydicom
        from pydicom.filewriter import write_file_meta_info

        write_file_meta_info(fp, meta, enforce_standard)  # type: ignore[arg-type]


class _ReceiveFile:
    """What pynetdicom uses of NamedTemporaryFile(delete=False), without its random names.

    pynetdicom writes dataset fragments from its DUL reactor, where an exception ends the
    association unanswered. So a file that cannot be made or written (a full disk) only
    remembers why, reads on, and the handler answers 0xA700 (`receive_failed`)."""

    _counter = itertools.count()

    def __init__(self, mode: str = "wb", suffix: str = "", delete: bool = False, **_: Any) -> None:
        directory = tempfile.gettempdir()
        self.name = os.path.join(directory, f"rx-{os.getpid()}-{next(self._counter)}{suffix}")
        self._file: IO[bytes] | None = None
        try:
            self._file = open(self.name, "xb")  # noqa: SIM115 - closed by pynetdicom
        except OSError as exc:
            self._failed(exc)

    @property
    def file(self) -> _ReceiveFile:
        return self  # pynetdicom calls `.file.flush()` after each fragment

    def _failed(self, exc: OSError) -> None:
        _FAILED_RECEIVES[self.name] = exc
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            os.unlink(self.name)

    def _guarded(self, op: Any, *args: Any) -> None:
        try:
            op(*args)
        except OSError as exc:
            self._failed(exc)

    def write(self, data: bytes) -> int:
        if self._file is not None:
            self._guarded(self._file.write, data)
        return len(data)

    def flush(self) -> None:
        if self._file is not None:
            self._guarded(self._file.flush)

    def close(self) -> None:
        if self._file is not None:  # close flushes what is buffered: may fail like a write
            self._guarded(self._file.close)


_FAILED_RECEIVES: dict[str, OSError] = {}


def receive_failed(path: str | os.PathLike[str]) -> OSError | None:
    """Why the receive file at `path` could not be written, if it could not (asked once,
    by the C-STORE handler; the file is gone already)."""
    return _FAILED_RECEIVES.pop(os.fspath(path), None)


# -- C-STORE-RSP -----------------------------------------------------------------------------


def _implicit(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, elem, len(value)) + value


_COMMAND_FIELD = {"C_STORE": 0x8001, "C_FIND": 0x8020}
NO_DATASET = 0x0101


def encode_response_command(command_field: int, message_id: int, status: int, *,
                            sop_class_uid: str | None = None,
                            sop_instance_uid: str | None = None,
                            error_comment: str | None = None,
                            has_dataset: bool = False) -> bytes:
    """The command set of a DIMSE response with the common fields (PS3.7 9.3, 9.1.5)."""
    parts = []
    if sop_class_uid:
        parts.append(_implicit(0x0002, _pad(sop_class_uid, b"\x00")))
    parts.append(_implicit(0x0100, struct.pack("<H", command_field)))
    parts.append(_implicit(0x0120, struct.pack("<H", message_id)))
    parts.append(_implicit(0x0800, struct.pack("<H", 0x0001 if has_dataset else NO_DATASET)))
    parts.append(_implicit(0x0900, struct.pack("<H", status)))
    if error_comment:
        parts.append(_implicit(0x0902, _pad(error_comment, b" ")))
    if sop_instance_uid:
        parts.append(_implicit(0x1000, _pad(sop_instance_uid, b"\x00")))
    body = b"".join(parts)
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


def encode_response(rsp: Any) -> bytes | None:
    """The command set of a C-STORE-RSP or C-FIND-RSP, or None when it holds more than the
    common fields (then pynetdicom's own encoder is used)."""
    if getattr(rsp, "OffendingElement", None) is not None:
        return None
    return encode_response_command(
        _COMMAND_FIELD[type(rsp).__name__], int(rsp.MessageIDBeingRespondedTo),
        int(rsp.Status),
        sop_class_uid=str(rsp.AffectedSOPClassUID) if rsp.AffectedSOPClassUID else None,
        sop_instance_uid=(str(rsp.AffectedSOPInstanceUID)
                          if getattr(rsp, "AffectedSOPInstanceUID", None) else None),
        error_comment=str(rsp.ErrorComment) if rsp.ErrorComment else None,
        has_dataset=bool(getattr(rsp, "Identifier", None)))


class FastResponse:
    """Stands in for pynetdicom's C-STORE-RSP / C-FIND-RSP message for plain responses."""

    original: Any = None

    def __init__(self) -> None:
        self.context_id: int | None = None
        self._encoded: bytes | None = None
        self._data: bytes = b""
        self._primitive: Any = None

    def primitive_to_message(self, primitive: Any) -> None:
        self._primitive = primitive
        self._encoded = encode_response(primitive)
        identifier = getattr(primitive, "Identifier", None)
        self._data = identifier.getvalue() if identifier else b""

    def encode_msg(self, context_id: int, max_pdu_length: int) -> Iterator[P_DATA]:
        encoded = self._encoded
        if encoded is None or (max_pdu_length and len(encoded) + 6 > max_pdu_length):
            fallback = self.original()
            fallback.primitive_to_message(self._primitive)
            yield from fallback.encode_msg(context_id, max_pdu_length)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
        yield pdata
        step = (max_pdu_length - 6) if max_pdu_length else max(len(self._data), 1)
        for start in range(0, len(self._data), step):
            last = start + step >= len(self._data)
            pdata = P_DATA()
            pdata.presentation_data_value_list.append(
                (context_id, (b"\x02" if last else b"\x00") + self._data[start:start + step]))
            yield pdata


class FastStoreResponse(FastResponse):
    original = _dimse_messages.C_STORE_RSP


class FastFindResponse(FastResponse):
    original = _dimse_messages.C_FIND_RSP

# -- reactors --------------------------------------------------------------------------------


class _TimeShim:
    """The `time` module as pynetdicom's reactors see it, with an event-driven sleep."""

    def __init__(self, sleep: Any) -> None:
        self.sleep = sleep

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_real_sleep = time.sleep


def _association_sleep(seconds: float) -> None:
    """The acceptor reactor sleeps 1 ms per loop; wait for the next DIMSE message instead."""
    assoc = threading.current_thread()
    if seconds == 0.001 and isinstance(assoc, _association.Association):
        q = assoc.dimse.msg_queue
        with q.not_empty:
            if not q._qsize():  # not qsize(): we hold the queue mutex already
                q.not_empty.wait(0.005)
            if q._qsize():
                # We only looked; Queue.put notifies a single waiter, and that may have been
                # us while a send_c_*() in another thread waits in get() for this message.
                q.not_empty.notify()
        return
    _real_sleep(seconds)


_DUL_WAIT = 0.05  # longest idle wait of a DUL; its timers count seconds


def _dul_sleep(seconds: float) -> None:
    """The DUL sleeps 1 ms when idle: wait for incoming data or for a PDU to send instead
    (`_send_pdu` wakes it), so an idle DUL costs no CPU and a busy one no latency."""
    dul = threading.current_thread()
    if isinstance(dul, _dul.DULServiceProvider) and seconds <= 0.001:
        sock = getattr(dul.socket, "socket", None)
        wake = getattr(dul, "_vna_wake", None)
        if sock is not None and wake is not None:
            try:
                ready, _, _ = select.select([sock, wake[0]], [], [], _DUL_WAIT)
            except (OSError, ValueError):
                pass
            else:
                if wake[0] in ready:
                    with contextlib.suppress(OSError):
                        wake[0].recv(4096)
                return
    _real_sleep(seconds)


_original_run_reactor = _dul.DULServiceProvider.run_reactor
_original_send_pdu = _dul.DULServiceProvider.send_pdu


def _run_reactor(self: _dul.DULServiceProvider) -> None:
    """The DUL's loop, with a socket pair that `_send_pdu` uses to wake it up."""
    wake = socket.socketpair()
    for end in wake:
        end.setblocking(False)
    self._vna_wake = wake  # type: ignore[attr-defined]
    try:
        _original_run_reactor(self)
    finally:
        self._vna_wake = None  # type: ignore[attr-defined]
        for end in wake:
            end.close()


def _send_pdu(self: _dul.DULServiceProvider, primitive: Any) -> None:
    _original_send_pdu(self, primitive)
    wake = getattr(self, "_vna_wake", None)
    if wake is not None:
        with contextlib.suppress(OSError):  # full (already woken) or closed (finished)
            wake[1].send(b"\0")


_original_serve_request = _association.Association._serve_request


def _serve_request(self: _association.Association, msg: Any, context_id: int) -> None:
    """pynetdicom's reactor can take the response a `send_c_*()` in another thread waits
    for: it looks at the pause flag just before the sender clears the checkpoint, then
    reads the queue and drops the response as "unexpected", and the sender waits for its
    DIMSE timeout (pynetdicom issue #875). A fast peer hits that window; vna's storage
    path is one. So a response that arrives while a sender waits goes back to it."""
    if (not msg.is_valid_request and msg.is_valid_response
            and not self._reactor_checkpoint.is_set()):
        self.dimse.msg_queue.put((context_id, msg))
        return
    _original_serve_request(self, msg, context_id)


@functools.cache
def install_response_handback() -> None:
    """Fix the race above in this process: SCP processes (C-MOVE sub-operations) and
    any pynetdicom requestor talking to a fast SCP (the tests' client)."""
    _association.Association._serve_request = _serve_request  # type: ignore[method-assign]


@functools.cache
def install() -> None:
    """Install the lean receive path in this process (once)."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    _dimse_messages.create_file_meta = _create_file_meta  # type: ignore[assignment]
    _dimse_messages.write_file_meta_info = _write_file_meta_info  # type: ignore[assignment]
    _dimse_messages.NamedTemporaryFile = _ReceiveFile  # type: ignore[assignment]
    _dimse._RSP_TO_MESSAGE[C_STORE] = FastStoreResponse  # type: ignore[assignment]
    _dimse._RSP_TO_MESSAGE[C_FIND] = FastFindResponse  # type: ignore[assignment]
    _association.time = _TimeShim(_association_sleep)  # type: ignore[assignment]
    _dul.time = _TimeShim(_dul_sleep)  # type: ignore[assignment]
    _dul.DULServiceProvider.run_reactor = _run_reactor  # type: ignore[method-assign]
    _dul.DULServiceProvider.send_pdu = _send_pdu  # type: ignore[method-assign]
    install_response_handback()
