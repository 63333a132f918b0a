"""Real media files made in the tests: a PDF (fpdf2), a WAV (stdlib), an H.264 MP4 (PyAV with
libx264) and a JPEG (Pillow)."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterable
from fractions import Fraction

import numpy as np


def make_pdf(pages: int = 2, text: str = "Spirometry report") -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=14)
    for i in range(pages):
        pdf.add_page()
        pdf.cell(text=f"{text}, page {i + 1}")
    return bytes(pdf.output())


def make_wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def make_mp4(frames: int = 50, size: tuple[int, int] = (160, 120)) -> bytes:
    """An H.264 video (yuv420p, 25 fps): frames of a moving gradient, so it does not
    compress to nothing."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 25)
        w, h = size
        base = np.add.outer(np.arange(h), np.arange(w)).astype(np.int64)
        for i in range(frames):
            img = np.stack([(base + i * 3) % 256, base[::-1] % 256,
                            np.full_like(base, i * 5 % 256)], axis=-1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def make_jpeg(size: tuple[int, int] = (320, 240)) -> bytes:
    from PIL import Image

    w, h = size
    img = Image.fromarray((np.add.outer(np.arange(h), np.arange(w)) % 256).astype(np.uint8))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


FormPart = tuple[str, str | None, str | None, bytes]  # name, filename, content type, bytes


def form_body(parts: Iterable[FormPart], boundary: str, end: bool = True) -> bytes:
    """A multipart/form-data body of these parts, in the order given (`end`: with the
    closing boundary)."""
    out = b""
    for name, filename, ctype, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        out += (f"Content-Type: {ctype}\r\n" if ctype else "").encode() + b"\r\n" + data
        out += b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if end else b"")
