"""A streaming multipart reader: body chunks in, part events out, in constant memory.

python-multipart parses with synchronous callbacks from inside `write`; awaiting there is
impossible, so a consumer that must wait (for room in a pipe to the object store, for a
file write) would have to buffer whatever the parser runs ahead. Here each chunk becomes a
short list of events instead, handed out one by one: the next chunk is read only once the
consumer has dealt with the last event, so memory stays at about one network read.

Nothing here knows what a part means. The document upload (`multipart/form-data`: a
`metadata` and a `file` part) is one user; STOW-RS (`multipart/related;
type="application/dicom"`: one DICOM instance per part) is meant to be the next:

    boundary = boundary_of(request.headers.get("content-type"), "multipart/related")
    async with contextlib.aclosing(read_parts(request.stream(), boundary)) as events:
        async for event in events:
            match event:
                case PartStart():
                    ...  # check event.content_type, open a file
                case PartData(data=data):
                    ...  # write data to it
                case PartEnd():
                    ...  # close it, store the instance

`read_parts` ends normally only after the closing boundary; a body that stops before it
raises `TruncatedBody`, one that is not multipart as announced raises `MalformedBody`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_HEADER_COUNT = 8  # per part; form-data and DICOM parts need two or three


class MultipartError(ValueError):
    """The body is not a complete multipart body."""


class MalformedBody(MultipartError):
    """The body does not follow the multipart syntax (or its boundary is unusable)."""


class TruncatedBody(MultipartError):
    """The body ended before its closing boundary: cut off, or never finished."""


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part begins. `headers`: names in lower case, values as sent."""

    headers: Mapping[str, bytes]

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return value.decode("latin-1") if value is not None else None

    @property
    def disposition(self) -> tuple[str, dict[str, str]]:
        """Content-Disposition's type (lower case, "" without one) and its parameters;
        parameters are decoded as UTF-8, which is how browsers and curl send filenames."""
        kind, params = parse_options_header(self.headers.get("content-disposition"))
        return kind.decode("latin-1"), {k.decode("latin-1").lower(): v.decode("utf-8", "replace")
                                        for k, v in params.items()}


@dataclass(frozen=True, slots=True)
class PartData:
    """The next bytes of the current part's body."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part's body is complete."""


Event = PartStart | PartData | PartEnd
_PART_END = PartEnd()


def boundary_of(content_type: str | None, media_type: str) -> bytes | None:
    """The boundary of a body whose Content-Type is `media_type` (e.g.
    "multipart/form-data"); None if it is another type or names no boundary."""
    kind, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    return boundary if kind == media_type.encode("latin-1") and boundary else None


class MultipartReader:
    """The parser without I/O: `feed` it chunks, it returns the events each one completes.

    Header lines are bounded by python-multipart (count and size); part bodies are never
    held here, only handed on.
    """

    def __init__(self, boundary: bytes, *, max_header_count: int = MAX_HEADER_COUNT) -> None:
        self._events: list[Event] = []
        self._headers: dict[str, bytes] = {}
        self._name = b""
        self._value = b""
        self.complete = False  # the closing boundary was seen
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks,
                                           max_header_count=max_header_count)
        except FormParserError as exc:  # e.g. a boundary longer than the RFC allows
            raise MalformedBody(str(exc)) from None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events `chunk` completes, in body order; bytes after the closing boundary
        (an epilogue) are ignored. A `PartData` may hold `chunk` itself, not a copy."""
        if self.complete:
            return []
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise MalformedBody(str(exc)) from None
        events, self._events = self._events, []
        return events

    # -- python-multipart's callbacks (inside `write`) --------------------------------------

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]  # a header may arrive split over two chunks

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._name.decode("latin-1").lower()] = self._value
        self._name = self._value = b""

    def _on_headers_finished(self) -> None:
        self._events.append(PartStart(self._headers))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        # The whole chunk is the common case for a large part: hand it on without a copy.
        self._events.append(PartData(data if start == 0 and end == len(data)
                                     else data[start:end]))

    def _on_part_end(self) -> None:
        self._events.append(_PART_END)

    def _on_end(self) -> None:
        self.complete = True


async def read_parts(body: AsyncIterable[bytes], boundary: bytes, *,
                     max_header_count: int = MAX_HEADER_COUNT) -> AsyncGenerator[Event, None]:
    """The events of a multipart body, read from `body` only as fast as they are taken.

    Ends after the closing boundary (the rest of the body is not read); raises
    `TruncatedBody` if `body` ends first and `MalformedBody` on a syntax error. Whatever
    `body` raises (a client that hung up) passes through. Close it when done early
    (`contextlib.aclosing`).
    """
    reader = MultipartReader(boundary, max_header_count=max_header_count)
    async for chunk in body:
        if not chunk:
            continue
        for event in reader.feed(chunk):
            yield event
        if reader.complete:
            return
    raise TruncatedBody("the multipart body ended before its closing boundary")
