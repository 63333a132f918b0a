"""The Modality Worklist (PS3.4 K): which keys a modality may match on and get back, how an
identifier becomes matchers, and how a worklist item becomes the C-FIND response, free of
SQL and of the network.

Matching reuses `vna.dicom.matching` (the Q/R's parser): single values, `*`/`?` wildcards
(matched literally otherwise: `%`, `_`, quotes never reach SQL as syntax), DA/TM ranges,
UID lists, and person names case-insensitively like the Q/R. Keys of the Scheduled
Procedure Step are matched inside `ScheduledProcedureStepSequence` (PS3.4 C.2.2.2.6: one
item). A date range and a time range are each matched on their own, not as one combined
date-time range (PS3.4 C.2.2.2.5 allows that as an option; wlmscpfs does the same).

Only SCHEDULED steps are answered unless ScheduledProcedureStepStatus is sent with a value;
the archive's order states are given as the SPS status terms of PS3.3 C.4.10
(`SPS_STATUS`), as dcm4chee-arc gives them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from vna.dicom.attributes import IndexedAttribute, Level, from_index_value
from vna.dicom.matching import InvalidQuery, Matcher, Range, Single, Universal, parse_matcher
from vna.orders import OrderStatus

# An order's state as the Scheduled Procedure Step Status a modality reads.
SPS_STATUS: dict[OrderStatus, str] = {
    OrderStatus.SCHEDULED: "SCHEDULED",
    OrderStatus.IN_PROGRESS: "STARTED",
    OrderStatus.COMPLETED: "COMPLETED",
    OrderStatus.DISCONTINUED: "DISCONTINUED",
    OrderStatus.CANCELLED: "CANCELED",  # PS3.3's spelling
}

SPS_SEQUENCE = "ScheduledProcedureStepSequence"
_IGNORED = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel"})


def _k(keyword: str, vr: str, column: str) -> IndexedAttribute:
    # The level is the Q/R's notion and means nothing here; the parser reads keyword and VR.
    return IndexedAttribute(keyword, vr, Level.STUDY, column)


# Keys of the worklist item itself (PS3.4 Table K.6-1): keyword -> entry field / column.
ITEM_KEYS: dict[str, IndexedAttribute] = {a.keyword: a for a in (
    _k("PatientName", "PN", "patient_name"),
    _k("PatientID", "LO", "patient_id"),
    _k("IssuerOfPatientID", "LO", "issuer_of_patient_id"),
    _k("PatientBirthDate", "DA", "patient_birth_date"),
    _k("PatientSex", "CS", "patient_sex"),
    _k("AccessionNumber", "SH", "accession_number"),
    _k("ReferringPhysicianName", "PN", "referring_physician_name"),
    _k("RequestedProcedureID", "SH", "requested_procedure_id"),
    _k("RequestedProcedureDescription", "LO", "requested_procedure_description"),
    _k("StudyInstanceUID", "UI", "study_instance_uid"),
    _k("RequestingPhysician", "PN", "requesting_physician_name"),
    _k("RequestedProcedurePriority", "SH", "priority"),
    _k("PlacerOrderNumberImagingServiceRequest", "LO", "placer_order_number"),
    _k("FillerOrderNumberImagingServiceRequest", "LO", "filler_order_number"),
)}

# Keys of its Scheduled Procedure Step (inside ScheduledProcedureStepSequence).
SPS_KEYS: dict[str, IndexedAttribute] = {a.keyword: a for a in (
    _k("ScheduledStationAETitle", "AE", "scheduled_station_aet"),
    _k("ScheduledStationName", "SH", "scheduled_station_name"),
    _k("ScheduledProcedureStepStartDate", "DA", "scheduled_date"),
    _k("ScheduledProcedureStepStartTime", "TM", "scheduled_time"),
    _k("Modality", "CS", "modality"),
    _k("ScheduledPerformingPhysicianName", "PN", "scheduled_performing_physician_name"),
    _k("ScheduledProcedureStepID", "SH", "scheduled_procedure_step_id"),
    _k("ScheduledProcedureStepDescription", "LO", "scheduled_procedure_step_description"),
    _k("ScheduledProcedureStepStatus", "CS", "status"),
)}

# What a zero-length ScheduledProcedureStepSequence in a request returns (universal
# sequence matching, PS3.4 C.2.2.2.6): every SPS attribute the archive keeps.
ALL_SPS_KEYS = tuple(SPS_KEYS)


START_DATE, START_TIME = "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"
START_DATE_TIME = "ScheduledProcedureStepStartDateTime"  # the combined range, a pseudo-key
_DAY_START, _DAY_END = "000000.000000", "235959.999999"


@dataclass(frozen=True)
class DateTimeRange:
    """A combined date-time range: (date, normalised time) bounds, inclusive; None: open."""

    low: tuple[str, str] | None
    high: tuple[str, str] | None


class IdentifierMismatch(InvalidQuery):
    """An identifier the Modality Worklist model cannot take (C-FIND 0xA900)."""


@dataclass(frozen=True)
class WorklistEntry:
    """One worklist item as the index holds it (an order with its patient)."""

    id: int
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    accession_number: str
    requested_procedure_id: str
    requested_procedure_description: str | None
    study_instance_uid: str
    scheduled_procedure_step_id: str
    scheduled_procedure_step_description: str | None
    scheduled_station_aet: str | None
    scheduled_station_name: str | None
    modality: str
    scheduled_date: str
    scheduled_time: str
    scheduled_at: datetime
    scheduled_performing_physician_name: str | None
    referring_physician_name: str | None
    requesting_physician_name: str | None
    department: str | None
    priority: str | None
    placer_order_number: str | None
    filler_order_number: str | None
    status: str
    referral_at: datetime | None
    placed_at: datetime | None
    source: str
    created_at: datetime
    updated_at: datetime

    def value(self, attr: IndexedAttribute) -> Any:
        """The DICOM value of a return key (TM at its stated precision, status as SPS)."""
        raw = getattr(self, attr.column)
        if raw in (None, ""):
            return None
        if attr.column == "status":
            return SPS_STATUS.get(OrderStatus(raw), raw)
        return from_index_value(attr, raw)


@dataclass
class WorklistQuery:
    """What to match (keyword -> matcher, item and SPS keys alike), which order states, and
    which keys to return (with their VRs, so that keys the archive does not keep are
    returned empty as asked). `departments`, when not empty, limits the items to those of
    these departments (a department-limited token)."""

    matchers: dict[str, Matcher | DateTimeRange] = field(default_factory=dict)
    statuses: frozenset[OrderStatus] | None = frozenset({OrderStatus.SCHEDULED})
    item_keys: list[tuple[str, str]] = field(default_factory=list)
    sps_keys: list[tuple[str, str]] | None = None  # None: the sequence was not asked for
    departments: frozenset[str] = frozenset()
    _ranges: set[str] = field(default_factory=set, repr=False)  # DA/TM keys sent as A-B

    @classmethod
    def from_identifier(cls, ident: Dataset) -> WorklistQuery:
        """A C-FIND identifier of the Modality Worklist model; raises `InvalidQuery` (a
        value that cannot be matched) or `IdentifierMismatch`."""
        q = cls()
        for elem in ident:
            kw = elem.keyword
            if not kw or elem.tag.group in (0x0000, 0x0002) or kw in _IGNORED:
                continue
            if kw == SPS_SEQUENCE:
                q._sps(elem.value)
                continue
            if kw in SPS_KEYS:
                raise IdentifierMismatch(f"{kw} belongs in {SPS_SEQUENCE}")
            q.item_keys.append((kw, elem.VR))
            attr = ITEM_KEYS.get(kw)
            if attr is not None and elem.VR != "SQ":
                q._match(attr, elem.value)
        q._combine_date_time()
        return q

    def _combine_date_time(self) -> None:
        date, time = self.matchers.get(START_DATE), self.matchers.get(START_TIME)
        if not (isinstance(date, Range) and isinstance(time, Range)
                and {START_DATE, START_TIME} <= self._ranges):
            return  # a single time (`07`: the hour) is a range too, but not a range key
        del self.matchers[START_DATE], self.matchers[START_TIME]
        self.matchers[START_DATE_TIME] = DateTimeRange(
            (date.low, time.low or _DAY_START) if date.low else None,
            (date.high, time.high or _DAY_END) if date.high else None)

    def _sps(self, items: Any) -> None:
        if len(items) > 1:
            raise IdentifierMismatch(f"{SPS_SEQUENCE} has more than one item")
        self.sps_keys = []
        if not items or not len(items[0]):
            self.sps_keys = [(kw, "") for kw in ALL_SPS_KEYS]
            return
        for elem in items[0]:
            kw = elem.keyword
            if not kw or kw in _IGNORED:
                continue
            self.sps_keys.append((kw, elem.VR))
            attr = SPS_KEYS.get(kw)
            if attr is not None and elem.VR != "SQ":
                self._match(attr, elem.value)

    def _match(self, attr: IndexedAttribute, raw: Any) -> None:
        if attr.column == "status":
            self.statuses = _statuses(raw)
            return
        m = parse_matcher(attr, raw)
        if not isinstance(m, Universal):
            self.matchers[attr.keyword] = m
            if attr.vr in ("DA", "TM") and "-" in str(raw):
                self._ranges.add(attr.keyword)

    @classmethod
    def for_listing(cls, *, modality: str | None = None, station_aet: str | None = None,
                    date_from: str | None = None, date_to: str | None = None,
                    patient_id: str | None = None, issuer: str | None = None,
                    accession_number: str | None = None,
                    statuses: Iterable[OrderStatus] = (),
                    departments: frozenset[str] = frozenset()) -> WorklistQuery:
        """The REST list's filters (`GET /api/v1/worklist`) as the same matchers: exact
        values, never patterns; dates `YYYYMMDD`; no status means every status."""
        q = cls(statuses=frozenset(statuses) or None, departments=departments)
        for keyword, value in (("Modality", modality), ("ScheduledStationAETitle", station_aet),
                               ("PatientID", patient_id), ("IssuerOfPatientID", issuer),
                               ("AccessionNumber", accession_number)):
            if value is not None:
                q.matchers[keyword] = Single(value)
        if date_from or date_to:
            q.matchers["ScheduledProcedureStepStartDate"] = Range(date_from, date_to)
        return q

    def response(self, entry: WorklistEntry) -> Dataset:
        """The C-FIND pending response for `entry`: the keys asked for, no others, in the
        structure asked (unknown keys empty, values of universal keys filled in)."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        _fill(ds, self.item_keys, ITEM_KEYS, entry)
        if self.sps_keys is not None:
            item = Dataset()
            _fill(item, self.sps_keys, SPS_KEYS, entry)
            setattr(ds, SPS_SEQUENCE, [item])
        return ds


def _fill(ds: Dataset, keys: list[tuple[str, str]], known: dict[str, IndexedAttribute],
          entry: WorklistEntry) -> None:
    for kw, sent_vr in keys:
        tag, vr = _tag(kw, sent_vr)
        attr = known.get(kw)
        if vr == "SQ":  # a sequence the archive does not keep: empty, as asked
            ds[tag] = DataElement(tag, vr, [])
            continue
        value = entry.value(attr) if attr is not None else None
        # the values are the index's, checked when they were placed: not validated again
        ds[tag] = DataElement(tag, vr, value if value is not None or vr in _NUMERIC else "",
                              validation_mode=config.IGNORE)


@cache
def _tag(keyword: str, vr: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword  # keys come from the identifier or the tables above
    return tag, vr or dictionary_VR(tag)


_NUMERIC = frozenset({"US", "UL", "SS", "SL", "FL", "FD"})


def _statuses(raw: Any) -> frozenset[OrderStatus] | None:
    """The order states a ScheduledProcedureStepStatus key selects: none sent (empty)
    keeps the default, SCHEDULED only; a value or a list of values is matched against the
    SPS status terms (wildcards allowed), so `*` selects every state."""
    values = [str(v).strip() for v in raw] if isinstance(raw, list | tuple | MultiValue) \
        else [v.strip() for v in str(raw or "").split("\\")]
    values = [v for v in values if v]
    if not values:
        return frozenset({OrderStatus.SCHEDULED})
    patterns = [re.compile(".*".join(".".join(re.escape(p) for p in part.split("?"))
                                     for part in v.upper().split("*")) + r"\Z")
                for v in values]
    return frozenset(status for status, term in SPS_STATUS.items()
                     if any(p.match(term) for p in patterns))
