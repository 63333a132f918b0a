"""The DICOM JSON model (PS3.18 Annex F) for what the index answers: keyword -> value.

QIDO-RS answers come from the index, not from files, so they are built here directly from
the values `storage.index.query.find` returns: 8-hex tags in ascending order, the VR from
the data dictionary, PN as `{"Alphabetic": ...}`, IS/DS/US as JSON numbers, an empty value
as an attribute without `Value`. (A whole header, as /metadata answers it, is pydicom's
`to_json_dict`: `vna.dicom.metadata`.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.multival import MultiValue

_NUMBERS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"})


@cache
def tag_and_vr(keyword: str) -> tuple[str, str]:
    """The 8-hex tag and the dictionary VR of a keyword (KeyError if it has none)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    vr = dictionary_VR(tag)
    return f"{tag:08X}", vr.split(" or ")[0]


def _number(vr: str, value: Any) -> int | float | None:
    text = str(value).strip()
    if not text:
        return None
    if vr in ("IS", "US", "UL", "SS", "SL", "UV", "SV"):
        return int(float(text))
    number = float(text)
    return int(number) if vr == "DS" and number.is_integer() and "." not in text else number


def element(vr: str, value: Any) -> dict[str, Any]:
    """One attribute's JSON object: `{"vr": ..., "Value": [...]}`, no Value when empty."""
    values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    out: list[Any] = []
    for v in values:
        if v is None or v == "":
            continue
        if vr == "PN":
            out.append({"Alphabetic": str(v)})
        elif vr in _NUMBERS:
            number = _number(vr, v)
            if number is not None:
                out.append(number)
        else:
            out.append(str(v))
    return {"vr": vr, "Value": out} if out else {"vr": vr}


def dataset_json(values: Mapping[str, Any], *,
                 extra: Iterable[tuple[str, dict[str, Any]]] = ()) -> dict[str, Any]:
    """A dataset in the DICOM JSON model from keyword -> value, plus `extra` attributes
    already in the model (8-hex tag -> JSON object); keys in ascending tag order."""
    out: dict[str, dict[str, Any]] = dict(extra)
    for keyword, value in values.items():
        try:
            tag, vr = tag_and_vr(keyword)
        except KeyError:
            continue
        out[tag] = element(vr, value)
    return {tag: out[tag] for tag in sorted(out)}
