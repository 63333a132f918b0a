"""Serving a document's bytes: single byte ranges (what audio/video players seek with),
ETag / If-None-Match / If-Range, and a Content-Disposition that cannot carry a path."""

from __future__ import annotations

import asyncio
import mimetypes
import re
import threading
import time
import unicodedata
from collections.abc import AsyncIterator
from typing import BinaryIO
from urllib.parse import quote

from fastapi import HTTPException
from starlette.responses import Response, StreamingResponse

from services.xds_api.threads import in_own_thread
from storage.objectstore import STREAM_CHUNK, ObjectStore

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(ValueError):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a `Range` header asks for, or None for the whole file.

    Several ranges in one request, or a malformed one, are answered with the whole file
    (RFC 9110 lets a server ignore Range); players ask for one range at a time. A range
    that starts past the end raises `RangeNotSatisfiable` (416).
    """
    if not header:
        return None
    header = header.strip().replace(" ", "")
    if "," in header or not header.startswith("bytes="):
        return None
    m = _RANGE.match(header)
    if m is None or m.group(1) == m.group(2) == "":
        return None  # not a byte range we understand: RFC 9110 says ignore it
    first, last = m.group(1), m.group(2)
    if first == "":  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable("an empty suffix range selects nothing")
        return max(0, size - n), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid (last before first): ignored, as RFC 9110 asks
    if start >= size:
        raise RangeNotSatisfiable(f"range {header} is outside the {size} bytes of the document")
    return start, min(int(last), size - 1) if last else size - 1


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def content_disposition(filename: str | None, unique_id: str, mime_type: str) -> str:
    """`inline` with an ASCII fallback name and the UTF-8 original (RFC 6266)."""
    name = filename or (unique_id + (mimetypes.guess_extension(mime_type) or ""))
    name = name.replace("\\", "_").replace("/", "_")
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r'[^A-Za-z0-9._\- ()]', "_", ascii_name).strip() or "document"
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def content_response(store: ObjectStore, *, key: str, size: int, sha256: str, mime_type: str,
                     filename: str | None, unique_id: str, range_header: str | None,
                     if_none_match: str | None, if_range: str | None) -> Response:
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, no-cache",
               "X-Content-Type-Options": "nosniff",
               "Content-Disposition": content_disposition(filename, unique_id, mime_type)}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    if if_range is not None and if_range.strip() != etag:
        range_header = None  # the client's copy is stale: send the whole document
    try:
        byte_range = parse_range(range_header, size)
    except RangeNotSatisfiable as exc:
        raise HTTPException(416, str(exc), headers={"Content-Range": f"bytes */{size}"}) \
            from None
    start, end = byte_range if byte_range else (0, size - 1)
    length = end - start + 1 if size else 0
    headers["Content-Length"] = str(length)
    status = 200
    if byte_range is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    # Opened here, so that a missing object is an error answer, not a truncated 200.
    body = read_ahead(store.open_range(key, start, length)) if length else _nothing()
    return StreamingResponse(body, status_code=status, media_type=mime_type, headers=headers)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


IDLE_SECONDS = 600.0  # a client that reads nothing for this long loses its reader


async def read_ahead(stream: BinaryIO, depth: int = 4) -> AsyncIterator[bytes]:
    """The stream's chunks, read by a thread of its own up to `depth` chunks ahead.

    Reading from the store and sending to the client overlap instead of taking turns, which
    is what makes a download through the API nearly as fast as one from S3 directly. The
    thread closes the stream however the response ends: done, client gone, or a client
    that stopped reading for IDLE_SECONDS.
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
    room = threading.Semaphore(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            with stream:
                idle_since = time.monotonic()
                while not stop.is_set():
                    if not room.acquire(timeout=0.5):
                        if time.monotonic() - idle_since > IDLE_SECONDS:
                            return
                        continue
                    idle_since = time.monotonic()
                    data = stream.read(STREAM_CHUNK)
                    loop.call_soon_threadsafe(chunks.put_nowait, data)
                    if not data:
                        return
        except BaseException as exc:
            loop.call_soon_threadsafe(chunks.put_nowait, exc)

    in_own_thread(produce, "download-reader")
    try:
        while True:
            item = await chunks.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            room.release()
            yield item
    finally:
        stop.set()  # the client is gone or done: the reader stops within 0.5 s
