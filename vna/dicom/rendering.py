"""Rendered images of a frame (PS3.18 8.3.5.1, 10.4.1.1.3): WADO-RS `/rendered` and
`/thumbnail` as JPEG or PNG, for browsers and thumbnails, not for diagnosis.

Grayscale goes through the Modality LUT (Rescale Slope/Intercept, or a Modality LUT
Sequence) and a VOI window: the `window` query parameter (`center,width[,function]`),
else the dataset's first Window Center/Width, else a VOI LUT Sequence, else the frame's
own range; MONOCHROME1 is inverted. Colour arrives as RGB from the decoders (YBR converted
by pydicom); PALETTE COLOR goes through its LUT. `viewport=width,height` scales the image
to fit, keeping its aspect ratio. Pillow encodes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from vna.dicom.mediatypes import JPEG, PNG

THUMBNAIL_SIZE = (128, 128)
MAX_VIEWPORT = 8192
_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


class InvalidRenderParameter(ValueError):
    pass


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "LINEAR"

    @classmethod
    def parse(cls, text: str) -> Window:
        """The `window` parameter: `center,width[,function]`."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (2, 3):
            raise InvalidRenderParameter(f"window={text!r}: expected center,width[,function]")
        try:
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise InvalidRenderParameter(f"window={text!r}: center and width must be "
                                         "numbers") from None
        function = parts[2].upper() if len(parts) == 3 else "LINEAR"
        if function not in _FUNCTIONS:
            raise InvalidRenderParameter(f"window={text!r}: the function must be one of "
                                         f"{', '.join(f.lower() for f in _FUNCTIONS)}")
        if not (math.isfinite(center) and math.isfinite(width)) or width <= 0 or \
                (function == "LINEAR" and width < 1):
            raise InvalidRenderParameter(f"window={text!r}: the width must be positive "
                                         "(at least 1 for a linear window)")
        return cls(center, width, function)

    @classmethod
    def of(cls, ds: Dataset) -> Window | None:
        """The dataset's first window, if it has a usable one."""
        def first(name: str) -> float | None:
            value = ds.get(name)
            if isinstance(value, MultiValue | list | tuple):
                value = value[0] if len(value) else None
            try:
                return None if value is None or value == "" else float(value)
            except (TypeError, ValueError):
                return None

        center, width = first("WindowCenter"), first("WindowWidth")
        if center is None or width is None or not width > 0:
            return None
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        if function not in _FUNCTIONS:
            function = "LINEAR"
        if function == "LINEAR" and width < 1:
            function = "LINEAR_EXACT"
        return cls(center, width, function)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Values mapped to 0..255 (float)."""
        c, w = self.center, self.width
        x = values.astype(np.float64)
        if self.function == "LINEAR_EXACT":
            y = ((x - c) / w + 0.5) * 255.0
        elif self.function == "SIGMOID":
            y = 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
        else:
            y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0 if w > 1 else \
                np.where(x > c - 0.5, 255.0, 0.0)
        return np.clip(y, 0.0, 255.0)


def parse_viewport(text: str) -> tuple[int, int]:
    """The `viewport` parameter: `width,height` (source region parameters, which PS3.18
    allows after them, are not supported)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise InvalidRenderParameter(f"viewport={text!r}: expected width,height")
    try:
        width, height = int(parts[0]), int(parts[1])
    except ValueError:
        raise InvalidRenderParameter(f"viewport={text!r}: width and height must be "
                                     "integers") from None
    if not (1 <= width <= MAX_VIEWPORT and 1 <= height <= MAX_VIEWPORT):
        raise InvalidRenderParameter(f"viewport={text!r}: width and height must be "
                                     f"between 1 and {MAX_VIEWPORT}")
    return width, height


def parse_quality(text: str) -> int:
    try:
        quality = int(text)
    except ValueError:
        quality = 0
    if not 1 <= quality <= 100:
        raise InvalidRenderParameter(f"quality={text!r}: expected an integer 1 to 100")
    return quality


def to_8bit(arr: np.ndarray, ds: Dataset, window: Window | None = None) -> np.ndarray:
    """A decoded frame (rows x columns [x 3]) as 8-bit grayscale or RGB, ready to encode.
    `ds` is the instance's header (the attributes of the LUTs and windows)."""
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:  # colour: RGB after decoding
        if arr.dtype == np.uint8:
            return arr
        bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
        top = float(2 ** (bits if photometric != "PALETTE COLOR" else 16) - 1)
        return np.clip(arr.astype(np.float64) * (255.0 / top), 0, 255).astype(np.uint8)
    values = apply_modality_lut(arr, ds)
    chosen = window or Window.of(ds)
    if chosen is not None:
        out = chosen.apply(values)
    else:
        if "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds, index=0)
        lo, hi = float(np.min(values)), float(np.max(values))
        out = (values.astype(np.float64) - lo) * (255.0 / (hi - lo)) if hi > lo else \
            np.zeros(values.shape)
    if photometric == "MONOCHROME1":
        out = 255.0 - out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render(arr: np.ndarray, ds: Dataset, *, media_type: str = JPEG,
           window: Window | None = None, viewport: tuple[int, int] | None = None,
           quality: int = 90) -> bytes:
    """A decoded frame rendered as a JPEG or PNG."""
    image = Image.fromarray(to_8bit(arr, ds, window))
    if viewport is not None:
        scale = min(viewport[0] / image.width, viewport[1] / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if media_type == PNG:
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
