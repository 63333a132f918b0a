"""Network details pynetdicom leaves to us."""

from __future__ import annotations

import socket
import threading
from typing import Any

from pynetdicom.transport import AssociationSocket

_lock = threading.Lock()
_done = False


def enable_client_tcp_nodelay() -> None:
    """Set TCP_NODELAY on every socket pynetdicom opens as a requestor (idempotent).

    Without it Nagle's algorithm holds back small PDUs for up to 40 ms each.
    """
    global _done
    with _lock:
        if _done:
            return
        original = AssociationSocket._create_socket

        def _create_socket(self: AssociationSocket, address: Any) -> socket.socket:
            sock = original(self, address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock

        AssociationSocket._create_socket = _create_socket  # type: ignore[method-assign]
        _done = True
