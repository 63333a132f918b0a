"""Streaming multipart upload: request body -> object store, in constant memory.

The event loop parses the body as it arrives (python-multipart) and hands file bytes to
a bounded `ChunkPipe`; a thread drains the pipe into `ObjectStore.put_stream`, hashing on
the way. So receiving, hashing and writing overlap, memory stays at a few parts whatever
the size, and nothing is spooled to a temp file. The first bytes are sniffed before any
are stored; a bad type, a path in the filename, a body over the limit, a cut-off or
malformed body all abort the pipe, and the store then leaves no object behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from services.xds_api.threads import in_own_thread
from storage.errors import FailureLog, is_storage_full
from storage.index.documents import StoredObject
from storage.objectstore import ObjectStore
from vna.documents import mime
from vna.documents.entry import check_filename

log = logging.getLogger("vna.http")
METADATA_LIMIT = 64 << 10  # a DocumentEntry's metadata is small; anything bigger is a mistake


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


class _Aborted(Exception):
    """Raised to the writer thread: the upload was refused or cut off."""


class ChunkPipe:
    """Bytes from the event loop to one reader thread, at most `high_water` in between.

    `send` awaits room without blocking the loop; `read` blocks the reader thread until a
    useful amount is there (so the store gets large writes), and raises once aborted.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, high_water: int = 4 << 20) -> None:
        self._loop = loop
        self._high = high_water
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._closed = False
        self._aborted = False
        self._cond = threading.Condition()
        self._room = asyncio.Event()
        self._room.set()
        self.reader_gone = False

    async def send(self, data: bytes) -> None:
        while True:
            with self._cond:
                if self.reader_gone:
                    return  # the writer failed; its exception is reported by the caller
                if self._size < self._high:
                    self._chunks.append(data)
                    self._size += len(data)
                    self._cond.notify()
                    return
                self._room.clear()
            await self._room.wait()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._chunks.clear()
            self._size = 0
            self._cond.notify()

    def reader_done(self) -> None:
        """The reader thread stopped (done or failed): never wait for room again."""
        with self._cond:
            self.reader_gone = True
        self._loop.call_soon_threadsafe(self._room.set)

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
            while self._chunks and got < want:
                chunk = self._chunks.popleft()
                if got + len(chunk) > want:
                    self._chunks.appendleft(chunk[want - got:])
                    chunk = chunk[:want - got]
                out.append(chunk)
                got += len(chunk)
            self._size -= got
            wake = self._size < self._high
        if wake:
            self._loop.call_soon_threadsafe(self._room.set)
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


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    content_type: str | None = None
    headers: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Upload:
    """What a completed upload left: the metadata as `on_metadata` returned it, and the
    durable object."""

    metadata: Any
    object: StoredObject


class UploadReceiver:
    """Receives one multipart upload (`metadata` JSON and one `file`) into the store.

    `on_metadata(raw, declared_mime)` is called as soon as the metadata part is complete:
    before the file is stored if the client sent it first (as curl -F, requests and httpx
    do), after it otherwise. It raises `UploadError` to refuse; a refusal after the file
    was stored deletes the object again.
    """

    def __init__(self, store: ObjectStore, key: str, *, allowed: frozenset[str],
                 max_bytes: int, on_metadata: Callable[[bytes], Any]) -> None:
        self.store = store
        self.key = key
        self.allowed = allowed
        self.max_bytes = max_bytes
        self.on_metadata = on_metadata
        self.meta_result: Any = None
        self._meta = bytearray()
        self._metadata_done = False
        self._part = _Part()
        self._hname = b""
        self._hvalue = b""
        self._file_seen = False
        self._file_done = False
        self._ended = False
        self._head: list[bytes] = []  # file bytes held back until they are sniffed
        self._head_size = 0
        self._pending: list[bytes] = []  # file bytes parsed, not yet sent to the pipe
        self._size = 0
        self._mime: str | None = None
        self._filename: str | None = None
        self._file_content_type: str | None = None
        self._pipe: ChunkPipe | None = None
        self._reader: _HashingReader | None = None
        self._writer: asyncio.Future[None] | None = None
        self._stored = False

    async def receive(self, request: Request) -> Upload:
        ctype, params = parse_options_header(request.headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise UploadError(415, "send multipart/form-data with a `metadata` and a `file` "
                                   "part")
        declared_len = request.headers.get("content-length")
        if declared_len and declared_len.isdigit() and int(declared_len) > (
                self.max_bytes + METADATA_LIMIT + 4096):
            raise UploadError(413, f"the document is larger than {self.max_bytes} bytes")
        parser = MultipartParser(boundary, self._callbacks(), max_header_count=8)
        try:
            async for chunk in request.stream():
                if not chunk:
                    continue
                parser.write(chunk)
                await self._after_write()
                if self._ended:
                    break
            parser.finalize()
            await self._after_write()
            if not self._ended or not self._file_done:
                raise UploadError(400, "the upload is incomplete: the multipart body ended "
                                       "before its closing boundary")
            if not self._metadata_done:
                raise UploadError(400, "the `metadata` part is missing")
            if not self._file_seen:
                raise UploadError(400, "the `file` part is missing")
            await self._finish_file()
            obj = self._stored_object()
            claim = getattr(self.meta_result, "mimeType", None)
            if claim and not mime.agrees(claim, obj.mime_type):  # metadata came last
                raise UploadError(415, f"declared as {mime.canonical(claim)} but the content "
                                       f"is {obj.mime_type}")
            return Upload(self.meta_result, obj)
        except ClientDisconnect:
            await self._discard()
            raise UploadError(400, "the client disconnected before the upload was complete") \
                from None
        except MultipartParseError as exc:
            await self._discard()
            raise UploadError(400, f"the multipart body is malformed: {exc}") from None
        except UploadError:
            await self._discard()
            raise
        except BaseException:
            await self._discard()
            raise

    def _stored_object(self) -> StoredObject:
        assert self._reader is not None and self._mime is not None
        return StoredObject(self.key, self._reader.sha256.hexdigest(), self._reader.size,
                            self._mime, self._filename)

    # -- parser callbacks (synchronous, inside parser.write) ------------------------------

    def _callbacks(self) -> Any:
        def on_part_begin() -> None:
            self._part = _Part()

        def on_header_field(data: bytes, start: int, end: int) -> None:
            self._hname += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self._hvalue += data[start:end]

        def on_header_end() -> None:
            self._part.headers[self._hname.decode("latin-1").lower()] = self._hvalue
            self._hname = self._hvalue = b""

        def on_headers_finished() -> None:
            disp, params = parse_options_header(self._part.headers.get("content-disposition"))
            if disp != b"form-data" or b"name" not in params:
                raise UploadError(400, "each part needs Content-Disposition: form-data; "
                                       "name=...")
            p = self._part
            p.name = params[b"name"].decode("utf-8", "replace")
            if b"filename" in params:
                p.filename = params[b"filename"].decode("utf-8", "replace")
            ctype = self._part.headers.get("content-type")
            p.content_type = ctype.decode("latin-1") if ctype is not None else None
            if p.name == "file":
                if self._file_seen:
                    raise UploadError(400, "send one `file` part only")
                self._file_seen = True
                self._file_content_type = p.content_type
                try:
                    self._filename = check_filename(p.filename)
                except ValueError as exc:
                    raise UploadError(400, str(exc)) from None
            elif p.name == "metadata":
                if self._metadata_done or self._meta:
                    raise UploadError(400, "send one `metadata` part only")
            else:
                raise UploadError(400, f"unexpected form field {p.name!r}: send `metadata` "
                                       f"and `file`")

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if self._part.name == "metadata":
                self._meta += data[start:end]
                if len(self._meta) > METADATA_LIMIT:
                    raise UploadError(400, "the metadata part is larger than 64 KiB")
                return
            self._size += end - start
            if self._size > self.max_bytes:
                raise UploadError(413, f"the document is larger than {self.max_bytes} bytes")
            if self._mime is None:
                self._head.append(data[start:end])
                self._head_size += end - start
            else:
                self._pending.append(data[start:end])

        def on_part_end() -> None:
            if self._part.name == "metadata":
                self._metadata_done = True
            elif self._part.name == "file":
                self._file_done = True

        def on_end() -> None:
            self._ended = True

        return {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                "on_header_value": on_header_value, "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
                "on_part_end": on_part_end, "on_end": on_end}

    # -- the async side ---------------------------------------------------------------------

    async def _after_write(self) -> None:
        if self._metadata_done and self.meta_result is None:
            self.meta_result = self.on_metadata(bytes(self._meta))
        if self._mime is None and self._head and (
                self._head_size >= mime.SNIFF_BYTES or self._file_done):
            self._start_writer()
        if self._pending:
            assert self._pipe is not None
            for chunk in self._pending:
                await self._pipe.send(chunk)
            self._pending.clear()
            self._check_writer()

    def _declared_mimes(self) -> list[str | None]:
        return [self._file_content_type, getattr(self.meta_result, "mimeType", None)]

    def _start_writer(self) -> None:
        head = b"".join(self._head)
        try:
            self._mime = mime.check(head, self._declared_mimes(), self.allowed)
        except mime.MediaTypeRefused as exc:
            raise UploadError(415, str(exc)) from None
        loop = asyncio.get_running_loop()
        self._pipe = ChunkPipe(loop)
        self._reader = _HashingReader(self._pipe)
        pipe, reader, content_type = self._pipe, self._reader, self._mime

        def write() -> None:
            try:
                self.store.put_stream(self.key, reader, content_type=content_type)
            finally:
                pipe.reader_done()

        self._writer = in_own_thread(write, "upload-writer")
        self._pending[:0] = self._head
        self._head = []

    def _check_writer(self) -> None:
        if self._writer is not None and self._writer.done():
            exc = self._writer.exception()
            if exc is not None:
                raise store_refused(exc)

    async def _finish_file(self) -> None:
        if self._mime is None:  # an empty file: nothing to sniff
            raise UploadError(400, "the `file` part is empty")
        assert self._pipe is not None and self._writer is not None
        self._pipe.close()
        try:
            await self._writer
        except Exception as exc:
            raise store_refused(exc) from exc
        self._stored = True

    async def _discard(self) -> None:
        """Leave nothing behind: abort the writer (which removes its partial object) or
        delete the object it completed."""
        if self._pipe is not None:
            self._pipe.abort()
        if self._writer is not None:
            with contextlib.suppress(Exception):  # its failure is what we are handling
                await asyncio.shield(self._writer)
            if self._writer.done() and not self._writer.exception():
                self._stored = True
        if self._stored:
            try:
                await anyio.to_thread.run_sync(self.store.delete, self.key)
            except Exception:  # the original refusal is what the client must hear
                log.exception("could not remove the object of a refused upload")
            self._stored = False

    async def discard(self) -> None:
        """Undo a completed upload (its index row could not be written)."""
        self._stored = True
        await self._discard()
