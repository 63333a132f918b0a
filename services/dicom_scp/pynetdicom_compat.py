"""Every change vna makes to pynetdicom's internals, in one place (pynetdicom 3.0.x).

vna serves associations through pynetdicom's public API (an AE, its contexts, event
handlers, `make_server`). Where pynetdicom 3.0 is slow or racy for an archive, vna
replaces attributes of its modules and classes: here and nowhere else. `install` (each SCP
process, once at start) and `install_requestor` (a process that only opens associations:
the tests' client, the benchmarks) first check the pynetdicom version and that every
attribute they replace exists and looks as it does in 3.0.4 (a function with the expected
parameters, the expected sleep in a reactor loop), and otherwise refuse with a
RuntimeError that names the patch point and the version: a pynetdicom upgrade fails at
start instead of silently losing a speed-up or a fix. `PATCHES` lists the patch points
below and `PRIVATE_READS` the private attributes vna reads (through the accessor named);
tests/test_pynetdicom_compat.py holds the same list.

Figures are for tiny 64x64 images sent by DCMTK storescu over one association, on the
2-core machine of benchmarks/RESULTS.md. Since storage associations are served by vna's
own loop (storage_association.py), the receive-path patches serve associations that
pynetdicom keeps: Query/Retrieve, C-GET's storage sub-operations, and storage proposed
together with other contexts.

**Receiving a C-STORE dataset** (with `_config.STORE_RECV_CHUNKED_DATASET` on)

- `pynetdicom._config.STORE_RECV_CHUNKED_DATASET` = True, `pynetdicom._config.LOG_HANDLER_LEVEL`
  = "none", `pynetdicom._config.STORE_SEND_CHUNKED_DATASET` = True. What: a received
  dataset goes to a file as it arrives (the handler gets its path and the archive renames
  it into place, nothing decoded); a dataset sent from a path is streamed from the file;
  pynetdicom's standard log handlers are off. Why: memory and per-message CPU. These are
  pynetdicom's documented settings; they are here so that one call configures pynetdicom.
  Remove: never (settings).
- `pynetdicom._config.LOG_REQUEST_IDENTIFIERS` = False,
  `pynetdicom._config.LOG_RESPONSE_IDENTIFIERS` = False. What: pynetdicom no longer
  formats every C-FIND request and response identifier for its debug log. Why: it formats
  them whatever the log level (`pretty_dataset`, 0.08 ms a response, and patient data in
  a debug log). Gain: ~10 % of the server's time per worklist or Q/R match. Remove: never
  (settings).
- `pynetdicom.dimse_messages.NamedTemporaryFile` -> `ReceiveFile`. What: the receive file
  is made in the process's receive folder (given to `install`), named by a counter; a file
  that cannot be made or written (a full disk) only remembers why (`receive_failed`), reads
  on, and the C-STORE handler answers 0xA700. Why: pynetdicom writes the fragments from
  its DUL reactor, where an OSError ends the association unanswered; and NamedTemporaryFile
  puts the file in the process-global temp folder. Gain: a full disk is a status, not a
  lost association (tests/test_disk_full.py). Remove when pynetdicom takes a receive folder
  and reports write errors to the C-STORE handler.
- `pynetdicom.dimse_messages.create_file_meta` -> `_create_file_meta` and
  `pynetdicom.dimse_messages.write_file_meta_info` -> `_write_file_meta_info`. What: the file
  meta written in front of a received dataset is encoded directly
  (`vna.dicom.part10.encode_file_meta`), byte-identical to what pynetdicom and pydicom
  write (tests/test_fastpath.py). Why: pynetdicom builds and validates a pydicom
  FileMetaDataset for every received instance. Gain: part of the lean receive path
  (together with the reactor and response patches below and the index write changes,
  110 -> 182 inst/s; RESULTS.md). Remove when pynetdicom writes the file meta without
  pydicom datasets.

**Sending responses**

- `pynetdicom.dimse._RSP_TO_MESSAGE[C_STORE]` -> `FastStoreResponse` and
  `pynetdicom.dimse._RSP_TO_MESSAGE[C_FIND]` -> `FastFindResponse`. What: a C-STORE-RSP or
  C-FIND-RSP with the common fields is encoded directly
  (`vna.dicom.dimse.encode_response_command`) and cut into PDVs by
  `vna.dicom.dimse.pdv_fragments`; others go to pynetdicom's own message class. Why:
  pynetdicom builds a pydicom Dataset per response and encodes it. Gain: part of the lean
  receive path above; byte-identical (tests/test_fastpath.py). Remove when pynetdicom
  encodes command sets without pydicom.

**The reactors** (pynetdicom polls its queues in loops that sleep 1 ms)

- `pynetdicom.association.time` -> a `time` whose sleep is `_association_sleep`. What:
  the acceptor's reactor loop (`Association._run_reactor`, `time.sleep(0.001)`) waits on
  the DIMSE message queue instead, so a message is handled as soon as it is complete.
  Other sleeps are real. `install` checks that the reactor still sleeps exactly
  `ASSOCIATION_REACTOR_SLEEP`: if that changes, the shim would no longer engage.
  Remove when pynetdicom's reactor waits on its queue.
- `pynetdicom.dul.time` -> a `time` whose sleep is `_dul_sleep`,
  `pynetdicom.dul.DULServiceProvider.run_reactor` -> `_run_reactor` and
  `pynetdicom.dul.DULServiceProvider.send_pdu` -> `_send_pdu`. What: an idle DUL
  (`time.sleep(self._run_loop_delay)`, 1 ms) waits on its socket and on a socket pair
  that `send_pdu` pokes, instead of polling. Gain: +20-30 % (141-159 vs 109-133 inst/s,
  three interleaved pairs), and an idle association costs ~0 CPU
  (tests/test_fastpath.py). `_run_reactor` also has the DUL's `to_user_queue` (A-RELEASE
  and A-ABORT indications) wake the association's reactor, which waits on the DIMSE queue
  (`_association_sleep`): otherwise an A-RELEASE-RQ is answered only when that 5 ms wait
  runs out (14.1 -> 11.9 ms for a release, as Orthanc). Remove when pynetdicom's DUL is
  event-driven.
- `pynetdicom.association.Association._serve_request` -> `_serve_request`. What: a
  response that the reactor reads while a `send_c_*()` in another thread waits for it goes
  back to the head of the queue that sender reads, instead of being dropped as unexpected
  (pynetdicom issue #875). Why: a fast peer hits that window; the sender then waits its
  whole DIMSE timeout (C-MOVE sub-operations hung). At the head, not the end: behind the
  C-FIND responses that came after it, a kept association's C-FIND ended a match short
  (43 of ~4,700 worklist queries under load; none since). Also installed by
  `install_requestor`. Remove when #875 is fixed.

**Retrieving**

- `pynetdicom.association.Association.send_c_store` -> `_send_c_store`. What: an
  `ArchivedInstance` (retrieve.py), which the C-GET/C-MOVE handlers yield, is sent from
  its stored file unchanged when the peer accepted its transfer syntax, else decoded for
  pynetdicom to convert. Why: pynetdicom 3.0's service classes take Dataset objects and
  encode them again, which changes some files and costs a decode per instance.
  Remove when the C-GET/C-MOVE handlers may yield a file path.

**Sockets**

- `pynetdicom.transport.AssociationSocket._create_socket` -> `_create_socket`. What:
  TCP_NODELAY on every socket pynetdicom opens as a requestor (C-MOVE sub-operations;
  the tests' client). Why: pynetdicom sets none, and Nagle's algorithm then holds back
  small PDUs: ~40 ms per DIMSE message. Also installed by `install_requestor`. Accepted
  sockets get it in server.py. Remove when pynetdicom sets TCP_NODELAY.

- `pynetdicom.transport.AssociationSocket.ready` -> `_ready`. What: a socket with bytes
  buffered above the kernel (`pending()`) is ready, as pynetdicom already has it for an
  `ssl.SSLSocket`: over TLS, admission.py reads the A-ASSOCIATE-RQ itself and hands
  pynetdicom a `ReplaySocket` that gives those bytes again. Remove when pynetdicom
  accepts a request already read (or asks any socket for `pending()`).

**TLS identity** (for the audit trail): `tls_identity(assoc)` is the subject of the
verified client certificate of a pynetdicom association (RFC 4514, e.g.
`CN=ct1.example,O=Radiology`), None over plain TCP or without VNA_DICOM_TLS_CA; it reads
`assoc.dul.socket.socket`. vna's storage loop reads it from its socket at admission.

**Private attributes read** (`PRIVATE_READS`, checked by `install`)

- `pynetdicom.dimse_messages.DIMSEMessage._data_set_file` through
  `partial_receive_file(assoc)`: the receive file of a C-STORE cut short, which pynetdicom
  leaves behind; the SCP removes it on release, abort and close. Remove when pynetdicom
  removes it.
- `pynetdicom.ae.ApplicationEntity._servers` through `register_server(ae, server)`: a
  server made by `make_server` (for vna's server class) must be listed there for
  `server.shutdown()`, which removes it. Remove when `make_server` lists it.
- `pynetdicom.transport.RequestHandler._create_association` deep-copies the server's
  supported contexts for every association it serves; `share_contexts(server)` makes that
  copy the list itself (`SharedContexts`). Why: vna's AE supports 177 contexts with 37
  transfer syntaxes each; the copy took ~17 ms of CPU between the A-ASSOCIATE-RQ and the
  A-ASSOCIATE-AC and left ~7,000 objects of garbage per association, which brought on full
  garbage collections of 45-60 ms in the middle of associations. Negotiation only reads
  the contexts (`negotiate_as_acceptor` builds new ones), and nothing changes them while
  the server runs. Gain: a C-FIND on a fresh association (DCMTK findscu, one process per
  query) 41 -> 19 ms; associate p99 68 -> 6.5 ms (benchmarks/find.py). Remove when
  pynetdicom stops copying them.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import re
import select
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pynetdicom
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config
from pynetdicom import association as _association
from pynetdicom import dimse as _dimse
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import dul as _dul
from pynetdicom import transport as _transport
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.pdu_primitives import P_DATA

from services.dicom_scp.retrieve import ArchivedInstance
from services.dicom_scp.tls import socket_identity
from vna.dicom import dimse
from vna.dicom.part10 import FileMeta, encode_file_meta

SUPPORTED_VERSIONS = "3.0."  # the versions these patches were written and checked for

# -- the receive file ------------------------------------------------------------------------


def received_file_meta(sop_class_uid: str, sop_instance_uid: str,
                       transfer_syntax: str) -> FileMeta:
    """The file meta pynetdicom writes in front of a dataset it receives; vna's storage
    loop writes the same, so that what is archived does not depend on the receive path."""
    return FileMeta(sop_class_uid, sop_instance_uid, transfer_syntax,
                    PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION)


def _create_file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                      implementation_uid: str = PYNETDICOM_IMPLEMENTATION_UID,
                      implementation_version: str = PYNETDICOM_IMPLEMENTATION_VERSION
                      ) -> FileMeta:
    return FileMeta(sop_class_uid, sop_instance_uid, transfer_syntax, implementation_uid,
                    implementation_version)


def _write_file_meta_info(fp: IO[bytes], meta: Any, enforce_standard: bool = True) -> None:
    if isinstance(meta, FileMeta):
        fp.write(encode_file_meta(meta))
    else:  # not ours: leave it to pydicom
        from pydicom.filewriter import write_file_meta_info

        write_file_meta_info(fp, meta, enforce_standard)  # type: ignore[arg-type]


class ReceiveFile:
    """What pynetdicom uses of NamedTemporaryFile(delete=False), in the receive folder.

    pynetdicom writes dataset fragments from its DUL reactor, where an exception ends the
    association unanswered. So a file that cannot be made or written (a full disk) only
    remembers why, reads on, and the handler answers 0xA700 (`receive_failed`)."""

    directory: str | None = None  # the process's receive folder: set by `install`
    _counter = itertools.count()

    def __init__(self, mode: str = "wb", suffix: str = "", delete: bool = False,
                 **_: Any) -> None:
        if self.directory is None:
            raise RuntimeError("pynetdicom_compat.install(receive_dir) was not called")
        self.name = os.path.join(self.directory,
                                 f"rx-{os.getpid()}-{next(self._counter)}{suffix}")
        self._file: IO[bytes] | None = None
        try:
            self._file = open(self.name, "xb")  # noqa: SIM115 - closed by pynetdicom
        except OSError as exc:
            self._failed(exc)

    @property
    def file(self) -> ReceiveFile:
        return self  # pynetdicom calls `.file.flush()` after each fragment

    def _failed(self, exc: OSError) -> None:
        _FAILED_RECEIVES[self.name] = exc
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            os.unlink(self.name)

    def _guarded(self, op: Callable[..., Any], *args: Any) -> None:
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

    def discard(self) -> None:
        """Remove the file of a C-STORE that will not complete."""
        with contextlib.suppress(Exception):  # its reactor may be writing it right now
            self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.name)


_FAILED_RECEIVES: dict[str, OSError] = {}


def receive_failed(path: str | os.PathLike[str]) -> OSError | None:
    """Why the receive file at `path` could not be written, if it could not (asked once,
    by the C-STORE handler; the file is gone already)."""
    return _FAILED_RECEIVES.pop(os.fspath(path), None)


def partial_receive_file(assoc: Any) -> ReceiveFile | None:
    """The receive file of the C-STORE whose dataset is arriving on `assoc`, if any:
    pynetdicom keeps it in the DIMSE message it is decoding (`_data_set_file`)."""
    message = getattr(assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    return partial if isinstance(partial, ReceiveFile) else None


def register_server(ae: AE, server: _transport.ThreadedAssociationServer) -> None:
    """List a server made by `ae.make_server` where `server.shutdown()` removes it."""
    ae._servers.append(server)


class SharedContexts(list[Any]):
    """A server's supported presentation contexts, shared by all its associations: a
    deep copy of it is the list itself (see `share_contexts`)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedContexts:
        return self


def share_contexts(server: _transport.ThreadedAssociationServer) -> None:
    """Have the associations `server` serves share its contexts instead of each deep-copying
    them (`RequestHandler._create_association`; see the module docstring)."""
    server.contexts = SharedContexts(server.contexts)


# -- responses -------------------------------------------------------------------------------

_RESPONSE_COMMAND_FIELD = {C_STORE: dimse.C_STORE_RSP, C_FIND: dimse.C_FIND_RSP}


def encode_response(rsp: Any) -> bytes | None:
    """The command set of a C-STORE-RSP or C-FIND-RSP primitive, or None when it holds more
    than the common fields (then pynetdicom's own encoder is used)."""
    if getattr(rsp, "OffendingElement", None) is not None:
        return None
    return dimse.encode_response_command(
        _RESPONSE_COMMAND_FIELD[type(rsp)], int(rsp.MessageIDBeingRespondedTo),
        int(rsp.Status),
        sop_class_uid=str(rsp.AffectedSOPClassUID) if rsp.AffectedSOPClassUID else None,
        sop_instance_uid=(str(rsp.AffectedSOPInstanceUID)
                          if getattr(rsp, "AffectedSOPInstanceUID", None) else None),
        error_comment=str(rsp.ErrorComment) if rsp.ErrorComment else None,
        has_dataset=bool(getattr(rsp, "Identifier", None)))


class FastResponse:
    """Stands in for pynetdicom's C-STORE-RSP / C-FIND-RSP message for plain responses."""

    original: Any = None  # pynetdicom's message class, for the responses that are not plain

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
        if self._encoded is None:
            fallback = self.original()
            fallback.primitive_to_message(self._primitive)
            yield from fallback.encode_msg(context_id, max_pdu_length)
            return
        for part, command in ((self._encoded, True), (self._data, False)):
            if not part:
                continue
            for control, fragment in dimse.pdv_fragments(part, max_pdu_length,
                                                          command=command):
                pdata = P_DATA()
                pdata.presentation_data_value_list.append(
                    (context_id, bytes((control,)) + fragment))
                yield pdata


class FastStoreResponse(FastResponse):
    original = getattr(_dimse_messages, "C_STORE_RSP", None)


class FastFindResponse(FastResponse):
    original = getattr(_dimse_messages, "C_FIND_RSP", None)


# -- reactors --------------------------------------------------------------------------------


class _TimeShim:
    """The `time` module as pynetdicom's reactors see it, with an event-driven sleep."""

    def __init__(self, sleep: Callable[[float], None]) -> None:
        self.sleep = sleep

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_real_sleep = time.sleep
ASSOCIATION_REACTOR_SLEEP = 0.001  # what Association._run_reactor sleeps per loop in 3.0


def _association_sleep(seconds: float) -> None:
    """The acceptor reactor sleeps 1 ms per loop; wait for the next DIMSE message instead.
    Only that sleep, in an association's own thread: a `send_c_*()` that waits in short
    sleeps for its response runs in a handler, i.e. in another association's thread."""
    assoc = threading.current_thread()
    if seconds == ASSOCIATION_REACTOR_SLEEP and isinstance(assoc, _association.Association):
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
DUL_LOOP_DELAY = 0.001  # DULServiceProvider._run_loop_delay in 3.0


def _dul_sleep(seconds: float) -> None:
    """The DUL sleeps 1 ms when idle: wait for incoming data or for a PDU to send instead
    (`_send_pdu` wakes it), so an idle DUL costs no CPU and a busy one no latency."""
    dul = threading.current_thread()
    if isinstance(dul, _dul.DULServiceProvider) and seconds <= DUL_LOOP_DELAY:
        sock = getattr(dul.socket, "socket", None)
        wake = getattr(dul, "_vna_wake", None)
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():  # TLS: decrypted bytes wait above the kernel
            return
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


def _run_reactor(self: _dul.DULServiceProvider) -> None:
    """The DUL's loop, with a socket pair that `_send_pdu` uses to wake it up, and its
    indications to the association waking the association's reactor."""
    wake = socket.socketpair()
    for end in wake:
        end.setblocking(False)
    self._vna_wake = wake  # type: ignore[attr-defined]
    _wake_association_on_indication(self)
    try:
        DUL_RUN_REACTOR.original(self)
    finally:
        self._vna_wake = None  # type: ignore[attr-defined]
        for end in wake:
            end.close()


def _wake_association_on_indication(dul: _dul.DULServiceProvider) -> None:
    """A-RELEASE and A-ABORT indications go to the DUL's `to_user_queue`, but the acceptor
    reactor waits on the DIMSE queue (`_association_sleep`): wake it for those too."""
    put = dul.to_user_queue.put

    def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        q = dul.assoc.dimse.msg_queue
        with q.not_empty:
            q.not_empty.notify_all()  # a get() woken for nothing waits again

    dul.to_user_queue.put = put_and_wake  # type: ignore[method-assign]


def _send_pdu(self: _dul.DULServiceProvider, primitive: Any) -> None:
    DUL_SEND_PDU.original(self, primitive)
    wake = getattr(self, "_vna_wake", None)
    if wake is not None:
        with contextlib.suppress(OSError):  # full (already woken) or closed (finished)
            wake[1].send(b"\0")


def _serve_request(self: _association.Association, msg: Any, context_id: int) -> None:
    """pynetdicom's reactor can take the response a `send_c_*()` in another thread waits
    for: it looks at the pause flag just before the sender clears the checkpoint, then
    reads the queue and drops the response as "unexpected", and the sender waits for its
    DIMSE timeout (pynetdicom issue #875). A fast peer hits that window; vna's storage
    path is one. So a response that arrives while a sender waits goes back to it, at the
    head of the queue: put at its end, behind the C-FIND responses that came after it, the
    sender would take the final one first and end its C-FIND a match short."""
    if (not msg.is_valid_request and msg.is_valid_response
            and not self._reactor_checkpoint.is_set()):
        queue = self.dimse.msg_queue
        with queue.mutex:  # queue.Queue has no put-at-the-front; what `put` does, at the head
            queue.queue.appendleft((context_id, msg))
            queue.unfinished_tasks += 1
            queue.not_empty.notify()
        return
    SERVE_REQUEST.original(self, msg, context_id)


# -- retrieve and sockets ------------------------------------------------------------------


def _send_c_store(self: _association.Association, dataset: Any, *args: Any,
                  **kwargs: Any) -> Any:
    """An ArchivedInstance goes out as stored (see retrieve.py); anything else as before."""
    if not isinstance(dataset, ArchivedInstance):
        return SEND_C_STORE.original(self, dataset, *args, **kwargs)
    with dataset.for_sending(self.accepted_contexts) as sendable:
        return SEND_C_STORE.original(self, sendable, *args, **kwargs)


def _ready(self: _transport.AssociationSocket) -> bool:
    """pynetdicom's `ready`, and a socket with bytes buffered in it (`pending()`) is ready."""
    sock = self.socket
    if sock is not None and self._is_connected and not isinstance(sock, ssl.SSLSocket):
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():
            return True
    return bool(READY.original.fget(self))


def tls_identity(assoc: Any) -> str | None:
    """The verified client certificate's subject on a pynetdicom association (RFC 4514
    string), or None: plain TCP, or TLS without VNA_DICOM_TLS_CA. For the audit trail."""
    transport = getattr(getattr(assoc, "dul", None), "socket", None)
    return socket_identity(getattr(transport, "socket", None))


def _create_socket(self: _transport.AssociationSocket, address: Any) -> socket.socket:
    sock = CREATE_SOCKET.original(self, address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# -- checks ------------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # what is wrong with the original, or None


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _function(*params: str, source_of: Any = None, contains: tuple[str, ...] = ()) -> Check:
    """A function whose parameters start with `params`; and, for what the replacement
    relies on, whose source (or that of `source_of`) contains `contains`."""
    def check(value: Any) -> str | None:
        if not inspect.isfunction(value):
            return f"is {value!r}, not a function"
        names = list(inspect.signature(value).parameters)
        if names[:len(params)] != list(params):
            return f"takes ({', '.join(names)}), not ({', '.join(params)}, ...)"
        return _contains(value if source_of is None else source_of(), contains)
    return check


def _contains(obj: Any, snippets: tuple[str, ...]) -> str | None:
    if not snippets:
        return None
    text = _source(obj)
    if not text:
        return f"cannot be checked: no source for {getattr(obj, '__qualname__', obj)!r}"
    missing = [s for s in snippets if s not in text]
    if missing:
        return f"relies on {getattr(obj, '__qualname__', obj)} containing {missing[0]!r}"
    return None


def _is(expected: Any, *, then: Callable[[], str | None] = lambda: None) -> Check:
    def check(value: Any) -> str | None:
        if value is not expected:
            return f"is {value!r}, not {expected!r}"
        return then()
    return check


def _of_type(kind: type) -> Check:
    def check(value: Any) -> str | None:
        return None if isinstance(value, kind) else f"is {value!r}, not a {kind.__name__}"
    return check


def _reactor_sleeps() -> str | None:
    """The acceptor reactor sleeps ASSOCIATION_REACTOR_SLEEP, once per loop: otherwise
    `_association_sleep` would never engage, silently."""
    text = _source(_association.Association._run_reactor)
    sleeps = re.findall(r"time\.sleep\(([^)]*)\)", text)
    if sleeps != [repr(ASSOCIATION_REACTOR_SLEEP)]:
        return (f"relies on Association._run_reactor sleeping "
                f"time.sleep({ASSOCIATION_REACTOR_SLEEP}); it sleeps {sleeps or 'nothing'}")
    return _contains(_dimse.DIMSEServiceProvider.__init__, ("self.msg_queue",))


def _dul_sleeps() -> str | None:
    """The DUL sleeps its `_run_loop_delay`, DUL_LOOP_DELAY: `_dul_sleep` engages for it."""
    return (_contains(_dul.DULServiceProvider.__init__,
                      (f"self._run_loop_delay = {DUL_LOOP_DELAY!r}", "self.to_user_queue",
                       "self._assoc = assoc"))
            or _contains(_dul.DULServiceProvider.run_reactor,
                         ("time.sleep(self._run_loop_delay)",))
            or _contains(_transport.AssociationSocket.__init__, ("self.socket",)))


@dataclass(eq=False)
class Patch:
    """One attribute of pynetdicom that vna replaces (or one entry of a dict attribute)."""

    owner: ModuleType | type
    attribute: str
    replacement: Any
    check: Check  # the original must pass it
    key: Any = None  # for a dict attribute: the entry replaced
    requestor: bool = False  # also installed by `install_requestor`
    original: Any = field(default=None, init=False)
    installed: bool = field(default=False, init=False)

    @property
    def point(self) -> str:
        owner = self.owner.__name__ if isinstance(self.owner, ModuleType) else \
            f"{self.owner.__module__}.{self.owner.__qualname__}"
        key = "" if self.key is None else f"[{self.key.__name__}]"
        return f"{owner}.{self.attribute}{key}"

    def current(self) -> Any:
        """The value at the patch point now; raises LookupError if there is none."""
        try:
            value = getattr(self.owner, self.attribute)
        except AttributeError as exc:
            raise LookupError("does not exist") from exc
        if self.key is None:
            return value
        if not isinstance(value, dict):
            raise LookupError(f"is {type(value).__name__}, not a dict")
        if self.key not in value:
            raise LookupError(f"has no entry for {self.key.__name__}")
        return value[self.key]

    def problem(self) -> str | None:
        """What is wrong with pynetdicom's original here, or None."""
        try:
            return self.check(self.original if self.installed else self.current())
        except LookupError as exc:
            return str(exc)

    def apply(self) -> None:
        self.original = self.current()
        if self.key is None:
            setattr(self.owner, self.attribute, self.replacement)
        else:
            getattr(self.owner, self.attribute)[self.key] = self.replacement
        self.installed = True

    def is_in_place(self) -> bool:
        try:
            value = self.current()
        except LookupError:
            return False
        if isinstance(self.replacement, (bool, str)):
            return bool(value == self.replacement)
        return value is self.replacement


_A = _association.Association
_DUL = _dul.DULServiceProvider

SEND_C_STORE = Patch(_A, "send_c_store", _send_c_store, _function("self", "dataset"))
SERVE_REQUEST = Patch(
    _A, "_serve_request", _serve_request,
    _function("self", "msg", "context_id", source_of=lambda: _A.__init__,
              contains=("self._reactor_checkpoint",)),
    requestor=True)
CREATE_SOCKET = Patch(_transport.AssociationSocket, "_create_socket", _create_socket,
                      _function("self", "address"), requestor=True)
def _ready_property(value: Any) -> str | None:
    if not isinstance(value, property) or value.fget is None:
        return f"is {value!r}, not a property"
    return _contains(value.fget, ("self.socket.pending()", "self._is_connected"))


READY = Patch(_transport.AssociationSocket, "ready", property(_ready), _ready_property)
DUL_RUN_REACTOR = Patch(_DUL, "run_reactor", _run_reactor, _function("self"))
DUL_SEND_PDU = Patch(_DUL, "send_pdu", _send_pdu, _function("self", "primitive"))


def _decodes_into_receive_file() -> str | None:
    return _contains(_dimse_messages.DIMSEMessage.decode_msg,
                     ("NamedTemporaryFile(", "self._data_set_file.file.flush()"))


def _sends_through_rsp_table() -> str | None:
    return _contains(_dimse.DIMSEServiceProvider.send_msg,
                     ("_RSP_TO_MESSAGE[primitive.__class__]()",
                      "dimse_msg.primitive_to_message(primitive)",
                      "dimse_msg.encode_msg(context_id, self.maximum_pdu_size)"))


PATCHES: tuple[Patch, ...] = (
    Patch(_config, "STORE_RECV_CHUNKED_DATASET", True, _of_type(bool)),
    Patch(_config, "STORE_SEND_CHUNKED_DATASET", True, _of_type(bool)),
    Patch(_config, "LOG_HANDLER_LEVEL", "none", _of_type(str)),
    Patch(_config, "LOG_REQUEST_IDENTIFIERS", False, _of_type(bool)),
    Patch(_config, "LOG_RESPONSE_IDENTIFIERS", False, _of_type(bool)),
    Patch(_dimse_messages, "NamedTemporaryFile", ReceiveFile,
          _is(tempfile.NamedTemporaryFile, then=_decodes_into_receive_file)),
    Patch(_dimse_messages, "create_file_meta", _create_file_meta,
          _function("sop_class_uid", "sop_instance_uid", "transfer_syntax",
                    "implementation_uid", "implementation_version")),
    Patch(_dimse_messages, "write_file_meta_info", _write_file_meta_info,
          _function("fp", "file_meta", "enforce_standard")),
    Patch(_dimse, "_RSP_TO_MESSAGE", FastStoreResponse,
          _is(FastStoreResponse.original, then=_sends_through_rsp_table), key=C_STORE),
    Patch(_dimse, "_RSP_TO_MESSAGE", FastFindResponse,
          _is(FastFindResponse.original, then=_sends_through_rsp_table), key=C_FIND),
    Patch(_association, "time", _TimeShim(_association_sleep), _is(time, then=_reactor_sleeps)),
    Patch(_dul, "time", _TimeShim(_dul_sleep), _is(time, then=_dul_sleeps)),
    DUL_RUN_REACTOR,
    DUL_SEND_PDU,
    SERVE_REQUEST,
    SEND_C_STORE,
    CREATE_SOCKET,
    READY,
)


def _servers_list() -> str | None:
    if not isinstance(getattr(AE(), "_servers", None), list):
        return "AE()._servers is not a list"
    return _contains(_transport.ThreadedAssociationServer.shutdown,
                     ("self.ae._servers.remove(",))


def _message_file() -> str | None:
    return (_contains(_dimse_messages.DIMSEMessage.__init__, ("self._data_set_file",))
            or _contains(_dimse.DIMSEServiceProvider.__init__, ("self.message",)))


def _copies_contexts() -> str | None:
    return _contains(_transport.RequestHandler._create_association,
                     ("deepcopy(self.server.contexts)",))


# private attribute read or internal behaviour relied on -> (accessor, check)
PRIVATE_READS: dict[str, tuple[Callable[..., Any], Callable[[], str | None]]] = {
    "pynetdicom.dimse_messages.DIMSEMessage._data_set_file": (partial_receive_file,
                                                              _message_file),
    "pynetdicom.ae.ApplicationEntity._servers": (register_server, _servers_list),
    "pynetdicom.transport.RequestHandler._create_association": (share_contexts,
                                                                _copies_contexts),
}


# -- install ---------------------------------------------------------------------------------


def _install(patches: list[Patch], reads: list[Callable[[], str | None]]) -> None:
    """Check everything first; patch only if nothing is wrong."""
    version = str(pynetdicom.__version__)
    if not version.startswith(SUPPORTED_VERSIONS):
        raise RuntimeError(
            f"pynetdicom {version} is installed; vna's patches of pynetdicom's internals "
            f"are written for pynetdicom {SUPPORTED_VERSIONS}x: check each patch point in "
            "services/dicom_scp/pynetdicom_compat.py against this version")
    todo = [p for p in patches if not p.installed]
    problems = [f"{p.point} {why}" for p in todo if (why := p.problem())]
    problems += [why for check in reads if (why := check())]
    if problems:
        raise RuntimeError(
            f"cannot patch pynetdicom {version}: " + "; ".join(problems)
            + " (see services/dicom_scp/pynetdicom_compat.py)")
    for p in todo:
        p.apply()


_lock = threading.Lock()


def install(receive_dir: Path) -> None:
    """Install every patch in this SCP process (once); received C-STORE datasets that
    pynetdicom serves are written to `receive_dir`. Raises RuntimeError when this
    pynetdicom is not one the patches fit."""
    with _lock:
        _install(list(PATCHES), [check for _, check in PRIVATE_READS.values()])
        ReceiveFile.directory = str(receive_dir)


def install_requestor() -> None:
    """Install the patches a process that only opens associations needs (once):
    TCP_NODELAY on its sockets and the response hand-back (#875)."""
    with _lock:
        _install([p for p in PATCHES if p.requestor], [])
