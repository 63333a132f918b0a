"""Media types of WADO-RS (PS3.18 8.7) and what a request's Accept header asks for.

A WADO-RS client names the representation it takes as media ranges such as
`multipart/related; type="application/dicom"; transfer-syntax=*` (the quotes are
optional: OHIF leaves them out with `omitQuotationForMultipartRequest`), several of them
comma-separated, with q-values. This module parses that header and decides, per resource
kind, what vna answers: for instances the transfer syntax of each part (as stored, or one to
transcode to), for frames and bulk data whether a frame goes out as stored or decoded to
native little endian bytes, for renders JPEG or PNG. It knows nothing of HTTP beyond the
header's text, and raises nothing: a None answer means 406.

Without a `transfer-syntax` parameter (or with `*`), instances and compressed frames go out
as stored: what was archived, unchanged (Orthanc and dcm4chee do the same; PS3.18 would
default to Explicit VR Little Endian, which no client of ours relies on).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydicom import uid

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART_RELATED = "multipart/related"
JPEG = "image/jpeg"
PNG = "image/png"
ANY = "*/*"
ANY_SYNTAX = "*"

EXPLICIT_LE = str(uid.ExplicitVRLittleEndian)
IMPLICIT_LE = str(uid.ImplicitVRLittleEndian)
DEFLATED_LE = str(uid.DeflatedExplicitVRLittleEndian)
EXPLICIT_BE = str(uid.ExplicitVRBigEndian)

# Transfer syntaxes whose Pixel Data is native (not encapsulated).
NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE})

# The media type of a compressed frame in each encapsulated transfer syntax (PS3.18
# Table 8.7.3-2 and -3).
FRAME_MEDIA_TYPES: Mapping[str, str] = {
    str(uid.JPEGBaseline8Bit): JPEG,
    str(uid.JPEGExtended12Bit): JPEG,
    str(uid.JPEGLossless): JPEG,
    str(uid.JPEGLosslessSV1): JPEG,
    str(uid.JPEGLSLossless): "image/jls",
    str(uid.JPEGLSNearLossless): "image/jls",
    str(uid.JPEG2000Lossless): "image/jp2",
    str(uid.JPEG2000): "image/jp2",
    str(uid.JPEG2000MCLossless): "image/jpx",
    str(uid.JPEG2000MC): "image/jpx",
    str(uid.HTJ2KLossless): "image/jphc",
    str(uid.HTJ2KLosslessRPCL): "image/jphc",
    str(uid.HTJ2K): "image/jphc",
    str(uid.RLELossless): "image/dicom-rle",
    str(uid.MPEG2MPML): "video/mpeg2",
    str(uid.MPEG2MPHL): "video/mpeg2",
    str(uid.MPEG4HP41): "video/mp4",
    str(uid.MPEG4HP41BD): "video/mp4",
    str(uid.MPEG4HP422D): "video/mp4",
    str(uid.MPEG4HP423D): "video/mp4",
    str(uid.MPEG4HP42STEREO): "video/mp4",
    str(uid.HEVCMP51): "video/mp4",
    str(uid.HEVCM10P51): "video/mp4",
}
_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header: `type/subtype`, its parameters (names lower
    case, values unquoted) and its q-value."""

    media_type: str
    params: Mapping[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def related_type(self) -> str | None:
        """The `type` of a multipart/related range (None if it has none)."""
        t = self.params.get("type")
        return _ALIASES.get(t.lower(), t.lower()) if t else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def covers(self, media_type: str) -> bool:
        """Whether this range's own type takes `media_type` (`*/*`, `image/*`)."""
        return _matches(self.media_type, media_type)


def _matches(pattern: str, media_type: str) -> bool:
    if pattern in (ANY, media_type):
        return True
    return pattern.endswith("/*") and media_type.startswith(pattern[:-1])


def _split(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside double quotes."""
    out: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, most preferred first (by q-value, then in
    the order given); ranges with q=0 are left out. No header (or an empty one) is `*/*`.
    Parts that are not media ranges are skipped, as RFC 9110 allows."""
    if not header or not header.strip():
        return [MediaRange(ANY)]
    ranges: list[MediaRange] = []
    for item in _split(header, ","):
        pieces = _split(item, ";")
        media_type = pieces[0].strip().lower()
        if "/" not in media_type:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"').strip()
            if not name:
                continue
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 1.0
            else:
                params[name] = value
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def takes_json(ranges: list[MediaRange]) -> bool:
    """Whether a client takes the DICOM JSON model: OHIF's composite Accept on /metadata
    (`application/dicom+json, multipart/related; type=...`) does."""
    return any(r.media_type in (DICOM_JSON, "application/json") or r.covers(DICOM_JSON)
               for r in ranges)


# -- instances ----------------------------------------------------------------------------

def _dicom_ranges(ranges: list[MediaRange]) -> list[MediaRange]:
    """The ranges that take DICOM instances: `multipart/related; type=application/dicom`
    (or without a type), a bare `application/dicom`, `*/*`."""
    out = []
    for r in ranges:
        if r.media_type == MULTIPART_RELATED or r.media_type == "multipart/*":
            if r.related_type in (None, DICOM, ANY, "application/*"):
                out.append(r)
        elif r.media_type in (DICOM, ANY, "application/*"):
            out.append(r)
    return out


def instance_syntax(ranges: list[MediaRange], stored: str,
                    can_transcode: Callable[[str, str], bool]) -> str | None:
    """The transfer syntax an instance stored in `stored` goes out in: the first range (in
    the client's order of preference) that takes it as stored, or one it can be transcoded
    to; None if no range can be satisfied (406)."""
    for r in _dicom_ranges(ranges):
        wanted = r.transfer_syntax
        if wanted in (None, ANY_SYNTAX, stored):
            return stored
        if can_transcode(stored, wanted):
            return wanted
    return None


def takes_instances(ranges: list[MediaRange]) -> bool:
    return bool(_dicom_ranges(ranges))


# -- frames and bulk data ---------------------------------------------------------------------

@dataclass(frozen=True)
class FrameAnswer:
    """How frames go out: as stored (`decode` False: native bytes, or a compressed frame
    in its transfer syntax), or decoded to native little endian bytes; the Content-Type
    of each part."""

    decode: bool
    media_type: str
    transfer_syntax: str

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def frame_answer(ranges: list[MediaRange], stored: str,
                 can_decode: Callable[[str], bool]) -> FrameAnswer | None:
    """How the frames of an instance stored in `stored` answer these ranges, or None (406).

    Native frames are always the raw little endian bytes (`application/octet-stream`,
    Explicit VR Little Endian). A compressed frame goes out as stored for `*/*`, for its
    own media type (`image/jpeg`, ...) and for `application/octet-stream` with
    `transfer-syntax=*` (what OHIF asks, reading the syntax from each part's
    Content-Type); it is decoded for `application/octet-stream` without a transfer syntax
    or with Explicit VR Little Endian.
    """
    native = stored in NATIVE_SYNTAXES
    raw = FrameAnswer(False, OCTET_STREAM, EXPLICIT_LE)
    for r in ranges:
        if r.media_type in (MULTIPART_RELATED, "multipart/*"):
            related = r.related_type or ANY
        elif r.media_type in (ANY, OCTET_STREAM, "application/*") or \
                r.media_type.startswith(("image/", "video/")):
            related = _ALIASES.get(r.media_type, r.media_type)
        else:
            continue
        wanted = r.transfer_syntax
        if native:
            if _matches(related, OCTET_STREAM) and \
                    wanted in (None, ANY_SYNTAX, EXPLICIT_LE, IMPLICIT_LE, stored):
                return raw
            continue
        own = FRAME_MEDIA_TYPES.get(stored, OCTET_STREAM)
        if related == OCTET_STREAM:
            if wanted in (ANY_SYNTAX, stored):
                return FrameAnswer(False, OCTET_STREAM, stored)
            if wanted in (None, EXPLICIT_LE) and can_decode(stored):
                return FrameAnswer(True, OCTET_STREAM, EXPLICIT_LE)
        elif _matches(related, own):
            if wanted in (None, ANY_SYNTAX, stored):
                return FrameAnswer(False, own, stored)
            if related in (ANY, "application/*") and wanted == EXPLICIT_LE and \
                    can_decode(stored):
                return FrameAnswer(True, OCTET_STREAM, EXPLICIT_LE)
    return None


# -- rendered --------------------------------------------------------------------------------

def rendered_type(ranges: list[MediaRange]) -> str | None:
    """JPEG (the default) or PNG, whichever the client prefers; None (406) for neither."""
    for r in ranges:
        for media_type in (JPEG, PNG):
            if r.covers(media_type):
                return media_type
    return None
