"""DICOM attribute mapping: which attributes the index keeps, at which level, in which column.

One table (`ATTRIBUTES`) drives both directions: extracting index rows from a received
dataset, and translating a C-FIND identifier into column predicates and return values.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.datadict import keyword_dict
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from vna.dicom.part10 import ElementReader


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return _DEPTH[self]


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


@dataclass(frozen=True)
class IndexedAttribute:
    """An attribute kept in the index: DICOM keyword, VR, level, column name."""

    keyword: str
    vr: str
    level: Level
    column: str
    unique_key: bool = False

    @property
    def case_insensitive(self) -> bool:
        # PS3.4 C.2.2.2.1: PN matching may be case-insensitive; we do so, as most archives.
        return self.vr == "PN"


def _a(keyword: str, vr: str, level: Level, column: str, unique: bool = False) -> IndexedAttribute:
    return IndexedAttribute(keyword, vr, level, column, unique)


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

ATTRIBUTES: tuple[IndexedAttribute, ...] = (
    _a("PatientID", "LO", P, "patient_id", unique=True),
    _a("IssuerOfPatientID", "LO", P, "issuer_of_patient_id"),
    _a("PatientName", "PN", P, "patient_name"),
    _a("PatientBirthDate", "DA", P, "patient_birth_date"),
    _a("PatientSex", "CS", P, "patient_sex"),
    _a("StudyInstanceUID", "UI", ST, "study_instance_uid", unique=True),
    _a("StudyDate", "DA", ST, "study_date"),
    _a("StudyTime", "TM", ST, "study_time"),
    _a("AccessionNumber", "SH", ST, "accession_number"),
    _a("StudyID", "SH", ST, "study_id"),
    _a("StudyDescription", "LO", ST, "study_description"),
    _a("ReferringPhysicianName", "PN", ST, "referring_physician_name"),
    _a("InstitutionName", "LO", ST, "institution_name"),
    _a("PatientAge", "AS", ST, "patient_age"),
    _a("SeriesInstanceUID", "UI", SE, "series_instance_uid", unique=True),
    _a("Modality", "CS", SE, "modality"),
    _a("SeriesNumber", "IS", SE, "series_number"),
    _a("SeriesDescription", "LO", SE, "series_description"),
    _a("SeriesDate", "DA", SE, "series_date"),
    _a("SeriesTime", "TM", SE, "series_time"),
    _a("BodyPartExamined", "CS", SE, "body_part_examined"),
    _a("StationName", "SH", SE, "station_name"),
    _a("InstitutionalDepartmentName", "LO", SE, "institutional_department_name"),
    _a("ProtocolName", "LO", SE, "protocol_name"),
    _a("PerformedProcedureStepStartDate", "DA", SE, "performed_procedure_step_start_date"),
    _a("PerformedProcedureStepStartTime", "TM", SE, "performed_procedure_step_start_time"),
    _a("SOPInstanceUID", "UI", IM, "sop_instance_uid", unique=True),
    _a("SOPClassUID", "UI", IM, "sop_class_uid"),
    _a("InstanceNumber", "IS", IM, "instance_number"),
    _a("ContentDate", "DA", IM, "content_date"),
    _a("ContentTime", "TM", IM, "content_time"),
    _a("AcquisitionDate", "DA", IM, "acquisition_date"),
    _a("AcquisitionTime", "TM", IM, "acquisition_time"),
    _a("Rows", "US", IM, "rows"),
    _a("Columns", "US", IM, "columns"),
    _a("NumberOfFrames", "IS", IM, "number_of_frames"),
)

BY_KEYWORD: dict[str, IndexedAttribute] = {a.keyword: a for a in ATTRIBUTES}
UNIQUE_KEY: dict[Level, IndexedAttribute] = {a.level: a for a in ATTRIBUTES if a.unique_key}

def columns_of(level: Level) -> tuple[str, ...]:
    """The index columns an `InstanceHeader` fills at `level` (PN also upper-cased)."""
    out: list[str] = []
    for a in ATTRIBUTES:
        if a.level is level:
            out += [a.column, a.column + "_upper"] if a.vr == "PN" else [a.column]
    return tuple(out)


# Computed return keys (PS3.4 C.6.1.1 / C.6.2.1), answered from counts, not columns.
COMPUTED_KEYS: dict[str, Level] = {
    "NumberOfPatientRelatedStudies": P,
    "NumberOfPatientRelatedSeries": P,
    "NumberOfPatientRelatedInstances": P,
    "NumberOfStudyRelatedSeries": ST,
    "NumberOfStudyRelatedInstances": ST,
    "ModalitiesInStudy": ST,
    "SOPClassesInStudy": ST,
    "NumberOfSeriesRelatedInstances": SE,
}

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    """A UID per PS3.5 9.1: digits and dots, at most 64 characters."""
    return 0 < len(value) <= 64 and bool(_UID_RE.match(value))


def normalize_time(value: str) -> str | None:
    """TM to `HHMMSS.ffffff` (missing parts zero) so ranges compare as strings."""
    v = value.strip().replace(":", "")
    if not v:
        return None
    main, _, frac = v.partition(".")
    if not main.isdigit() or len(main) % 2 or len(main) > 6 or (frac and not frac.isdigit()):
        return None
    return main.ljust(6, "0") + "." + frac[:6].ljust(6, "0")


def normalize_date(value: str) -> str | None:
    v = value.strip().replace(".", "").replace("-", "")
    return v if len(v) == 8 and v.isdigit() else None


def to_index_value(attr: IndexedAttribute, raw: Any) -> Any:
    """A dataset element value as the index stores it."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, MultiValue):
        if attr.vr in ("US", "IS", "DA", "TM"):
            raw = raw[0] if len(raw) else None
            if raw is None:
                return None
        else:
            raw = "\\".join(str(v) for v in raw)
    if attr.vr == "US":
        try:
            return int(raw)
        except (TypeError, ValueError):  # e.g. sent with another VR: indexed without it
            return None
    if attr.vr == "IS":
        try:
            return int(raw) if attr.column == "number_of_frames" else str(int(raw))
        except (TypeError, ValueError):
            return None
    text = str(raw).replace("\x00", "").strip()  # NUL: not text, and PostgreSQL refuses it
    if not text:
        return None
    if attr.vr == "DA":
        return normalize_date(text)
    if attr.vr == "TM":
        return normalize_time(text)
    return text


def from_index_value(attr: IndexedAttribute, value: Any) -> Any:
    """An index value as a DICOM element value (TM back to its stored precision)."""
    if value is None:
        return None
    if attr.vr == "TM":
        main, _, frac = str(value).partition(".")
        return main if not frac.strip("0") else f"{main}.{frac.rstrip('0')}"
    return value


@dataclass
class InstanceHeader:
    """What the index needs of one SOP Instance, grouped by level."""

    patient: dict[str, Any] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)

    def for_level(self, level: Level) -> dict[str, Any]:
        return {P: self.patient, ST: self.study, SE: self.series, IM: self.instance}[level]

    @property
    def sop_instance_uid(self) -> str:
        return str(self.instance["sop_instance_uid"])

    @property
    def sop_class_uid(self) -> str:
        return str(self.instance["sop_class_uid"])

    @property
    def study_instance_uid(self) -> str:
        return str(self.study["study_instance_uid"])

    @property
    def series_instance_uid(self) -> str:
        return str(self.series["series_instance_uid"])


class InvalidInstance(ValueError):
    """A dataset the archive refuses (missing or malformed identifying attributes)."""


class UnreadableInstance(InvalidInstance):
    """Bytes that do not parse as a DICOM Part 10 dataset at all."""


_TAGS = tuple((a, Tag(keyword_dict[a.keyword])) for a in ATTRIBUTES)

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_REQUIRED = tuple(BY_KEYWORD[kw] for kw in REQUIRED_UIDS)


_NUMERIC_OR_DATE = ("US", "IS", "DA", "TM")
_NOT_ASCII = object()


def _plain_value(data: bytes, vr: str, little_endian: bool) -> Any:
    """An ASCII text or unsigned short element's value from its raw bytes (`_NOT_ASCII` for
    text that needs its character set decoded).

    pydicom's general conversion costs more than everything else in an ingest; the index
    only needs ASCII text and unsigned shorts, so those are decoded here.
    """
    if vr == "US":
        if len(data) < 2:
            return None
        return struct.unpack("<H" if little_endian else ">H", data[:2])[0]
    if not data.isascii() or b"\x1b" in data:  # ISO 2022 escapes are ASCII bytes too
        return _NOT_ASCII
    text = data.decode("ascii").strip("\x00 ")
    return text.split("\\", 1)[0] if vr in _NUMERIC_OR_DATE else text


def _element_value(ds: Dataset, tag: BaseTag, vr: str) -> Any:
    """An element's value, from its raw bytes when that is safe, else through pydicom."""
    raw = ds.get_item(tag)
    if raw is None:
        return None
    if not isinstance(raw, RawDataElement) or raw.value is None or \
            raw.VR not in (None, vr, "UN"):  # sent with another VR: pydicom's conversion
        return ds[tag].value
    value = _plain_value(raw.value, vr, raw.is_little_endian)
    return ds[tag].value if value is _NOT_ASCII else value


_SPECIFIC_CHARACTER_SET = 0x00080005
HEADER_ELEMENTS = ElementReader([int(t) for _, t in _TAGS] + [_SPECIFIC_CHARACTER_SET])


def header_from_elements(elements: dict[int, tuple[bytes | None, bytes]], *,
                         implicit_vr: bool, little_endian: bool) -> InstanceHeader:
    """`extract_header` for the raw elements `HEADER_ELEMENTS` read; text that is not
    ASCII is decoded by pydicom with the dataset's Specific Character Set."""
    encodings: list[str] | None = None

    def value(attr: IndexedAttribute, tag: BaseTag) -> Any:
        nonlocal encodings
        found = elements.get(int(tag))
        if found is None:
            return None
        vr, data = found
        if vr in (None, b"UN", attr.vr.encode()):
            plain = _plain_value(data, attr.vr, little_endian)
            if plain is not _NOT_ASCII:
                return plain
        if encodings is None:
            charset = elements.get(_SPECIFIC_CHARACTER_SET)
            names = charset[1].decode("ascii", "replace").strip("\x00 ").split("\\") \
                if charset else None
            try:
                encodings = convert_encodings([n.strip() for n in names] if names else None)
            except Exception as exc:  # e.g. a NUL inside a character set's name
                raise UnreadableInstance("SpecificCharacterSet cannot be read "
                                         f"({exc.__class__.__name__})") from None
        raw = RawDataElement(tag, (vr or attr.vr.encode()).decode(), len(data), data, 0,
                             implicit_vr, little_endian)
        try:
            return convert_raw_data_element(raw, encoding=encodings).value
        except Exception as exc:  # e.g. a US value of odd length: pydicom refuses it
            raise UnreadableInstance(f"{attr.keyword} cannot be read "
                                     f"({exc.__class__.__name__})") from None

    return _header(value)


def extract_header(ds: Dataset) -> InstanceHeader:
    """Map a dataset to index rows; refuse it if its identifying UIDs are missing or invalid."""
    return _header(lambda attr, tag: _element_value(ds, tag, attr.vr))


def _header(element_value: Callable[[IndexedAttribute, BaseTag], Any]) -> InstanceHeader:
    header = InstanceHeader()
    levels = {P: header.patient, ST: header.study, SE: header.series, IM: header.instance}
    for attr, tag in _TAGS:
        value = to_index_value(attr, element_value(attr, tag))
        row = levels[attr.level]
        row[attr.column] = value
        if attr.vr == "PN":
            row[attr.column + "_upper"] = value.upper() if value else None
    for attr in _REQUIRED:  # all indexed: checked as extracted, not read again
        uid = levels[attr.level][attr.column]
        if not uid:
            raise InvalidInstance(f"{attr.keyword} is missing")
        if not is_valid_uid(uid):
            raise InvalidInstance(f"{attr.keyword} is not a valid UID")
    header.patient["patient_id"] = header.patient["patient_id"] or ""
    header.patient["issuer_of_patient_id"] = header.patient["issuer_of_patient_id"] or ""
    return header
