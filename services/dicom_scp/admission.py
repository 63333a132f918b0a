"""Who gets an association: the TLS handshake, ARTIM, association limits, AE-to-certificate
binding. Every connection an SCP process accepts passes here, in its own thread, before
vna's storage loop or pynetdicom sees it.

- ARTIM (VNA_DICOM_ARTIM_TIMEOUT): the TLS handshake and the whole A-ASSOCIATE-RQ must
  arrive within it, counted from the connection, however slowly the bytes come; a
  connection that sends nothing, or one byte a second, is closed and holds no association.
  The handshake is done here, not in the accept loop (pynetdicom does it in
  `get_request`, where one silent client would stop every other from connecting).
- Limits, per SCP process (each of the VNA_DICOM_PROCESSES counts its own): at most
  VNA_DICOM_MAX_ASSOCIATIONS associations at once, of which at most
  VNA_DICOM_MAX_ASSOCIATIONS_PER_AET for one calling AE title. Beyond, the request is
  answered A-ASSOCIATE-RJ rejected-transient, source service-provider (presentation
  related), reason local-limit-exceeded (PS3.8 9.3.4): result 2, source 3, reason 2.
- VNA_DICOM_TLS_AET_SUBJECTS: a calling AE title bound to a certificate CN associates
  only over TLS with that certificate; otherwise A-ASSOCIATE-RJ rejected-permanent,
  service-user, calling-AE-title-not-recognized (1, 1, 3).

Over TLS the A-ASSOCIATE-RQ cannot be peeked at (TLS has no MSG_PEEK): it is read, and
an association that goes to pynetdicom gets it back first (`ReplaySocket`).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from pynetdicom import AE

from services.dicom_scp.tls import common_name
from vna.dicom.dimse import A_ASSOCIATE_RQ_PDU

log = logging.getLogger("vna.scp")

A_ASSOCIATE_RJ_PDU = 0x03
LARGEST_ASSOCIATE_RQ = 1 << 20  # an A-ASSOCIATE-RQ larger than this is not one

# (result, source, reason) of A-ASSOCIATE-RJ, PS3.8 9.3.4
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service-provider (presentation), limit
REJECT_CALLING_AET = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE not recognized


class Refused(Exception):
    """A connection closed before it became an association (ARTIM, TLS, not an RQ)."""


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    return struct.pack(">BxIxBBB", A_ASSOCIATE_RJ_PDU, 4, result, source, reason)


def calling_aet(rq: bytes) -> str:
    """The Calling AE Title of an A-ASSOCIATE-RQ PDU (bytes 26-41)."""
    return rq[26:42].decode("ascii", "replace").strip()


def _wait(sock: socket.socket, deadline: float, *, write: bool = False) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Refused("ARTIM expired")
    r, w, _ = select.select([] if write else [sock], [sock] if write else [], [], remaining)
    if not r and not w:
        raise Refused("ARTIM expired")


def tls_handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """The server side of the handshake, within `deadline` however slow the client."""
    sock.setblocking(False)
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            _wait(sock, deadline)
        except ssl.SSLWantWriteError:
            _wait(sock, deadline, write=True)
        except (ssl.SSLError, OSError) as exc:
            raise Refused(f"TLS handshake failed: {exc}") from exc


def read_associate_rq_tls(sock: ssl.SSLSocket, deadline: float) -> bytes:
    """Read the A-ASSOCIATE-RQ PDU from a (non-blocking, handshaken) TLS socket."""
    buf = bytearray()
    need = 6
    while len(buf) < need:
        try:
            chunk = sock.recv(need - len(buf))
        except ssl.SSLWantReadError:
            _wait(sock, deadline)
            continue
        except (ssl.SSLError, OSError) as exc:
            raise Refused(f"TLS read failed: {exc}") from exc
        if not chunk:
            raise Refused("closed before its A-ASSOCIATE-RQ")
        buf += chunk
        if len(buf) == 6 and need == 6:
            if buf[0] != A_ASSOCIATE_RQ_PDU:
                raise Refused(f"first PDU of type 0x{buf[0]:02x}, not A-ASSOCIATE-RQ")
            length = int.from_bytes(buf[2:6], "big")
            if length > LARGEST_ASSOCIATE_RQ or length < 68:
                raise Refused(f"A-ASSOCIATE-RQ of {length} bytes")
            need = 6 + length
    return bytes(buf)


def peek_associate_rq(sock: socket.socket, timeout: float) -> bytes | None:
    """The A-ASSOCIATE-RQ PDU waiting on a plain `sock`, left unread; None when the first
    PDU is something else (pynetdicom answers that); Refused when nothing came in time.

    Blocking reads with MSG_WAITALL wait for the whole PDU however the requestor wrote it
    (a socket with a Python timeout is non-blocking, where MSG_WAITALL does not wait);
    SO_RCVTIMEO bounds the two waits together.
    """
    sock.settimeout(None)
    deadline = time.monotonic() + timeout
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(timeout))
        head = sock.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL)
        if len(head) < 6:
            raise Refused("closed or silent before its A-ASSOCIATE-RQ (ARTIM)")
        if head[0] != A_ASSOCIATE_RQ_PDU:
            return None
        length = int.from_bytes(head[2:6], "big")
        if length > LARGEST_ASSOCIATE_RQ or length < 68:
            return None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        timeval(max(0.001, deadline - time.monotonic())))
        pdu = sock.recv(6 + length, socket.MSG_PEEK | socket.MSG_WAITALL)
        if len(pdu) < 6 + length:
            raise Refused("A-ASSOCIATE-RQ incomplete when ARTIM expired")
        return pdu
    except OSError as exc:  # EAGAIN: SO_RCVTIMEO expired
        raise Refused(f"no A-ASSOCIATE-RQ within ARTIM ({exc})") from exc
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(0))


def timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))


class ReplaySocket:
    """A TLS socket whose first bytes (the A-ASSOCIATE-RQ read by `Admission`) are read
    again, for pynetdicom. `pending()` counts them (pynetdicom_compat makes pynetdicom's
    `ready` ask it, as pynetdicom asks an SSLSocket)."""

    def __init__(self, sock: ssl.SSLSocket, prefix: bytes) -> None:
        self._sock = sock
        self._prefix = prefix

    def recv(self, n: int, flags: int = 0) -> bytes:
        if self._prefix:
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out
        return self._sock.recv(n, flags)

    def pending(self) -> int:
        return len(self._prefix) + self._sock.pending()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Admission:
    """The association limits of one SCP process, over both of its ports and both paths
    (vna's storage loop and pynetdicom)."""

    def __init__(self, ae: AE, max_total: int, max_per_aet: int,
                 aet_subjects: dict[str, str]) -> None:
        self.ae = ae
        self.max_total = max_total
        self.max_per_aet = max_per_aet
        self.aet_subjects = aet_subjects
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()  # admitted, not (yet) a pynetdicom Association

    def _counts(self, aet: str) -> tuple[int, int]:
        acceptors = [a for a in self.ae.active_associations if a.is_acceptor]
        total = len(acceptors) + sum(self._held.values())
        mine = self._held[aet] + sum(
            1 for a in acceptors if str(a.requestor.ae_title or "").strip() == aet)
        return total, mine

    def check_identity(self, aet: str, cert: dict[str, Any] | None) -> bool:
        """A bound AE title only with its certificate (and so only over TLS)."""
        bound = self.aet_subjects.get(aet)
        return bound is None or common_name(cert) == bound

    @contextlib.contextmanager
    def hold(self, aet: str) -> Iterator[bool]:
        """Count one association of `aet` for the block; yields False (nothing counted)
        when that would exceed a limit."""
        with self._lock:
            total, mine = self._counts(aet)
            allowed = total < self.max_total and mine < self.max_per_aet
            if allowed:
                self._held[aet] += 1
        if not allowed:
            log.warning("association from %s rejected: local limit exceeded (%d in this "
                        "process, %d of this AE; limits %d and %d)", aet, total, mine,
                        self.max_total, self.max_per_aet)
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                self._held[aet] -= 1
                if not self._held[aet]:
                    del self._held[aet]
