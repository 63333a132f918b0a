"""A few top-level elements read straight from encoded dataset bytes (PS3.5 7.1).

The index needs about forty attributes of every received instance. pydicom builds a
Dataset of every element before the pixel data to get them: measured in the SCP, that
was 40 % of the Python CPU spent on a tiny instance. This walks the element headers
instead, keeps the raw values of the wanted tags and skips everything else, sequences
included, without decoding it. Whatever it does not understand (an explicit VR that is
not a VR, a value cut off by the end of the bytes) makes it give up, and the caller
reads the dataset with pydicom as before.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

# Explicit VRs with a 4-byte length after two reserved bytes (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_VRS = _LONG_VRS | frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
    b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
UNDEFINED = 0xFFFFFFFF
_ITEM_END = 0xFFFEE00D


class _GiveUp(Exception):
    pass


class ElementReader:
    """Reads the top-level elements with the wanted tags, up to the last of them."""

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
                if vr not in _VRS:
                    raise _GiveUp()
                if vr in _LONG_VRS:
                    (length,) = struct.unpack_from(long_fmt, data, pos + 8)
                    pos += 12
                else:
                    (length,) = struct.unpack_from(short_fmt, data, pos + 6)
                    pos += 8
            if length == UNDEFINED:
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
            if length == UNDEFINED:
                pos = self._elements(data, pos, implicit, e, None)
            else:
                pos += length
        raise _GiveUp()
