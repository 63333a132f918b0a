"""Abusive DICOM clients, for the limits tests and benchmarks/abuse.py: a crowd of idle
connections or associations, and a sender that writes one byte a second."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.sop_class import CTImageStorage, Verification


def associate_rq(calling: str, *abstract: str, called: str = "VNA") -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing `abstract` (default: CT Image Storage)."""
    rq = A_ASSOCIATE()
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.calling_ae_title, rq.called_ae_title = calling, called
    for i, sop_class in enumerate(abstract or (str(CTImageStorage),)):
        cx = build_context(sop_class, ExplicitVRLittleEndian)
        cx.context_id = 2 * i + 1
        rq.presentation_context_definition_list.append(cx)
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    rq.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)
    return bytes(pdu.encode())


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU's type and body; (0, b"") if the connection closed."""
    head = _read(sock, 6)
    if len(head) < 6:
        return 0, b""
    return head[0], _read(sock, struct.unpack(">I", head[2:6])[0])


def _read(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            return out
        out += chunk
    return out


def request(port: int, calling: str, *abstract: str, timeout: float = 10) -> \
        tuple[socket.socket, int, bytes]:
    """Open a connection and request an association: (socket, PDU type, body) of the
    answer: 0x02 A-ASSOCIATE-AC, 0x03 A-ASSOCIATE-RJ (body[1:4] = result, source, reason)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(associate_rq(calling, *abstract))
    pdu_type, body = read_pdu(sock)
    return sock, pdu_type, body


class Crowd:
    """`n` connections held open doing nothing: with `associate`, each first gets an
    association (storage, or with `verification` C-ECHO, which pynetdicom serves) as
    `calling`; the ones refused are counted in `refused`."""

    def __init__(self, port: int, n: int, *, associate: bool = False, calling: str = "HOG",
                 verification: bool = False) -> None:
        self.socks: list[socket.socket] = []
        self.accepted = self.refused = 0
        for _ in range(n):
            try:
                if associate:
                    abstract = (str(Verification),) if verification else ()
                    sock, pdu_type, _ = request(port, calling, *abstract)
                    if pdu_type == 0x02:
                        self.accepted += 1
                    else:
                        self.refused += 1
                        sock.close()
                        continue
                else:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                self.refused += 1
                continue
            self.socks.append(sock)

    def close(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()
        self.socks.clear()


class SlowSender(threading.Thread):
    """Writes an A-ASSOCIATE-RQ one byte a second (slow loris), over and over: each time
    the SCP closes it, it connects again."""

    def __init__(self, port: int, calling: str = "SLOW", interval: float = 1.0) -> None:
        super().__init__(daemon=True, name="slow-sender")
        self.port, self.calling, self.interval = port, calling, interval
        self.stopping = threading.Event()
        self.bytes_sent = self.closed_by_peer = 0

    def run(self) -> None:
        pdu = associate_rq(self.calling)
        while not self.stopping.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    for i in range(len(pdu)):
                        if self.stopping.wait(self.interval):
                            return
                        sock.sendall(pdu[i:i + 1])
                        self.bytes_sent += 1
            except OSError:
                self.closed_by_peer += 1
                time.sleep(0.1)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
