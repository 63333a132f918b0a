"""The HL7 v2 listener: MLLP on VNA_HL7_HOST:VNA_HL7_PORT, on python-hl7's asyncio server.

A thin edge: each block is read on the event loop, and everything that blocks (parsing it,
the index transaction) runs in a thread (`MessageHandler.handle`), so that one sender's
commit does not hold up another's read. Messages of one connection are answered in order,
one at a time, as MLLP's original mode expects; the ACK is written only after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import hl7
from hl7.mllp import start_hl7_server
from hl7.mllp.exceptions import InvalidBlockError

from services.runtime import open_index
from services.supervision import wait_for_free_port
from storage.index.hl7 import Hl7Inbox, Received
from vna import hl7 as messages
from vna.hl7 import ErrorCode, Hl7Error
from vna.settings import Settings

log = logging.getLogger("vna.hl7")

MAX_MESSAGE_BYTES = 4 << 20  # a message longer than this is refused (AR), not read whole
THREADS = 8


def _decode(block: bytes) -> tuple[str, str]:
    """The text of a block and the encoding to answer in: MSH-18 8859/1 is Latin-1, else
    UTF-8 (ASCII, HL7's default, is a subset), else Latin-1 for what is not UTF-8."""
    head = block[:512].split(b"\r", 1)[0]
    if b"8859/1" in head:
        return block.decode("latin-1"), "latin-1"
    try:
        return block.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return block.decode("latin-1"), "latin-1"


class MessageHandler:
    """One message in, one ACK out: parsed, applied and logged (blocking; run in a thread)."""

    def __init__(self, inbox: Hl7Inbox, zone: str, application: str) -> None:
        self.inbox = inbox
        self.zone = zone
        self.application = application

    def handle(self, block: bytes, peer: str | None) -> bytes:
        text, encoding = _decode(block)
        received = Received(received_at=datetime.now(UTC), peer=peer, message=text)
        message: hl7.Message | None = None
        try:
            message = messages.parse(text)
            opened = messages.open_message(message, self.zone)
            head = opened.header
            received = Received(
                received_at=received.received_at, peer=peer, message=text,
                sending_application=head.sending_application,
                sending_facility=head.sending_facility, message_type=head.message_type,
                control_id=head.control_id, patient_id=opened.patient_id)
            parsed = opened.read()
            self.inbox.apply(parsed, received, code=head.code)
        except Hl7Error as error:
            return self._refuse(message, received, error, encoding)
        except Exception:
            log.exception("HL7 %s could not be applied", received.message_type or "message")
            return self._refuse(message, received, Hl7Error(
                "", ErrorCode.INTERNAL, "the archive could not apply the message"), encoding)
        log.debug("HL7 %s %s: AA", received.message_type, received.control_id)
        return self._answer(message, "AA", None, encoding)

    def _refuse(self, message: hl7.Message | None, received: Received, error: Hl7Error,
                encoding: str) -> bytes:
        # one short line, no patient data: the type, the field and the code
        log.info("HL7 %s from %s: %s (%s %s)", received.message_type or "block",
                 received.sending_application or received.peer, error.ack_code,
                 error.location or "-", error.code.value)
        try:
            self.inbox.refused(received, error)
        except Exception:
            log.exception("could not log a refused HL7 message")
            error = Hl7Error(error.location, ErrorCode.INTERNAL,
                             "the archive could not record the message")
        return self._answer(message, error.ack_code, error, encoding)

    def _answer(self, message: hl7.Message | None, code: str, error: Hl7Error | None,
                encoding: str) -> bytes:
        ack = messages.ack(message, code, error, application=self.application)
        return str(ack).encode(encoding, "replace")


class Listener:
    """The MLLP server: one task per connection, blocking work in a thread pool."""

    def __init__(self, handler: MessageHandler, threads: int = THREADS) -> None:
        self.handler = handler
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="hl7")

    async def connection(self, reader: hl7.mllp.HL7StreamReader,
                         writer: hl7.mllp.HL7StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        addr = writer.get_extra_info("peername")
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else None
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    block = await reader.readblock()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except (InvalidBlockError, ValueError):  # no <VT>, or over the limit
                    block = b"not an MLLP block"
                ack = await loop.run_in_executor(self.pool, self.handler.handle, block, peer)
                writer.writeblock(ack)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def run(self, host: str, port: int, stop: asyncio.Event) -> None:
        server = await start_hl7_server(self.connection, host, port,
                                        limit=MAX_MESSAGE_BYTES, reuse_address=True)
        log.info("HL7 v2 (MLLP) listening on %s:%d", host, port)
        async with server:
            await stop.wait()
        self.pool.shutdown(wait=True)


def serve(settings: Settings) -> int:
    """Run the listener until SIGTERM/SIGINT; 1 if the port is taken."""
    if not settings.hl7_port:
        log.warning("VNA_HL7_PORT is 0: the HL7 listener is off")
        return 0
    if not wait_for_free_port(settings.hl7_host, settings.hl7_port, "HL7",
                              settings.port_wait_seconds):
        log.error("HL7 port %s:%d is in use by another process; not starting",
                  settings.hl7_host, settings.hl7_port)
        return 1
    index = open_index(settings)
    handler = MessageHandler(Hl7Inbox(index, settings.timezone), settings.timezone,
                             settings.dicom_aet)
    listener = Listener(handler)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await listener.run(settings.hl7_host, settings.hl7_port, stop)

    try:
        asyncio.run(main())
    finally:
        index.dispose()
    return 0
