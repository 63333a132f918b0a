"""The DICOM JSON model of an instance's header (PS3.18 F.2), as DICOMweb /metadata
answers it: every attribute but bulk data, which is named by a placeholder instead of
inlined, and WADO-RS's answer built from the stored headers.

A binary value over `BULK_THRESHOLD` bytes (and the top-level Pixel Data, always) is a
`BulkDataURI` placeholder `bulkdata:<path>`, which /metadata turns into an absolute URL
under the instance (`.../instances/{uid}/bulkdata/<path>`) by a string substitution on the
stored JSON text, so that a series' metadata is spliced together without decoding it. The
path of a top-level attribute is its 8-hex tag (`bulkdata:7FE00010`); one inside a
sequence item adds the sequence's tag and the item's number (1-based) in front of it, for
every level: `bulkdata:54000100/1/54001010` is Waveform Data in the first item of the
Waveform Sequence. (Headers derived before sequences had paths named a nested value by
its tag alone; those placeholders resolve as top-level tags.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from vna.dicom.part10 import PIXEL_TAGS

BULK_THRESHOLD = 1024  # bytes: larger binary values are bulk data, not metadata
PLACEHOLDER = "bulkdata:"


def header_json(path: Path) -> dict[str, Any]:
    """The header of the Part 10 file at `path` in the DICOM JSON model, with
    placeholders for bulk data. The pixel data is not read: its element is named, not
    decoded (`{"vr": "OW", "BulkDataURI": "bulkdata:7FE00010"}`)."""
    pixels: list[tuple[int, str | None, int]] = []

    def at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
        if int(tag) in PIXEL_TAGS:
            pixels.append((int(tag), vr, length))
            return True
        return False

    with open(path, "rb") as f:
        ds = read_partial(f, stop_when=at_pixel_data, force=True)
    out = dataset_json(ds)
    if pixels:
        tag, vr, length = pixels[0]
        element: dict[str, Any] = {"vr": vr or _pixel_vr(ds, tag, length)}
        if length:
            element["BulkDataURI"] = f"{PLACEHOLDER}{tag:08X}"
        out[f"{tag:08X}"] = element
    return out


def _pixel_vr(ds: Dataset, tag: int, length: int) -> str:
    """The VR of pixel data read in Implicit VR (PS3.5 A.1 c, 8.2)."""
    if tag == 0x7FE00008:
        return "OF"
    if tag == 0x7FE00009:
        return "OD"
    if length == 0xFFFFFFFF:
        return "OB"
    try:
        return "OW" if int(ds.get("BitsAllocated") or 8) > 8 else "OB"
    except (TypeError, ValueError):
        return "OW"


def dataset_json(ds: Dataset, prefix: str = "") -> dict[str, Any]:
    """pydicom's `Dataset.to_json_dict`, with each bulk data placeholder carrying the
    path of its element (`prefix` is that of the item `ds` is)."""
    def bulk(elem: DataElement) -> str:
        return f"{PLACEHOLDER}{prefix}{elem.tag:08X}"

    out: dict[str, Any] = {}
    for key in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements
        elem = ds[key]
        tag = f"{key:08X}"
        if elem.VR == "SQ":
            out[tag] = {"vr": "SQ", "Value": [dataset_json(item, f"{prefix}{tag}/{n}/")
                                              for n, item in enumerate(elem.value, 1)]}
        else:
            out[tag] = elem.to_json_dict(bulk_data_element_handler=bulk,
                                         bulk_data_threshold=BULK_THRESHOLD)
    return out


# -- bulk data paths ------------------------------------------------------------------------

@dataclass(frozen=True)
class BulkDataPath:
    """Where a bulk data value is: the (sequence tag, item number) steps down to the item
    that holds it, then its tag."""

    items: tuple[tuple[int, int], ...]
    tag: int

    @property
    def top_level(self) -> bool:
        return not self.items

    @classmethod
    def parse(cls, text: str) -> BulkDataPath:
        """`7FE00010` or `54000100/1/54001010`; ValueError if it is neither."""
        parts = text.strip("/").split("/")
        if len(parts) % 2 != 1:
            raise ValueError(f"{text!r} is not a bulk data path")
        steps = []
        for i in range(0, len(parts) - 1, 2):
            steps.append((_tag(parts[i]), _item(parts[i + 1])))
        return cls(tuple(steps), _tag(parts[-1]))

    def __str__(self) -> str:
        return "/".join([f"{t:08X}/{n}" for t, n in self.items] + [f"{self.tag:08X}"])

    def element(self, ds: Dataset) -> DataElement:
        """The element this path names in `ds`; KeyError if there is none."""
        for seq, number in self.items:
            elem = ds[seq]
            if elem.VR != "SQ" or not 1 <= number <= len(elem.value):
                raise KeyError(str(self))
            ds = elem.value[number - 1]
        return ds[self.tag]


def _tag(text: str) -> int:
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        raise ValueError(f"{text!r} is not an 8-hex tag")
    return int(text, 16)


def _item(text: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]{0,8}", text):
        raise ValueError(f"{text!r} is not an item number")
    return int(text)


# -- the /metadata answer ---------------------------------------------------------------------

_BULKDATA_URI = re.compile(r'"BulkDataURI"\s*:\s*"' + re.escape(PLACEHOLDER))


def with_bulkdata_urls(header: str, instance_url: str) -> str:
    """A stored header's JSON text with its placeholders turned into URLs under
    `instance_url` (a string substitution: the header is not decoded)."""
    if PLACEHOLDER not in header:
        return header
    replacement = '"BulkDataURI":"' + json.dumps(instance_url + "/bulkdata/")[1:-1]
    return _BULKDATA_URI.sub(lambda _m: replacement, header)


def metadata_array(headers: Iterable[str]) -> bytes:
    """A JSON array of instance headers already in JSON text."""
    return ("[" + ",".join(headers) + "]").encode()


def header_text(header: dict[str, Any]) -> str:
    """A header as JSON text, as the index stores it (SQLAlchemy's JSON type)."""
    return json.dumps(header)
