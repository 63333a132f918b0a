"""An archived instance in another transfer syntax (PS3.18 8.7.3.5: a WADO-RS client that
asks for one the instance is not stored in).

Uncompressed targets (Explicit and Implicit VR Little Endian) are reached from every
syntax pydicom can decode: compressed pixel data is decoded by pydicom's plugins
(pylibjpeg, openjpeg, RLE, GDCM, JPEG-LS), exactly as `Dataset.decompress` does, a
deflated dataset is inflated, a big endian one has its binary values swapped. No
compressed target is offered, so a request for one the instance is not stored in is a 406:
pydicom's encoders cover few syntaxes and bit depths, and GDCM's RLE encoder, which pydicom
picks first, aborts the whole process on some images (seen on an odd-sized RGB image). The
whole instance is in memory while it is transcoded: one instance at a time.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID

from vna.dicom.frames import can_decode, to_little_endian
from vna.dicom.mediatypes import (
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    NATIVE_SYNTAXES,
)

TARGETS = frozenset({EXPLICIT_LE, IMPLICIT_LE})
# bytes per word of the VRs whose values are swapped word by word between byte orders
WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class TranscodeError(ValueError):
    pass


def can_transcode(stored: str, target: str) -> bool:
    """Whether an instance stored in `stored` can be sent in `target`."""
    if target == stored:
        return True
    if target not in TARGETS:
        return False
    return stored in NATIVE_SYNTAXES or can_decode(stored)


def transcode(source: str | Path | BinaryIO, target: str) -> bytes:
    """The Part 10 file at `source` re-encoded in `target` (a `TARGETS` syntax)."""
    ds = dcmread(source, force=True)
    stored = str(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_LE))
    try:
        if stored == EXPLICIT_BE:
            _swap_to_little_endian(ds)
        elif stored not in NATIVE_SYNTAXES and _has_pixels(ds):
            ds.decompress(generate_instance_uid=False)  # the same instance, re-encoded
        ds.file_meta.TransferSyntaxUID = UID(target)
        out = io.BytesIO()
        dcmwrite(out, ds, implicit_vr=target == IMPLICIT_LE, little_endian=True,
                 enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001 - every codec raises its own
        raise TranscodeError(f"cannot transcode {ds.get('SOPInstanceUID', '?')} from "
                             f"{stored} to {target}: {type(exc).__name__}: {exc}") from None
    return out.getvalue()


def _has_pixels(ds: Dataset) -> bool:
    return "PixelData" in ds


def _swap_to_little_endian(ds: Dataset) -> None:
    """Swap the binary values of a big endian dataset (parsed values, such as US or FL,
    are encoded again by pydicom in the new byte order); Pixel Data by Bits Allocated."""
    bits = int(ds.get("BitsAllocated") or 16)
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_to_little_endian(item)
            continue
        width = WORD_SIZE.get(elem.VR)
        if width is None or not isinstance(elem.value, bytes | bytearray):
            continue
        if elem.tag == 0x7FE00010 and bits > 8:
            width = bits // 8
        elem.value = to_little_endian(bytes(elem.value), width)
