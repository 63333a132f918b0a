"""services/multipart.py: the streaming multipart reader, split at every byte, for both
users it is meant for (form-data uploads, and the multipart/related bodies of STOW-RS)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from services.multipart import (
    Event,
    MalformedBody,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    TruncatedBody,
    boundary_of,
    read_parts,
)

FORM = (b"--xyz\r\n"
        b'Content-Disposition: form-data; name="metadata"\r\n'
        b"Content-Type: application/json\r\n\r\n"
        b'{"a": 1}\r\n'
        b"--xyz\r\n"
        b'Content-Disposition: form-data; name="file"; filename="r\xc3\xa9sum\xc3\xa9.pdf"\r\n'
        b"\r\n"
        b"%PDF-1.4\r\n--xy not the boundary\r\n\r\n-"  # boundary-like bytes in the data
        b"\r\n--xyz--\r\n")
FILE_DATA = b"%PDF-1.4\r\n--xy not the boundary\r\n\r\n-"
RELATED = (b"--dcm\r\nContent-Type: application/dicom\r\n\r\n" + b"\x00" * 128 + b"DICM1"
           b"\r\n--dcm\r\nContent-Type: application/dicom\r\n\r\n" + b"\x00" * 128 + b"DICM2"
           b"\r\n--dcm--\r\n")


def parts(events: list[Event]) -> list[tuple[dict[str, bytes], bytes]]:
    """(headers, body) per part, checking the events come in a valid order."""
    out: list[tuple[dict[str, bytes], bytes]] = []
    current: list[bytes] | None = None
    for ev in events:
        if isinstance(ev, PartStart):
            assert current is None
            current = []
            out.append((dict(ev.headers), b""))
        elif isinstance(ev, PartData):
            assert current is not None and ev.data
            current.append(ev.data)
        else:
            assert isinstance(ev, PartEnd) and current is not None
            out[-1] = (out[-1][0], b"".join(current))
            current = None
    assert current is None
    return out


def feed(body: bytes, boundary: bytes, cuts: list[int]) -> tuple[list[Event], bool]:
    reader = MultipartReader(boundary)
    events: list[Event] = []
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        events += reader.feed(body[a:b])
    return events, reader.complete


def test_every_split_of_a_form_gives_the_same_parts() -> None:
    whole, complete = feed(FORM, b"xyz", [])
    assert complete
    expected = parts(whole)
    assert [b for _, b in expected] == [b'{"a": 1}', FILE_DATA]
    for cut in range(1, len(FORM)):
        events, complete = feed(FORM, b"xyz", [cut])
        assert complete and parts(events) == expected, cut
    events, complete = feed(FORM, b"xyz", list(range(1, len(FORM))))  # byte by byte
    assert complete and parts(events) == expected


def test_part_headers() -> None:
    events, _ = feed(FORM, b"xyz", [])
    starts = [e for e in events if isinstance(e, PartStart)]
    assert starts[0].content_type == "application/json"
    assert starts[0].disposition == ("form-data", {"name": "metadata"})
    assert starts[1].content_type is None
    assert starts[1].disposition == ("form-data", {"name": "file", "filename": "résumé.pdf"})
    assert PartStart({}).disposition == ("", {})


def test_stow_rs_shaped_body() -> None:
    events, complete = feed(RELATED, b"dcm", [7, 150, 151])
    assert complete
    got = parts(events)
    assert [h["content-type"] for h, _ in got] == [b"application/dicom"] * 2
    assert [b[-5:] for _, b in got] == [b"DICM1", b"DICM2"]


@pytest.mark.parametrize(("header", "media_type", "boundary"), [
    ("multipart/form-data; boundary=abc", "multipart/form-data", b"abc"),
    ('Multipart/Form-Data; boundary="a b"', "multipart/form-data", b"a b"),
    ('multipart/related; type="application/dicom"; boundary=dcm', "multipart/related",
     b"dcm"),
    ("multipart/related; boundary=dcm", "multipart/form-data", None),
    ("multipart/form-data", "multipart/form-data", None),
    ("application/json", "multipart/form-data", None),
    (None, "multipart/form-data", None),
])
def test_boundary_of(header: str | None, media_type: str, boundary: bytes | None) -> None:
    assert boundary_of(header, media_type) == boundary


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


async def _collect(body: AsyncIterator[bytes], boundary: bytes) -> list[Event]:
    async with contextlib.aclosing(read_parts(body, boundary)) as events:
        return [e async for e in events]


def test_read_parts_ends_at_the_closing_boundary_without_reading_on() -> None:
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        for c in (FORM[:50], b"", FORM[50:], b"epilogue"):
            read.append(c)
            yield c

    events = asyncio.run(_collect(body(), b"xyz"))
    assert [b for _, b in parts(events)] == [b'{"a": 1}', FILE_DATA]
    assert b"epilogue" not in read


@pytest.mark.parametrize("cut", [0, 10, 60, len(FORM) - 3])
def test_a_body_cut_off_is_truncated(cut: int) -> None:
    with pytest.raises(TruncatedBody):
        asyncio.run(_collect(_chunks(FORM[:cut]), b"xyz"))


@pytest.mark.parametrize("body", [
    b"garbage before any boundary\r\n--xyz--\r\n",
    b"--xyz\r\nContent Disposition: form-data\r\n\r\nx\r\n--xyz--\r\n",
    b"--xyz\r\n" + b"X-A: b\r\n" * 9 + b"\r\nx\r\n--xyz--\r\n",  # more than 8 headers
    b"--xyz\r\nX-A: " + b"b" * 5000 + b"\r\n\r\nx\r\n--xyz--\r\n",  # a header too long
])
def test_a_malformed_body(body: bytes) -> None:
    with pytest.raises(MalformedBody):
        asyncio.run(_collect(_chunks(body), b"xyz"))


def test_an_unusable_boundary_is_malformed() -> None:
    with pytest.raises(MalformedBody):
        MultipartReader(b"b" * 300)


def test_what_the_body_raises_passes_through() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield FORM[:40]
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        asyncio.run(_collect(body(), b"xyz"))
