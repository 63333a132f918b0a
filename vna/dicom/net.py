"""Network details pynetdicom leaves to us."""

from __future__ import annotations

import functools
import socket
from typing import Any

from pynetdicom.transport import AssociationSocket


@functools.cache
def enable_client_tcp_nodelay() -> None:
    """Set TCP_NODELAY on every socket pynetdicom opens as a requestor (once per process).

    Without it Nagle's algorithm holds back small PDUs for up to 40 ms each.
    """
    original = AssociationSocket._create_socket

    def _create_socket(self: AssociationSocket, address: Any) -> socket.socket:
        sock = original(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    AssociationSocket._create_socket = _create_socket  # type: ignore[method-assign]
