"""Frames of an archived instance's pixel data (PS3.5 8.2, A.4), read from the object with
as few bytes as possible: WADO-RS `/frames`, `/rendered` and Pixel Data bulk data.

The header is read by pydicom up to the pixel data from a seekable stream (a file, or
ranged reads of an S3 object); the pixel data element itself is only located. A native
frame is then one read at its offset; an encapsulated frame is found through the Basic
(or Extended) Offset Table by pydicom's `encaps.get_frame`, which reads only that frame's
fragments (without an offset table it walks the fragment headers). Frames go out as
stored, or decoded by pydicom's decoders (pylibjpeg, openjpeg, RLE, GDCM, JPEG-LS) to
native little endian bytes, as pydicom's own `pixel_array` would give them.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.filereader import read_dataset
from pydicom.pixels import get_decoder

from vna.dicom.mediatypes import DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, NATIVE_SYNTAXES
from vna.dicom.part10 import ACCEPTED_TRANSFER_SYNTAXES, PIXEL_TAGS, before_pixels

_UNDEFINED = 0xFFFFFFFF


class FrameError(ValueError):
    """The pixel data does not hold the frame its header promises (a damaged object)."""


class DecodeError(FrameError):
    """A frame none of the installed decoders could decode (a codec that is missing here,
    such as 12-bit JPEG, or data it does not understand)."""


@dataclass(frozen=True)
class PixelModule:
    """What decoding a frame needs of the Image Pixel module (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int
    keyword: str  # PixelData, FloatPixelData, DoubleFloatPixelData

    @classmethod
    def of(cls, ds: Dataset, keyword: str = "PixelData") -> PixelModule:
        def number(name: str, default: int) -> int:
            value = ds.get(name)
            try:
                return int(value) if value not in (None, "") else default
            except (TypeError, ValueError):
                return default

        bits = number("BitsAllocated", 32 if keyword == "FloatPixelData" else
                      64 if keyword == "DoubleFloatPixelData" else 8)
        return cls(rows=number("Rows", 0), columns=number("Columns", 0),
                   samples_per_pixel=number("SamplesPerPixel", 1), bits_allocated=bits,
                   bits_stored=number("BitsStored", bits),
                   pixel_representation=number("PixelRepresentation", 0),
                   photometric_interpretation=str(ds.get("PhotometricInterpretation") or
                                                  "MONOCHROME2").strip(),
                   planar_configuration=number("PlanarConfiguration", 0),
                   number_of_frames=max(1, number("NumberOfFrames", 1)), keyword=keyword)

    @property
    def frame_bits(self) -> int:
        """The bits of one native frame (YBR_FULL_422 keeps two samples per pixel)."""
        samples = 2 if self.photometric_interpretation == "YBR_FULL_422" and \
            self.samples_per_pixel == 3 else self.samples_per_pixel
        return self.rows * self.columns * samples * self.bits_allocated

    def decoder_options(self) -> dict[str, Any]:
        """One frame, as pydicom's decoders take it from a buffer."""
        return {"rows": self.rows, "columns": self.columns,
                "samples_per_pixel": self.samples_per_pixel,
                "bits_allocated": self.bits_allocated, "bits_stored": self.bits_stored,
                "pixel_representation": self.pixel_representation,
                "photometric_interpretation": self.photometric_interpretation,
                "planar_configuration": self.planar_configuration,
                "number_of_frames": 1, "pixel_keyword": self.keyword}


@dataclass(frozen=True)
class PixelElement:
    """Where the top-level pixel data element's value is in the stream."""

    tag: int
    value_offset: int
    length: int | None  # None: undefined length, encapsulated
    vr: str | None = None  # as encoded (None: implicit VR)

    @property
    def keyword(self) -> str:
        return PIXEL_TAGS[self.tag]


@dataclass
class ImageObject:
    """An instance opened for its frames: the header (everything before the pixel data),
    the stream its pixel data is read from, and where that is."""

    stream: BinaryIO
    transfer_syntax: str
    header: Dataset
    pixel: PixelElement | None

    @property
    def module(self) -> PixelModule:
        if self.pixel is None:
            raise FrameError("the instance has no pixel data")
        return PixelModule.of(self.header, self.pixel.keyword)

    @property
    def number_of_frames(self) -> int:
        return 0 if self.pixel is None else self.module.number_of_frames

    @property
    def encapsulated(self) -> bool:
        return self.pixel is not None and self.pixel.length is None

    def close(self) -> None:
        self.stream.close()


def _encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a dataset as stored (deflated: once inflated)."""
    return transfer_syntax == IMPLICIT_LE, transfer_syntax != EXPLICIT_BE


def open_image(stream: BinaryIO, transfer_syntax: str, dataset_offset: int) -> ImageObject:
    """Read the header of the Part 10 object in the seekable `stream` (its dataset at
    `dataset_offset`) up to the pixel data, and locate that. A deflated dataset is inflated
    into memory first (the only case where the whole object is read)."""
    if transfer_syntax == DEFLATED_LE:
        stream.seek(dataset_offset)
        inflated = zlib.decompress(stream.read(), -zlib.MAX_WBITS)
        stream.close()
        stream, dataset_offset = io.BytesIO(inflated), 0
    implicit, little = _encoding(transfer_syntax)
    stream.seek(dataset_offset)
    header = read_dataset(stream, is_implicit_VR=implicit, is_little_endian=little,
                          stop_when=before_pixels)
    return ImageObject(stream, transfer_syntax, header,
                       _pixel_element(stream, implicit, little))


_EXPLICIT_PIXEL_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN")


def _pixel_element(stream: BinaryIO, implicit: bool, little: bool) -> PixelElement | None:
    start = stream.tell()
    head = stream.read(12)
    if len(head) < 8:
        return None
    e = "<" if little else ">"
    group, elem = struct.unpack_from(e + "HH", head)
    tag = group << 16 | elem
    if tag not in PIXEL_TAGS:
        return None
    if not implicit and head[4:6] in _EXPLICIT_PIXEL_VRS and len(head) == 12:
        (length,) = struct.unpack_from(e + "I", head, 8)
        vr, offset = head[4:6].decode(), start + 12
    elif not implicit and head[4:6].isalpha():  # a short explicit VR: not pixel data
        raise FrameError(f"pixel data with VR {head[4:6]!r}")
    else:  # implicit VR (also where an "explicit" dataset is not, as pydicom allows)
        (length,) = struct.unpack_from(e + "I", head, 4)
        vr, offset = None, start + 8
    return PixelElement(tag, offset, None if length == _UNDEFINED else length, vr)


def check_frame_number(image: ImageObject, number: int) -> None:
    if image.pixel is None:
        raise FrameError("the instance has no pixel data")
    if not 1 <= number <= image.number_of_frames:
        raise IndexError(f"frame {number} is out of range: the instance has "
                         f"{image.number_of_frames} frame(s)")


def stored_frame(image: ImageObject, number: int) -> bytes:
    """Frame `number` (1-based) as stored: a compressed frame in its transfer syntax, or a
    native frame's bytes in little endian byte order (a big endian object's swapped)."""
    check_frame_number(image, number)
    assert image.pixel is not None
    if image.pixel.length is None:
        return _encapsulated_frame(image, number - 1)
    return _native_frame(image, number - 1)


def _encapsulated_frame(image: ImageObject, index: int) -> bytes:
    assert image.pixel is not None
    extended = None
    eot, lengths = image.header.get("ExtendedOffsetTable"), \
        image.header.get("ExtendedOffsetTableLengths")
    if eot and lengths:
        extended = (bytes(eot), bytes(lengths))
    image.stream.seek(image.pixel.value_offset)
    try:
        return get_frame(image.stream, index, extended_offsets=extended,
                         number_of_frames=image.number_of_frames)
    except (ValueError, struct.error) as exc:
        raise FrameError(f"frame {index + 1} cannot be read from the pixel data: {exc}") \
            from None


def _native_frame(image: ImageObject, index: int) -> bytes:
    assert image.pixel is not None and image.pixel.length is not None
    bits = image.module.frame_bits
    first, last = index * bits, (index + 1) * bits
    if bits == 0 or last > image.pixel.length * 8:
        raise FrameError(f"the pixel data ends before frame {index + 1}")
    width = pixel_word_size(image) if image.transfer_syntax == EXPLICIT_BE else 1
    # whole bytes, and whole words where a big endian object's are swapped
    lo, hi = first // 8, -(-last // 8)
    lo, hi = lo - lo % width, min(hi + (-hi) % width, image.pixel.length)
    image.stream.seek(image.pixel.value_offset + lo)
    data = image.stream.read(hi - lo)
    if len(data) < hi - lo:
        raise FrameError(f"the object ends before frame {index + 1}")
    data = to_little_endian(data, width)
    if first % 8 == 0 and last % 8 == 0:
        return data[first // 8 - lo:last // 8 - lo]
    # bit-packed (BitsAllocated 1) frames need not start on a byte
    bitarray = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    return np.packbits(bitarray[first - lo * 8:last - lo * 8], bitorder="little").tobytes()


def to_little_endian(value: bytes, width: int) -> bytes:
    """Big endian words of `width` bytes swapped (a trailing odd byte left as it is)."""
    if width <= 1:
        return value
    usable = len(value) - len(value) % width
    return np.frombuffer(value[:usable], f">u{width}").astype(f"<u{width}").tobytes() + \
        value[usable:]


def pixel_word_size(image: ImageObject) -> int:
    """The byte width a big endian object's native pixel data is swapped by, as pydicom
    reads it: none for OB, 16-bit words for OW of 1 or 8 bits, else Bits Allocated."""
    assert image.pixel is not None
    vr = image.pixel.vr or "OW"
    if vr == "OB":
        return 1
    if vr in ("OF", "OD"):
        return 4 if vr == "OF" else 8
    bits = image.module.bits_allocated
    return 2 if bits <= 8 else bits // 8


@functools.cache
def _gdcm_only_as_last_resort() -> None:
    """Decode with GDCM only where nothing else can (JPEG lossless here): GDCM is a C++
    library that aborts the whole process on some malformed data it is handed (seen here
    on an odd-sized RGB image), which in `vna api` would end every request in flight.
    pylibjpeg, openjpeg, Pillow, pyjpegls and pydicom's RLE raise exceptions instead."""
    for ts in ACCEPTED_TRANSFER_SYNTAXES:
        try:
            decoder = get_decoder(ts)
        except (NotImplementedError, ValueError):
            continue
        available = set(decoder.available_plugins)
        if "gdcm" in available and available - {"gdcm"}:
            decoder.remove_plugin("gdcm")


def can_decode(transfer_syntax: str) -> bool:
    """Whether frames in this transfer syntax can be decoded here (a plugin is installed)."""
    if transfer_syntax in NATIVE_SYNTAXES:
        return True
    _gdcm_only_as_last_resort()
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def decode_frame(image: ImageObject, number: int) -> np.ndarray:
    """Frame `number` decoded, as pydicom's `pixel_array` gives it (YBR converted to RGB,
    bits unpacked)."""
    frame = stored_frame(image, number)
    m = image.module
    _gdcm_only_as_last_resort()
    if image.encapsulated:
        decoder = get_decoder(image.transfer_syntax)
        source: bytes = encapsulate([frame], has_bot=False)
    else:
        decoder = get_decoder(EXPLICIT_LE)  # stored_frame gave little endian bytes
        source = frame
    try:
        arr, _ = decoder.as_array(source, **m.decoder_options())
    except Exception as exc:  # noqa: BLE001 - every codec raises its own
        raise DecodeError(f"frame {number} cannot be decoded: {type(exc).__name__}: "
                         f"{exc}") from None
    return arr


def native_bytes(arr: np.ndarray) -> bytes:
    """A decoded frame's native little endian bytes (Explicit VR Little Endian's)."""
    if arr.dtype.itemsize > 1 and arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr).tobytes()


def decoded_frame_bytes(image: ImageObject, number: int) -> bytes:
    """Frame `number` as native little endian bytes, decoded if it is compressed."""
    if not image.encapsulated:
        return stored_frame(image, number)
    return native_bytes(decode_frame(image, number))



MAX_FRAMES_PER_REQUEST = 10_000


def parse_frame_numbers(text: str) -> list[int]:
    """The frame list of a `/frames/{list}` URL (PS3.18 8.3.3.1: `1,3,5`), in the order
    given; ValueError if it is not a comma-separated list of numbers. (Whether each frame
    exists is for the instance to say: 0 is a well-formed number of no frame.)"""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > MAX_FRAMES_PER_REQUEST or \
            not all(re.fullmatch(r"[0-9]{1,9}", p) for p in parts):
        raise ValueError(f"{text!r} is not a comma-separated list of frame numbers")
    return [int(p) for p in parts]
