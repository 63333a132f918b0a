"""DICOM files (PS3.10) as bytes: the file meta, the dataset's elements, the hash.

Every path into the archive reads or writes Part 10 files here: the C-STORE receive paths
(a file meta built from the C-STORE-RQ, then the dataset as received), `vna import`
(a file as it is on disk), and STOW-RS (a part as the client sent it). What the archive
needs of a file (`ReceivedFile`: transfer syntax, where the dataset starts, SHA-256,
size and the dataset's first bytes) is learnt while it is written (`Part10Writer`) or in
one read (`hash_file`), never by decoding the dataset.

Reading stays byte-level wherever it can: the file meta is walked directly, and the
index's attributes are read from the element headers (`ElementReader`); pydicom reads
what these give up on (`read_header`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

# -- value representations ------------------------------------------------------------------

# Explicit VRs with a 4-byte length after two reserved bytes (PS3.5 Table 7.1-1); the
# others have a 2-byte length.
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})
VRS = LONG_VRS | frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
    b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
UNDEFINED_LENGTH = 0xFFFFFFFF

_SHORT_LE = struct.Struct("<HH2sH")
_LONG_LE = struct.Struct("<HH2s2xI")
_UL_LE = struct.Struct("<I")


def _explicit_le(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One element in explicit VR little endian."""
    header = _LONG_LE if vr in LONG_VRS else _SHORT_LE
    return header.pack(group, elem, vr, len(value)) + value


def pad(value: str, padding: bytes) -> bytes:
    """An ASCII value padded to even length (UIDs with NUL, text with a space: PS3.5 6.2)."""
    raw = value.encode("ascii")
    return raw + padding if len(raw) % 2 else raw


# -- file meta --------------------------------------------------------------------------------

PREAMBLE = b"\x00" * 128 + b"DICM"  # PS3.10 7.1: 128 bytes the archive leaves empty


class FileMeta(NamedTuple):
    """The file meta elements vna writes in front of a dataset received over DIMSE."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    implementation_uid: str
    implementation_version: str


def encode_file_meta(meta: FileMeta) -> bytes:
    """Group 0002 (PS3.10 7.1), as pydicom's write_file_meta_info writes the same elements."""
    body = b"".join((
        _explicit_le(2, 0x0001, b"OB", b"\x00\x01"),
        _explicit_le(2, 0x0002, b"UI", pad(str(meta.sop_class_uid), b"\x00")),
        _explicit_le(2, 0x0003, b"UI", pad(str(meta.sop_instance_uid), b"\x00")),
        _explicit_le(2, 0x0010, b"UI", pad(str(meta.transfer_syntax), b"\x00")),
        _explicit_le(2, 0x0012, b"UI", pad(str(meta.implementation_uid), b"\x00")),
        _explicit_le(2, 0x0013, b"SH", pad(str(meta.implementation_version), b" ")),
    ))
    return _explicit_le(2, 0x0000, b"UL", _UL_LE.pack(len(body))) + body


_META_START = len(PREAMBLE) + 12  # after the preamble and the group length element


def lacks_preamble(head: bytes) -> bool:
    """Whether a file starts with its file meta group instead of the preamble and "DICM":
    what pydicom's `dcmwrite` writes for a dataset that has no preamble (dicomweb-client's
    STOW-RS sends those). `head`: the first len(PREAMBLE) bytes, or the whole file if
    shorter."""
    return head[128:132] != b"DICM" and len(head) >= 8 and head[:2] == b"\x02\x00" and \
        head[4:6] in VRS


def parse_file_meta(data: bytes) -> tuple[str, int] | None:
    """Transfer syntax and dataset offset from the first bytes of a Part 10 file, or None
    if they do not start with a preamble and a group length or hold no transfer syntax."""
    if len(data) < _META_START or data[128:132] != b"DICM" or \
            data[132:138] != b"\x02\x00\x00\x00UL":
        return None
    (group_len,) = _UL_LE.unpack_from(data, 140)
    end = _META_START + group_len
    pos, limit = _META_START, min(end, len(data))
    while pos + 8 <= limit:
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4:pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(data):  # the group ends inside this element's header
                return None
            (length,) = _UL_LE.unpack_from(data, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8
        if (group, elem) == (2, 0x0010):
            return data[pos:pos + length].rstrip(b"\x00 ").decode("ascii", "replace"), end
        pos += length
    return None


def read_transfer_syntax(path: str | Path) -> tuple[str, int]:
    """Transfer syntax ("" if the file meta has none) and dataset offset of a Part 10 file.

    A direct read of the (explicit VR little endian) file meta; a file meta without a
    group length goes through pydicom. Raises what pydicom raises for a file that is not
    Part 10."""
    with open(path, "rb") as f:
        head = f.read(_META_START)
        if len(head) == _META_START and head[128:132] == b"DICM" and \
                head[132:138] == b"\x02\x00\x00\x00UL":
            parsed = parse_file_meta(head + f.read(_UL_LE.unpack_from(head, 140)[0]))
            if parsed is not None:
                return parsed
    return _read_file_meta_with_pydicom(path)


def _read_file_meta_with_pydicom(path: str | Path) -> tuple[str, int]:
    def after_group_0002(tag: Any, _vr: Any, _length: int) -> bool:
        return int(tag) >> 16 != 0x0002

    with open(path, "rb") as f:
        read_preamble(f, False)
        meta = read_dataset(f, is_implicit_VR=False, is_little_endian=True,
                            stop_when=after_group_0002)
        return str(meta.get("TransferSyntaxUID", "") or ""), f.tell()


# -- the dataset ---------------------------------------------------------------------------

# The transfer syntaxes the archive takes in: the DICOM service negotiates these for every
# storage SOP class, and STOW-RS refuses a part whose file meta names another. JPIP ones
# are left out: their pixel data is a URL elsewhere, not in the file.
ACCEPTED_TRANSFER_SYNTAXES = tuple(str(t) for t in AllTransferSyntaxes if "JPIP" not in t.name)



def dataset_encoding(transfer_syntax: str) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) of a dataset whose bytes can be walked as they are,
    or None: a deflated dataset, or a transfer syntax that is not the standard's."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian or \
            not transfer_syntax.startswith("1.2.840.10008.1.2"):
        return None
    return transfer_syntax == ImplicitVRLittleEndian, transfer_syntax != ExplicitVRBigEndian


# The pixel data elements (PS3.3 C.7.6.3, C.7.6.24): what a header read stops before and
# what DICOMweb serves as bulk data or frames.
PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData",
              0x7FE00009: "DoubleFloatPixelData"}


def before_pixels(tag: Any, _vr: Any, _length: int) -> bool:
    """pydicom's `stop_when` for a header read: Float/Double Float/Pixel Data and what
    follows."""
    return int(tag) >= 0x7FE00008


def read_header(path: str | Path, transfer_syntax: str, offset: int) -> Dataset:
    """The dataset up to the pixel data, read by pydicom from `offset` with the known
    transfer syntax (dcmread would parse the file meta a second time)."""
    encoding = dataset_encoding(transfer_syntax)
    if encoding is None:
        return dcmread(path, stop_before_pixels=True)
    implicit, little = encoding
    with open(path, "rb") as f:
        f.seek(offset)
        return read_dataset(f, is_implicit_VR=implicit, is_little_endian=little,
                            stop_when=before_pixels)


class _GiveUp(Exception):
    pass


_ITEM_END = 0xFFFEE00D


class ElementReader:
    """Reads the top-level elements with the wanted tags from encoded dataset bytes, up
    to the last of them (PS3.5 7.1).

    The index needs about forty attributes of every received instance. pydicom builds a
    Dataset of every element before the pixel data to get them: measured in the SCP, that
    was 40 % of the Python CPU spent on a tiny instance. This walks the element headers
    instead, keeps the raw values of the wanted tags and skips everything else, sequences
    included, without decoding it. Whatever it does not understand (an explicit VR that is
    not a VR, a value cut off by the end of the bytes) makes it give up, and the caller
    reads the dataset with pydicom (`read_header`).
    """

    def __init__(self, wanted: Iterable[int]) -> None:
        self.wanted = frozenset(wanted)
        self.last = max(self.wanted)

    def read(self, data: bytes, *, implicit_vr: bool, little_endian: bool,
             complete: bool) -> dict[int, tuple[bytes | None, bytes]] | None:
        """{tag: (explicit VR or None, value bytes)} of the wanted elements present, or None
        if the bytes cannot be read here. `complete`: `data` is the whole dataset (so it
        may end before the last wanted tag); otherwise it must reach past that tag."""
        found: dict[int, tuple[bytes | None, bytes]] = {}
        try:
            pos = self._elements(data, 0, implicit_vr, "<" if little_endian else ">", found)
        except (_GiveUp, struct.error):
            return None
        if pos < 0:  # stopped past the last wanted tag
            return found
        return found if complete and pos == len(data) else None

    def _elements(self, data: bytes, pos: int, implicit: bool, e: str,
                  found: dict[int, tuple[bytes | None, bytes]] | None) -> int:
        """Read elements from `pos`: at the top level (`found` given) until past the last
        wanted tag (returns -1) or the end; inside an item until its delimiter. Returns
        the position after what was read."""
        end = len(data)
        tag_fmt, short_fmt, long_fmt = e + "HH", e + "H", e + "I"
        while pos + 8 <= end:
            group, elem = struct.unpack_from(tag_fmt, data, pos)
            tag = group << 16 | elem
            if found is not None and tag > self.last:
                return -1
            if group == 0xFFFE:
                if tag == _ITEM_END and found is None:
                    return pos + 8
                raise _GiveUp()  # an item or delimiter where an element belongs
            vr: bytes | None
            if implicit:
                vr = None
                (length,) = struct.unpack_from(long_fmt, data, pos + 4)
                pos += 8
            else:
                vr = data[pos + 4:pos + 6]
                if vr not in VRS:
                    raise _GiveUp()
                if vr in LONG_VRS:
                    (length,) = struct.unpack_from(long_fmt, data, pos + 8)
                    pos += 12
                else:
                    (length,) = struct.unpack_from(short_fmt, data, pos + 6)
                    pos += 8
            if length == UNDEFINED_LENGTH:
                if vr not in (None, b"SQ", b"UN"):
                    raise _GiveUp()  # undefined length that is not a sequence
                # UN of undefined length: a sequence in implicit VR little endian
                if vr == b"UN":
                    pos = self._skip_sequence(data, pos, True, "<")
                else:
                    pos = self._skip_sequence(data, pos, implicit, e)
                continue
            if pos + length > end:
                raise _GiveUp()
            if found is not None and tag in self.wanted:
                found[tag] = (vr, data[pos:pos + length])
            pos += length
        if found is None:
            raise _GiveUp()  # an item without its end
        return pos

    def _skip_sequence(self, data: bytes, pos: int, implicit: bool, e: str) -> int:
        """Past an undefined-length sequence: its items, then its delimiter."""
        while pos + 8 <= len(data):
            tag = struct.unpack_from(e + "HH", data, pos)
            (length,) = struct.unpack_from(e + "I", data, pos + 4)
            pos += 8
            if tag == (0xFFFE, 0xE0DD):
                return pos
            if tag != (0xFFFE, 0xE000):
                raise _GiveUp()
            if length == UNDEFINED_LENGTH:
                pos = self._elements(data, pos, implicit, e, None)
            else:
                pos += length
        raise _GiveUp()


# -- a file as the archive takes it -----------------------------------------------------------

HEADER_BYTES = 256 << 10  # of a dataset, kept in memory to read the header from


@dataclass(frozen=True)
class ReceivedFile:
    """A Part 10 file with what is known of it: transfer syntax, hash, size and the first
    bytes of its dataset. Whoever writes the file learns all of it on the way
    (`Part10Writer`), so the archive reads nothing of it back."""

    path: str | Path
    transfer_syntax_uid: str
    dataset_offset: int
    sha256: str
    size: int
    dataset_head: bytes  # the dataset's first HEADER_BYTES: all of a small one

    @property
    def whole_dataset(self) -> bool:
        return self.dataset_offset + len(self.dataset_head) == self.size


def _write_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """One writev, then what a short write left (a full disk answers with an error next)."""
    written = os.writev(fd, parts)
    for part in parts:
        if written >= len(part):
            written -= len(part)
            continue
        view, written = memoryview(part)[written:], 0
        while view:
            view = view[os.write(fd, view):]


class Part10Writer:
    """A Part 10 file written as its bytes arrive, hashed on the way, with the first
    HEADER_BYTES kept in memory: `finish` gives its `ReceivedFile` without reading it back.

    With `file_meta` (a dataset received over DIMSE) the preamble and that file meta go
    out with the first bytes, and the bytes written are the dataset. Without (a STOW-RS
    part, a file copied in) the bytes are the whole file, whose file meta `finish` reads.
    Opening and writing raise OSError (a full disk); the file is then to be discarded.
    """

    def __init__(self, path: str, file_meta: FileMeta | None = None) -> None:
        self.path = path
        self._prefix = PREAMBLE + encode_file_meta(file_meta) if file_meta else b""
        self._transfer_syntax = file_meta.transfer_syntax if file_meta else None
        self._dataset_offset = self._size = len(self._prefix)
        self._hash = hashlib.sha256(self._prefix)
        self._head: list[bytes] = []
        self._head_size = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, data: bytes | memoryview) -> None:
        if self._prefix:  # one writev with the first bytes
            _write_all(self._fd, [self._prefix, data])
            self._prefix = b""
        else:
            _write_all(self._fd, [data])
        self._hash.update(data)
        self._size += len(data)
        if self._head_size < HEADER_BYTES:
            part = bytes(data[:HEADER_BYTES - self._head_size])
            self._head.append(part)
            self._head_size += len(part)

    def finish(self) -> ReceivedFile:
        """The complete file. Raises ValueError for a stream that is not a Part 10 file."""
        if self._prefix:  # nothing was written: the file meta alone
            _write_all(self._fd, [self._prefix])
            self._prefix = b""
        self.close()
        head = b"".join(self._head)
        if self._transfer_syntax is not None:
            return ReceivedFile(self.path, self._transfer_syntax, self._dataset_offset,
                                self._hash.hexdigest(), self._size, head)
        parsed = parse_file_meta(head)
        if parsed is None:
            try:
                parsed = read_transfer_syntax(self.path)
            except Exception as exc:  # pydicom's InvalidDicomError and friends
                raise ValueError(f"not a DICOM Part 10 file: {exc}") from exc
        ts, offset = parsed
        if not ts:
            raise ValueError("not a DICOM Part 10 file (no transfer syntax in file meta)")
        return ReceivedFile(self.path, ts, offset, self._hash.hexdigest(), self._size,
                            head[offset:])

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def hash_file(path: str | Path, head: tuple[int, int] = (0, 0)) -> tuple[str, int, bytes]:
    """SHA-256 and size of a file, and the `head[1]` bytes from offset `head[0]`."""
    h = hashlib.sha256()
    size = 0
    start, length = head
    kept = b""
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            if len(kept) < length and size + len(chunk) > start:
                kept += chunk[max(start - size, 0):][:length - len(kept)]
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size, kept


def dataset_sha256(stream: IO[bytes], offset: int) -> str:
    """SHA-256 of a Part 10 stream's dataset, i.e. without preamble and file meta: what
    two senders of the same instance agree on (their file meta differ)."""
    h = hashlib.sha256()
    skip = offset
    while chunk := stream.read(1 << 20):
        if skip:
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        h.update(chunk)
    return h.hexdigest()
