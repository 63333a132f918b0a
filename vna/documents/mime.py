"""What a document really is: MIME type sniffed from its first bytes with libmagic.

An uploader's declared type is a claim; the archive stores and serves the sniffed type,
and only when it is on the allow-list and agrees with the claim. Names differ between
tools (`audio/x-wav` vs `audio/wav`), so both sides are mapped to one canonical name.
"""

from __future__ import annotations

from collections.abc import Iterable

import magic

SNIFF_BYTES = 8192  # enough for libmagic to tell every allowed type apart

_ALIASES = {
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg",
    "audio/x-mp3": "audio/mpeg",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/heif": "image/heic",
    "image/x-tiff": "image/tiff",
    "application/x-pdf": "application/pdf",
}
# ISO base media files share one container; its brand says audio or video, and phones and
# recorders are not consistent about which they declare. Treat the family as one claim.
_SAME_CONTAINER = {"audio/mp4": "iso-bmff", "video/mp4": "iso-bmff"}
_UNKNOWN = {"application/octet-stream", "binary/octet-stream", ""}


class MediaTypeRefused(ValueError):
    """The content is not an allowed type or not what the uploader said it is (HTTP 415)."""


def canonical(mime: str) -> str:
    mime = mime.split(";", 1)[0].strip().lower()
    return _ALIASES.get(mime, mime)


def sniff(head: bytes) -> str:
    """The canonical MIME type of content starting with `head`."""
    return canonical(magic.from_buffer(head[:SNIFF_BYTES], mime=True))


def agrees(declared: str, sniffed: str) -> bool:
    d, s = canonical(declared), canonical(sniffed)
    return d == s or (d in _SAME_CONTAINER and _SAME_CONTAINER.get(d) == _SAME_CONTAINER.get(s))


def check(head: bytes, declared: Iterable[str | None], allowed: frozenset[str]) -> str:
    """The sniffed type of a document, or `MediaTypeRefused` saying why not.

    `declared` are the uploader's claims (metadata mimeType, the part's Content-Type);
    absent or generic ones (application/octet-stream) claim nothing.
    """
    sniffed = sniff(head)
    allowed = frozenset(canonical(a) for a in allowed)
    if sniffed not in allowed:
        raise MediaTypeRefused(
            f"content is {sniffed}, which this archive does not accept as a document "
            f"(accepted: {', '.join(sorted(allowed))})")
    for claim in declared:
        if claim is None or canonical(claim) in _UNKNOWN:
            continue
        if not agrees(claim, sniffed):
            raise MediaTypeRefused(f"declared as {canonical(claim)} but the content is "
                                   f"{sniffed}")
    return sniffed
