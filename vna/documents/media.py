"""Facts read from a document's bytes: pages of a PDF, duration of audio and video, pixel
size of images and video. Read with the libraries the field uses (pypdf, PyAV, Pillow);
what a library cannot tell stays None."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO


@dataclass
class MediaFacts:
    duration_seconds: float | None = None
    pages: int | None = None
    width: int | None = None
    height: int | None = None


def read_facts(f: BinaryIO, mime_type: str) -> MediaFacts:
    """Facts of a seekable binary file of the given (sniffed) type."""
    if mime_type == "application/pdf":
        from pypdf import PdfReader

        return MediaFacts(pages=len(PdfReader(f).pages))
    if mime_type.startswith(("audio/", "video/")):
        return _av_facts(f)
    if mime_type.startswith("image/"):
        from PIL import Image

        try:
            with Image.open(f) as img:
                return MediaFacts(width=img.width, height=img.height)
        except Exception:  # e.g. HEIC without a plugin: fall back to FFmpeg's parsers
            f.seek(0)
            return _av_facts(f)
    return MediaFacts()


def _av_facts(f: BinaryIO) -> MediaFacts:
    import av

    with av.open(f, mode="r") as container:
        facts = MediaFacts()
        if container.duration is not None:
            facts.duration_seconds = round(container.duration / av.time_base, 3)
        video = next(iter(container.streams.video), None)
        if video is not None and video.codec_context.width:
            facts.width, facts.height = video.codec_context.width, video.codec_context.height
        return facts
