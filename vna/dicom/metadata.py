"""The DICOM JSON model of an instance's header (PS3.18 F.2), as DICOMweb /metadata
answers it: every attribute but bulk data, which is named by tag instead of inlined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement

BULK_THRESHOLD = 1024  # bytes: larger binary values are bulk data, not metadata


def header_json(path: Path) -> dict[str, Any]:
    ds = dcmread(path, stop_before_pixels=True, force=True)

    def bulk(elem: DataElement) -> str:
        return f"bulkdata:{elem.tag:08X}"

    return ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD,
                           bulk_data_element_handler=bulk)
