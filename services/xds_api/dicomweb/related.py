"""multipart/related answers (RFC 2387, PS3.18 8.7.1.2): WADO-RS's instances, frames and
bulk data, either in memory (a few frames) or streamed part by part from the object store
(a study of any size: a reader thread keeps a few chunks ahead of the client, and memory
stays at those chunks whatever the study's size)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator

from starlette.responses import Response, StreamingResponse

from services.xds_api.content import read_ahead


def new_boundary() -> str:
    return uuid.uuid4().hex


def content_type(related_type: str, boundary: str) -> str:
    return f'multipart/related; type="{related_type}"; boundary={boundary}'


def part_head(boundary: str, part_type: str, location: str | None = None) -> bytes:
    """The delimiter and headers of a part (its content follows, then `part_end`)."""
    head = f"--{boundary}\r\nContent-Type: {part_type}\r\n"
    if location:
        head += f"Content-Location: {location}\r\n"
    return (head + "\r\n").encode()


PART_END = b"\r\n"


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


def multipart_response(related_type: str, parts: Iterable[tuple[str, bytes]],
                       headers: dict[str, str] | None = None) -> Response:
    """An answer of a few parts held in memory: (Content-Type, content) each."""
    boundary = new_boundary()
    body = bytearray()
    for part_type, data in parts:
        body += part_head(boundary, part_type)
        body += data
        body += PART_END
    body += closing(boundary)
    return Response(bytes(body), media_type=content_type(related_type, boundary),
                    headers=headers)


class _ChunkReader:
    """An iterator of chunks as the readable, closable stream `read_ahead` consumes
    (closing it closes the generator, and with it whatever object it had open)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, _n: int = -1) -> bytes:
        for chunk in self._chunks:
            if chunk:
                return chunk
        return b""

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> _ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def streamed_response(related_type: str, boundary: str, chunks: Iterator[bytes],
                      headers: dict[str, str] | None = None) -> StreamingResponse:
    """An answer whose body `chunks` produces (delimiters included), read in a thread of
    its own a few chunks ahead of the client."""
    return StreamingResponse(read_ahead(_ChunkReader(chunks)),  # type: ignore[arg-type]
                             media_type=content_type(related_type, boundary),
                             headers=headers)
