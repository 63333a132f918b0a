"""Streaming multipart upload: request body -> object store, in constant memory.

`services.multipart.read_parts` parses the body on the event loop as it arrives and hands
its events to `UploadReceiver`, a small state machine (see there). File bytes go through a
bounded `ChunkPipe` to a thread that drains it into `ObjectStore.put_stream`, hashing on
the way: receiving, hashing and writing overlap, memory stays at a few parts whatever the
size, and nothing is spooled to a temp file. The first bytes are sniffed before any are
stored; a bad type, a path in the filename, a body over the limit, a cut-off or malformed
body all abort the pipe, and the store then leaves no object behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request

from services.multipart import (
    Event,
    MalformedBody,
    PartData,
    PartEnd,
    PartStart,
    TruncatedBody,
    boundary_of,
    read_parts,
)
from services.pipe import BoundedPipe
from services.xds_api.threads import in_own_thread
from storage.errors import FailureLog, is_storage_full
from storage.index.documents import StoredObject
from storage.objectstore import Readable
from vna.documents import mime
from vna.documents.entry import check_filename

log = logging.getLogger("vna.http")
METADATA_LIMIT = 64 << 10  # a DocumentEntry's metadata is small; anything bigger is a mistake
_PARTS = ("metadata", "file")  # the parts of an upload, each exactly once, in either order


class UploadError(Exception):
    """A refused upload: HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_failures = FailureLog(log)


def store_refused(exc: BaseException) -> UploadError:
    """The answer to an object store that could not take the document: 507 when it is
    full, 503 when it is unavailable (the client may try again later, either way)."""
    _failures.failed("an upload", exc)
    if is_storage_full(exc):
        return UploadError(507, "object storage is full: the document was not stored")
    return UploadError(503, f"object storage refused the document: {type(exc).__name__}")


class UploadStore(Protocol):
    """What an upload needs of an `ObjectStore`: write a stream, and delete it again."""

    def put_stream(self, key: str, data: Readable, *, content_type: str) -> None: ...

    def delete(self, key: str) -> None: ...


# -- the store pipe: event loop -> writer thread -> object store ----------------------------

class _Aborted(Exception):
    """Raised to the writer thread: the upload was refused or cut off."""


class ChunkPipe(BoundedPipe[bytes]):
    """Bytes from the event loop to one reader thread, at most `high_water` in between.

    `send` awaits room without blocking the loop; `read` blocks the reader thread until a
    useful amount is there (so the store gets large writes), and raises once aborted.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, high_water: int = 4 << 20) -> None:
        super().__init__(loop, high_water, len)
        self._aborted = False

    async def send(self, data: bytes) -> None:
        # a reader that stopped failed; its exception is reported by the caller
        await self.put(data)

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._items.clear()
            self._size = 0
            self._cond.notify()

    def read(self, n: int = -1) -> bytes:
        want = self._high if n < 0 else n
        with self._cond:
            while not self._aborted and not self._closed and self._size < min(want,
                                                                               self._high):
                self._cond.wait()
            if self._aborted:
                raise _Aborted("upload aborted")
            out: list[bytes] = []
            got = 0
            while self._items and got < want:
                chunk = self._items.popleft()
                if got + len(chunk) > want:
                    self._items.appendleft(chunk[want - got:])
                    chunk = chunk[:want - got]
                out.append(chunk)
                got += len(chunk)
            self._taken(got)
        return b"".join(out)


class _HashingReader:
    """Counts and hashes what the store reads (in the writer thread, off the event loop)."""

    def __init__(self, pipe: ChunkPipe) -> None:
        self._pipe = pipe
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._pipe.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data


class _ObjectWrite:
    """One object on its way into the store: the pipe, the writer thread that drains it
    into `put_stream`, the hash of what went through, and the undo."""

    def __init__(self, store: UploadStore, key: str, content_type: str) -> None:
        self._store = store
        self._key = key
        self._pipe = ChunkPipe(asyncio.get_running_loop())
        self._reader = _HashingReader(self._pipe)

        def write() -> None:
            try:
                store.put_stream(key, self._reader, content_type=content_type)
            finally:
                self._pipe.reader_done()

        self._writer = in_own_thread(write, "upload-writer")

    async def send(self, data: bytes) -> None:
        """Hand bytes to the writer; waits while the pipe is full. A writer that failed
        is reported here, so the client stops sending at once."""
        await self._pipe.send(data)
        if self._writer.done() and (exc := self._writer.exception()) is not None:
            raise store_refused(exc)

    async def finish(self) -> tuple[str, int]:
        """End the stream and wait until the object is durable: its sha256 and size."""
        self._pipe.close()
        try:
            await asyncio.shield(self._writer)  # a cancelled request still lets it settle
        except Exception as exc:
            raise store_refused(exc) from exc
        return self._reader.sha256.hexdigest(), self._reader.size

    async def undo(self) -> None:
        """Leave nothing behind: abort the writer (the store then removes its partial
        object) or, if it had completed the object, delete that. Shielded: it runs while
        the request is failing, cancellations included."""
        self._pipe.abort()
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):  # its failure is what we are handling
                await asyncio.shield(self._writer)
            if self._writer.cancelled() or self._writer.exception() is not None:
                return
            try:
                await anyio.to_thread.run_sync(self._store.delete, self._key)
            except Exception:  # the original refusal is what the client must hear
                log.exception("could not remove the object of a refused upload")


# -- the receiver ---------------------------------------------------------------------------

class State(enum.Enum):
    """Where an `UploadReceiver` is; see its docstring for the transitions."""

    AWAITING_PART = "awaiting a part"  # at the start, and between parts
    IN_METADATA = "reading the metadata part"
    SNIFFING = "reading the file part's head"  # held back until its type is known
    STREAMING = "streaming the file part"  # file bytes flow to the store
    ENDED = "finishing"  # the closing boundary was seen; the object is being completed
    STORED = "stored"  # `receive` returned: the object is durable
    DISCARDED = "discarded"  # refused, cut off or undone: nothing is left


@dataclass
class Upload:
    """What a completed upload left: the metadata as `on_metadata` returned it, and the
    durable object."""

    metadata: Any
    object: StoredObject


class UploadReceiver:
    """Receives one multipart upload (`metadata` JSON and one `file`) into the store.

    `on_metadata(raw)` is called as soon as the metadata part is complete: before the file
    is stored if the client sent it first (as curl -F, requests and httpx do), after it
    otherwise. It raises `UploadError` to refuse; a refusal after the file was stored
    deletes the object again.

    A state machine, driven by the body's part events (`services.multipart`):

        AWAITING_PART --`metadata` begins--> IN_METADATA
        IN_METADATA --it ends: on_metadata--> AWAITING_PART
        AWAITING_PART --`file` begins: filename checked--> SNIFFING
        SNIFFING --8 KiB in, or it ends: type checked, writer started--> STREAMING
        STREAMING --it ends--> AWAITING_PART  (the writer stays open until ENDED)
        AWAITING_PART --closing boundary--> ENDED
        ENDED --both parts there, type agrees, object durable--> STORED
        STORED --discard()--> DISCARDED

    Anything else (a part other than those two, one twice, metadata over 64 KiB, a file
    over `max_bytes`, an empty one, a bad type, a body cut off or malformed, a client
    that hangs up, a store that fails) is an `UploadError` from any state, and the
    receiver goes to DISCARDED: the writer is aborted or its object deleted.
    """

    def __init__(self, store: UploadStore, key: str, *, allowed: frozenset[str],
                 max_bytes: int, on_metadata: Callable[[bytes], Any]) -> None:
        self.store = store
        self.key = key
        self.allowed = allowed
        self.max_bytes = max_bytes
        self.on_metadata = on_metadata
        self.state = State.AWAITING_PART
        self.metadata: Any = None  # what on_metadata returned
        self._seen: set[str] = set()  # parts begun
        self._meta = bytearray()
        self._filename: str | None = None
        self._file_content_type: str | None = None
        self._head: list[bytes] = []  # file bytes held back until they are sniffed
        self._size = 0  # file bytes received
        self._mime: str | None = None  # sniffed
        self._write: _ObjectWrite | None = None

    async def receive(self, request: Request) -> Upload:
        """The upload of `request`, stored; `UploadError` if refused (nothing is left)."""
        if self.state is not State.AWAITING_PART or self._seen:
            raise RuntimeError("an UploadReceiver receives one upload")
        boundary = boundary_of(request.headers.get("content-type"), "multipart/form-data")
        if boundary is None:
            raise UploadError(415, "send multipart/form-data with a `metadata` and a `file` "
                                   "part")
        declared_len = request.headers.get("content-length")
        if declared_len and declared_len.isdigit() and int(declared_len) > (
                self.max_bytes + METADATA_LIMIT + 4096):
            raise UploadError(413, f"the document is larger than {self.max_bytes} bytes")
        try:
            await self._read(request.stream(), boundary)
            return await self._finish()
        except BaseException:
            await self._discard()
            raise

    async def discard(self) -> None:
        """Undo a completed upload (its index row could not be written)."""
        await self._discard()

    # -- reading: one method per event ------------------------------------------------------

    async def _read(self, body: AsyncIterable[bytes], boundary: bytes) -> None:
        """Feed the body's events to the state machine until the closing boundary; the
        reader's and the client's failures become the client's answer."""
        try:
            async with contextlib.aclosing(read_parts(body, boundary)) as events:
                async for event in events:
                    await self._on_event(event)
        except ClientDisconnect:
            raise UploadError(400, "the client disconnected before the upload was "
                                   "complete") from None
        except TruncatedBody:
            raise UploadError(400, "the upload is incomplete: the multipart body ended "
                                   "before its closing boundary") from None
        except MalformedBody as exc:
            raise UploadError(400, f"the multipart body is malformed: {exc}") from None
        if self.state is not State.AWAITING_PART:
            raise self._out_of_order("the end of the body")
        self.state = State.ENDED

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, PartData):  # by far the most frequent
            await self._on_data(event.data)
        elif isinstance(event, PartStart):
            self._on_part_start(event)
        else:
            assert isinstance(event, PartEnd)
            await self._on_part_end()

    def _on_part_start(self, part: PartStart) -> None:
        if self.state is not State.AWAITING_PART:
            raise self._out_of_order("a new part")
        disposition, params = part.disposition
        name = params.get("name")
        if disposition != "form-data" or name is None:
            raise UploadError(400, "each part needs Content-Disposition: form-data; name=...")
        if name not in _PARTS:
            raise UploadError(400, f"unexpected form field {name!r}: send `metadata` and "
                                   f"`file`")
        if name in self._seen:
            raise UploadError(400, f"send one `{name}` part only")
        self._seen.add(name)
        if name == "metadata":
            self.state = State.IN_METADATA
            return
        try:
            self._filename = check_filename(params.get("filename"))
        except ValueError as exc:
            raise UploadError(400, str(exc)) from None
        self._file_content_type = part.content_type
        self.state = State.SNIFFING

    async def _on_data(self, data: bytes) -> None:
        state = self.state
        if state is State.STREAMING:
            self._count(data)
            assert self._write is not None
            await self._write.send(data)
        elif state is State.SNIFFING:
            self._count(data)
            self._head.append(data)
            if self._size >= mime.SNIFF_BYTES:
                await self._start_streaming()
        elif state is State.IN_METADATA:
            self._meta += data
            if len(self._meta) > METADATA_LIMIT:
                raise UploadError(400, "the metadata part is larger than 64 KiB")
        else:
            raise self._out_of_order("part data")

    async def _on_part_end(self) -> None:
        if self.state is State.IN_METADATA:
            self.metadata = self.on_metadata(bytes(self._meta))
        elif self.state is State.SNIFFING:  # a file shorter than the sniffed head
            if not self._size:
                raise UploadError(400, "the `file` part is empty")
            await self._start_streaming()
        elif self.state is not State.STREAMING:
            raise self._out_of_order("the end of a part")
        self.state = State.AWAITING_PART

    def _count(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.max_bytes:
            raise UploadError(413, f"the document is larger than {self.max_bytes} bytes")

    def _out_of_order(self, what: str) -> UploadError:
        """An event the state does not allow (python-multipart never sends one)."""
        return UploadError(400, f"the multipart body is malformed: {what} while "
                                f"{self.state.value}")

    # -- the file: sniffed, then streamed ---------------------------------------------------

    async def _start_streaming(self) -> None:
        """SNIFFING -> STREAMING: check the type of the head, start the writer, send the
        head. The metadata's claim counts if it came first; if it comes later, `_finish`
        checks it."""
        head = b"".join(self._head)
        self._head = []
        try:
            self._mime = mime.check(head, [self._file_content_type, self._claim()],
                                    self.allowed)
        except mime.MediaTypeRefused as exc:
            raise UploadError(415, str(exc)) from None
        self._write = _ObjectWrite(self.store, self.key, self._mime)
        self.state = State.STREAMING
        await self._write.send(head)

    def _claim(self) -> str | None:
        return getattr(self.metadata, "mimeType", None)

    async def _finish(self) -> Upload:
        """ENDED -> STORED: both parts there and agreeing, then the object completed."""
        for name in _PARTS:
            if name not in self._seen:
                raise UploadError(400, f"the `{name}` part is missing")
        assert self._write is not None and self._mime is not None
        claim = self._claim()
        if claim and not mime.agrees(claim, self._mime):  # metadata came after the head
            raise UploadError(415, f"declared as {mime.canonical(claim)} but the content "
                                   f"is {self._mime}")
        sha256, size = await self._write.finish()
        self.state = State.STORED
        return Upload(self.metadata, StoredObject(self.key, sha256, size, self._mime,
                                                  self._filename))

    async def _discard(self) -> None:
        """Any state -> DISCARDED: the one undo (see `_ObjectWrite.undo`)."""
        self.state = State.DISCARDED
        write, self._write = self._write, None
        if write is not None:
            await write.undo()
