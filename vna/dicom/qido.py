"""QIDO-RS query parameters (PS3.18 8.3.4, 10.6) reduced to a C-FIND identifier.

A QIDO request is a C-FIND in URL form: the resource path gives the level and the UIDs
above it, the query parameters give matching keys (by keyword or 8-hex tag), the extra
return keys (`includefield`), fuzzy person-name matching and paging. This module turns
them into the `(keyword, value)` items `storage.index.query.FindQuery.from_identifier`
takes (the one place queries become SQL) and the return keys of the answer. Nothing here
knows HTTP beyond a list of (name, value) pairs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_has_tag, keyword_for_tag, tag_for_keyword

from vna.dicom.attributes import BY_KEYWORD, COMPUTED_KEYS, Level

# Never an unbounded scan: a request without `limit`, or with a larger one, gets at most
# this many matches (and a Warning header saying there are more).
MAX_LIMIT = 1000

# What each level answers without `includefield` (PS3.18 Tables 10.6.3-3 to -5, the ones
# the index holds, plus what OHIF's study list shows: StudyDescription).
DEFAULT_RETURN_KEYS: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
        "ReferringPhysicianName", "PatientName", "PatientID", "IssuerOfPatientID",
        "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    Level.SERIES: (
        "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "SeriesDate",
        "SeriesTime", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "BodyPartExamined", "NumberOfSeriesRelatedInstances"),
    Level.IMAGE: (
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
        "NumberOfFrames"),
}
# Every attribute the index can answer at each level ("includefield=all").
ALL_RETURN_KEYS: dict[Level, tuple[str, ...]] = {
    level: tuple(a.keyword for a in BY_KEYWORD.values() if a.level is level)
    + tuple(k for k, lv in COMPUTED_KEYS.items() if lv is level)
    for level in Level
}
CONTROL_PARAMETERS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


class InvalidQidoQuery(ValueError):
    """A query parameter vna cannot answer (HTTP 400)."""


@dataclass
class QidoQuery:
    """A QIDO-RS request: the C-FIND identifier items, the answer's return keys, paging."""

    level: Level
    items: list[tuple[str, object]] = field(default_factory=list)
    return_keys: list[str] = field(default_factory=list)
    limit: int = MAX_LIMIT
    offset: int = 0
    fuzzy: bool = False


def keyword_of(name: str) -> str:
    """A parameter name (keyword, or 8-hex tag) as a keyword; InvalidQidoQuery otherwise."""
    if _TAG.match(name):
        tag = int(name, 16)
        keyword = keyword_for_tag(tag) if dictionary_has_tag(tag) else ""
        if not keyword:
            raise InvalidQidoQuery(f"{name} is not an attribute vna knows")
        return keyword
    if tag_for_keyword(name) is None:
        raise InvalidQidoQuery(f"{name!r} is neither a DICOM keyword nor an 8-hex tag")
    return name


MAX_INT64 = 2**63 - 1


def _non_negative(name: str, text: str) -> int:
    if not text.isdigit() or int(text) > MAX_INT64:  # a row count the database can take
        raise InvalidQidoQuery(f"{name} must be a non-negative integer up to {MAX_INT64}, "
                               f"not {text[:40]!r}")
    return int(text)


def _level_of(keyword: str) -> Level | None:
    attr = BY_KEYWORD.get(keyword)
    if attr is not None:
        return attr.level
    return COMPUTED_KEYS.get(keyword)


def parse(level: Level, params: Iterable[tuple[str, str]], *,
          scope: Iterable[tuple[str, str]] = ()) -> QidoQuery:
    """The query of a QIDO request at `level` whose path fixed the UIDs in `scope`
    (e.g. StudyInstanceUID for /studies/{study}/series) and whose query string is
    `params`. Matching keys must be attributes the index holds; return keys may be any
    attribute (those the index does not hold are answered empty)."""
    q = QidoQuery(level)
    matching: dict[str, str] = {}
    include: list[str] = []
    for name, value in params:
        if name == "limit":
            q.limit = min(_non_negative(name, value), MAX_LIMIT) or MAX_LIMIT
        elif name == "offset":
            q.offset = _non_negative(name, value)
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise InvalidQidoQuery("fuzzymatching must be true or false")
            q.fuzzy = value == "true"
        elif name == "includefield":
            include += [v.strip() for v in value.split(",") if v.strip()]
        elif name.startswith("_"):  # cache busters and the like: not part of the query
            continue
        else:
            keyword = keyword_of(name)
            lv = _level_of(keyword)
            if lv is None:
                if value.strip() not in ("", "*"):
                    raise InvalidQidoQuery(f"matching on {keyword} is not supported; "
                                           "it can be asked for with includefield")
                include.append(keyword)
                continue
            if lv.depth > level.depth and keyword not in ("ModalitiesInStudy",):
                raise InvalidQidoQuery(f"{keyword} is an attribute of a lower level than "
                                       f"{level.value}")
            if keyword in matching:
                raise InvalidQidoQuery(f"{keyword} is given twice")
            matching[keyword] = value
    for keyword, uid in scope:
        if keyword in matching and matching[keyword] not in ("", uid):
            raise InvalidQidoQuery(f"{keyword} in the query differs from the path's")
        matching[keyword] = uid
    keys: list[str] = list(DEFAULT_RETURN_KEYS.get(level, ()))
    for upper in Level:  # the unique keys of the levels above are always answered
        if 1 <= upper.depth < level.depth:
            keys.append({Level.STUDY: "StudyInstanceUID",
                         Level.SERIES: "SeriesInstanceUID"}[upper])
    for name in include:
        if name == "all":
            for lv in Level:
                if lv.depth <= level.depth:
                    keys += ALL_RETURN_KEYS[lv]
        else:
            keys.append(keyword_of(name))
    for keyword in matching:
        keys.append(keyword)
    q.return_keys = list(dict.fromkeys(keys))
    q.items = [(k, matching.get(k)) for k in q.return_keys]
    return q
